"""Tokenization of normalized rows into model inputs, without padding (the collator pads each batch).

    features = tokenize(data.train, tokenizer, max_length=128)
    # columns: input_ids, attention_mask, (token_type_ids if the tokenizer makes them), labels

Sentence pairs (a `text_pair` column) are encoded as one sequence with the tokenizer's separator, and
truncated "longest first" to max_length, as transformers' GLUE examples do.
"""
from __future__ import annotations

from datasets import Dataset

from lorakit.tasks.base import LABEL, TEXT, TEXT_PAIR, TaskError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(dataset: Dataset, tokenizer, max_length: int, batch_size: int = 1000) -> Dataset:
    """Map normalized rows to input_ids / attention_mask (/ token_type_ids) / labels, truncated to max_length.

    The text columns are removed; `label` becomes `labels` (the name transformers models take).
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise TaskError(f"max_length must be a positive integer, got {max_length!r}")
    missing = [c for c in (TEXT, LABEL) if c not in dataset.column_names]
    if missing:
        raise TaskError(f"dataset lacks column(s) {missing}; its columns are {dataset.column_names}; "
                        "load it with lorakit.tasks.load_splits")
    has_pair = TEXT_PAIR in dataset.column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            batch[TEXT],
            batch[TEXT_PAIR] if has_pair else None,
            truncation=True,
            max_length=max_length,
            padding=False,
        )
        out = {name: encoded[name] for name in MODEL_INPUTS if name in encoded}
        out["labels"] = batch[LABEL]
        return out

    return dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       desc="tokenizing")


def sequence_lengths(dataset: Dataset) -> list[int]:
    """Token count of each tokenized row, for LengthGroupedBatchSampler."""
    return [len(ids) for ids in dataset["input_ids"]]
