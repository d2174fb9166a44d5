"""Classifying texts of several adapters in one forward pass, with the labels `lorakit predict` prints.

    probs = classify_rows(served, [Text("a gripping film", "sst2"), Text("flat", "imdb")])   # (N, num_labels)

Sentence pairs come as "first<TAB>second", as in `lorakit predict`; each text is truncated to its adapter's
recorded --max-length, as predict does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Text:
    text: str
    adapter: str | None  # None: the base model
    max_length: int


def encode(served, item: Text) -> dict[str, list[int]]:
    """input_ids / attention_mask (/ token_type_ids) of one text or TAB-separated pair, unpadded."""
    parts = item.text.split("\t")
    pair = (parts[1] if len(parts) > 1 else "") if len(served.spec.text_columns) == 2 else None
    return dict(served.tokenizer(parts[0], pair, truncation=True, max_length=item.max_length, padding=False))


@torch.no_grad()
def classify_rows(served, items: list[Text]) -> torch.Tensor:
    """Class probabilities (N, num_labels), softmax of the logits (regression: the score itself, (N, 1))."""
    batch = served.tokenizer.pad([encode(served, item) for item in items], return_tensors="pt")
    batch = {name: tensor.to(served.device) for name, tensor in batch.items()}
    with served.forward_context([item.adapter for item in items]):
        logits = served.model(**batch).logits.float()  # (N, num_labels)
    return logits.cpu() if served.spec.is_regression else torch.softmax(logits, dim=-1).cpu()
