"""Batching: a padding collator and a seeded, length-grouped batch sampler.

    lengths = sequence_lengths(features)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=0)
    loader = DataLoader(features, batch_sampler=sampler, collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)            # a new, reproducible batch order each epoch
        for batch in loader: ...            # dict of tensors, padded to the longest row of the batch

Dynamic padding + grouping by length cut the padded tokens a batch wastes; `pad_to_max_length=True` pads
every batch to max_length instead (the fixed-shape baseline for throughput comparisons), and
`group_by_length=False` gives a plain seeded shuffle.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from lorakit.tasks.base import TaskError

LABEL_PAD_ID = -100  # ignored by transformers' losses; pads token-level labels (QA / causal LM tasks)


class PaddingCollator:
    """Pads a list of tokenized rows into a dict of tensors.

    Padding length: the longest row in the batch (or max_length with pad_to_max_length), rounded up to a
    multiple of pad_to_multiple_of (8 suits tensor cores). input_ids are padded with pad_token_id,
    token_type_ids with pad_token_type_id, attention_mask and any other sequence with 0, sequence labels with
    -100. Scalar labels become a long tensor (classes) or a float32 tensor (regression).
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_token_type_id: int = 0,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        pad_to_max_length: bool = False,
        max_length: int | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_to_max_length and not max_length:
            raise ValueError("pad_to_max_length=True needs max_length")
        if pad_to_multiple_of is not None and pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of!r}")
        self.pad_values = {"input_ids": pad_token_id, "token_type_ids": pad_token_type_id, "labels": LABEL_PAD_ID}
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_to_max_length = pad_to_max_length
        self.max_length = max_length

    @classmethod
    def from_tokenizer(cls, tokenizer, pad_to_multiple_of: int | None = None, pad_to_max_length: bool = False,
                       max_length: int | None = None) -> PaddingCollator:
        if tokenizer.pad_token_id is None:
            raise TaskError(f"tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
                            "(e.g. tokenizer.pad_token = tokenizer.eos_token) before batching")
        return cls(tokenizer.pad_token_id, getattr(tokenizer, "pad_token_type_id", 0), tokenizer.padding_side,
                   pad_to_multiple_of, pad_to_max_length, max_length)

    def target_length(self, longest: int) -> int:
        length = longest
        if self.pad_to_max_length:
            if longest > self.max_length:
                raise ValueError(f"a row has {longest} tokens, more than max_length={self.max_length}")
            length = self.max_length
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        sequence_keys = [k for k, v in features[0].items() if _is_sequence(v)]
        longest = max(len(f[k]) for f in features for k in sequence_keys) if sequence_keys else 0
        length = self.target_length(longest)
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key in sequence_keys:
                batch[key] = self._pad([list(v) for v in values], length, self.pad_values.get(key, 0))
            else:
                array = np.asarray(values)
                batch[key] = torch.as_tensor(array, dtype=torch.float32 if array.dtype.kind == "f" else torch.long)
        return batch

    def _pad(self, rows: list[list[int]], length: int, value: int) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            elif row:
                out[i, length - len(row):] = torch.as_tensor(row, dtype=torch.long)
        return out


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) >= 1


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices; each index exactly once per epoch (minus a dropped last batch).

    shuffle=True, group_by_length=True (training): a seeded permutation is cut into mega-batches of
    batch_size * mega_batch_mult rows; each mega-batch is sorted by length and cut into batches, so rows in a
    batch have similar lengths; the batch order is then shuffled, and the batch holding the longest row goes
    first (an out-of-memory error shows at step 1, not hours in). Same seed and epoch => same batches.
    shuffle=True, group_by_length=False: a plain seeded shuffle cut into batches.
    shuffle=False (evaluation): rows sorted by length, longest first, no randomness; the loop must keep each
    batch's labels with its predictions (metrics do not depend on the order).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, group_by_length: bool = True, mega_batch_mult: int = 50):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.group_by_length = group_by_length
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            batches = [order[i:i + size] for i in range(0, n, size)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            if self.group_by_length:
                mega = size * self.mega_batch_mult
                batches = []
                for start in range(0, n, mega):
                    chunk = order[start:start + mega]
                    chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                    batches.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
            else:
                batches = [order[i:i + size] for i in range(0, n, size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()  # only the final batch can be short: every mega-batch is a multiple of batch_size
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
            if self.group_by_length and batches:
                longest = int(np.argmax([self.lengths[b].max() for b in batches]))
                batches[0], batches[longest] = batches[longest], batches[0]
        return [b.tolist() for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())
