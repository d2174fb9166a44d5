"""Counting parameters: total, trainable, and the per-tensor listing the seeds printed.

    report = parameter_report(model)
    print(report)                  # PEFT's line: "trainable params: X || all params: Y || trainable%: Z"
    print(report.table())          # one row per trainable tensor (only_trainable=False: every tensor)
    report.trainable, report.total, report.percent, report.base
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lorakit.quant.linear import QuantLinear


@dataclass(frozen=True)
class ParamRow:
    name: str  # parameter path, e.g. "bert.encoder.layer.0.attention.self.query.lora_A.weight"
    shape: tuple[int, ...]
    count: int
    trainable: bool


@dataclass(frozen=True)
class ParameterReport:
    total: int  # every parameter, counted once even when shared (tied embeddings); quantized weights included
    trainable: int  # those with requires_grad
    rows: tuple[ParamRow, ...]

    @property
    def base(self) -> int:
        """The base model's parameters: the total less the tensors LoRA adds (lora_A, lora_B, lora_embedding_*,
        DoRA's lora_magnitude_vector); the same for every method on one model."""
        return self.total - sum(r.count for r in self.rows if "lora_" in r.name)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def table(self, only_trainable: bool = True) -> str:
        rows = [r for r in self.rows if r.trainable or not only_trainable]
        width = max([len(r.name) for r in rows] + [9])
        lines = [f"{'parameter':<{width}}  {'shape':>14}  {'count':>10}  trainable", "-" * (width + 40)]
        for r in rows:
            shape = "x".join(str(d) for d in r.shape)
            lines.append(f"{r.name:<{width}}  {shape:>14}  {r.count:>10,}  {'yes' if r.trainable else 'no'}")
        return "\n".join(lines)

    def summary(self) -> str:
        return count_line(self.trainable, self.total)

    def __str__(self) -> str:
        """The summary line, as PEFT's print_trainable_parameters prints it."""
        return self.summary()


def count_line(trainable: int, total: int) -> str:
    """PEFT's print_trainable_parameters line."""
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"


def parameter_report(model: nn.Module) -> ParameterReport:
    """Totals and one row per parameter tensor.

    One definition for every method: the total counts each weight of the model once, a quantized (QLoRA) weight
    as the out x in values it encodes (its codes are buffers, not parameters), so LoRA and QLoRA of the same model
    and settings report the same total and trainable %.
    """
    rows = []
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        rows.append(ParamRow(name, tuple(param.shape), param.numel(), param.requires_grad))
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):  # the frozen weight it stores quantized: (out_features, in_features)
            shape = (module.out_features, module.in_features)
            rows.append(ParamRow(f"{name}.weight (quantized)", shape, shape[0] * shape[1], False))
    total = sum(r.count for r in rows)
    trainable = sum(r.count for r in rows if r.trainable)
    return ParameterReport(total, trainable, tuple(rows))
