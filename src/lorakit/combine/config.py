"""CombineConfig: how add_weighted_adapter combines adapters (PEFT's arguments, names and defaults), a frozen
dataclass that checks itself; `lorakit merge`'s combination flags are generated from its fields. No torch here, so
the command line starts fast."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lorakit.errors import UserError
from lorakit.validation import check_fields

# PEFT's combination types. MERGES combine the A and B matrices entry by entry (equal ranks needed); cat and the
# svd types take any ranks (combine_math.py has the equations).
MERGES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = (*MERGES, "cat", *SVD_TYPES)
PRUNING = ("ties", "dare_linear", "dare_ties", "magnitude_prune")  # need density (their _svd variants too)
SIGN_METHODS = ("total", "frequency")


def checked_weights(weights) -> list[float]:
    """The adapters' weights as floats, each a finite number (a NaN or infinite weight makes every tensor of the
    combined adapter NaN). UserError naming the first bad one."""
    numbers = []
    for i, weight in enumerate(weights):
        try:
            number = float(weight)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"weights[{i}] is {weight!r}; each adapter's weight must be a finite number")
        numbers.append(number)
    return numbers


def base_merge(combination_type: str) -> str:
    """The merge of task tensors a type uses: "ties_svd" -> "ties", "svd" -> "linear", "cat" -> "cat"."""
    return "linear" if combination_type == "svd" else combination_type.removesuffix("_svd")


@dataclass(frozen=True)
class CombineConfig:
    """The options of add_weighted_adapter, PEFT's defaults. `flag` in a field's metadata: its command-line name."""

    combination_type: str = field(default="svd", metadata={
        "help": f"how to combine: {', '.join(COMBINATION_TYPES)}", "flag": "--combination", "metavar": "TYPE"})
    density: float | None = field(default=None, metadata={
        "help": "the fraction of entries ties / dare_* / magnitude_prune (and their _svd variants) keep, in (0, 1]",
        "metavar": "D"})
    majority_sign_method: str = field(default="total", metadata={
        "help": "the sign election of ties / dare_ties: total (sign of the sum) or frequency (of the count)",
        "metavar": "|".join(SIGN_METHODS)})
    svd_rank: int | None = field(default=None, metadata={
        "help": "the rank the svd types keep (default: the largest rank of the adapters)", "metavar": "R"})
    svd_clamp: float | None = field(default=None, metadata={
        "help": "svd types: clamp B' and A' at this quantile of their entries (default: no clamp)", "metavar": "Q"})
    svd_full_matrices: bool = field(default=True, metadata={
        "help": "svd types: a reduced SVD instead of the full one (the same result, less memory)"})

    def __post_init__(self):
        check_fields(self, lambda name: name)  # types (a YAML value of another type), finite numbers
        if self.combination_type not in COMBINATION_TYPES:
            raise ValueError(f"combination_type {self.combination_type!r} is not one of {', '.join(COMBINATION_TYPES)}")
        density = self.density
        if base_merge(self.combination_type) in PRUNING and (density is None or not 0 < density <= 1):
            raise ValueError(f"combination_type {self.combination_type!r} needs density in (0, 1] (the fraction of "
                             f"entries kept), got {density!r}")
        if self.majority_sign_method not in SIGN_METHODS:
            raise ValueError(f"majority_sign_method {self.majority_sign_method!r} is not one of "
                             f"{', '.join(SIGN_METHODS)}")
        if self.svd_clamp is not None and not 0 <= self.svd_clamp <= 1:
            raise ValueError(f"svd_clamp is a quantile in [0, 1], got {self.svd_clamp!r}")
        if self.svd_rank is not None and (isinstance(self.svd_rank, bool) or not isinstance(self.svd_rank, int)
                                          or self.svd_rank < 1):
            raise ValueError(f"svd_rank must be a positive integer, got {self.svd_rank!r}")
