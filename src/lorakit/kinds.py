"""Task kinds: what differs between sequence classification, extractive QA and causal-LM tuning, and the
Evaluator that runs a model over a split.

The training step is the same for every kind (`model(**batch).loss`: transformers heads compute their own loss
from the batch's labels). A kind supplies the rest:

    kind = kind_of(spec)
    model = kind.auto_model.from_pretrained(path, **kind.model_kwargs(spec))     # the right head
    train = kind.train_features(rows, tokenizer, max_length)   # unpadded inputs + labels for the loop
    feats = kind.eval_features(rows, tokenizer, max_length)    # what its evaluate step needs
    metrics = kind.evaluate(evaluator, model, rows, feats)     # {"accuracy": ..., "loss": ...}
    lines = kind.predict(evaluator, model, texts)              # `lorakit predict`, one line per text

Extractive QA (tasks/squad.py, qa_eval.py) and instruction tuning (tasks/instruct.py, lm_eval.py) become one more
TaskKind each in KINDS: their own features (windows with offsets; prompt-masked labels) and evaluate steps
(span post-processing + EM/F1; perplexity); the loop, checkpoints and CLI stay as they are.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers as tf
from datasets import Dataset
from torch import nn

from .tasks import (LABEL, SEQUENCE_CLASSIFICATION, TEXT, TEXT_PAIR, LengthGroupedBatchSampler, PaddingCollator,
                    TaskSpec, compute_metrics, predictions_from_logits, sequence_lengths, tokenize)
from .train_config import autocast, to_device


@dataclass
class Evaluator:
    """Runs a model over tokenized features in batches (longest first, padded per batch) on a device."""

    spec: TaskSpec
    kind: TaskKind
    tokenizer: Any
    collator: PaddingCollator
    batch_size: int
    max_length: int  # tokens per example (predict tokenizes its texts with it)
    device: torch.device
    precision: str  # "fp32" | "bf16"

    @torch.no_grad()
    def outputs(self, model: nn.Module, features: Dataset) -> tuple[np.ndarray, float]:
        """(per-example outputs in dataset order, e.g. logits (N, num_labels); mean loss)."""
        was_training = model.training
        model.eval()
        sampler = LengthGroupedBatchSampler(sequence_lengths(features), self.batch_size, shuffle=False)
        order, outputs, loss_sum = [], [], 0.0
        for indices in sampler:
            batch = to_device(self.collator([features[i] for i in indices]), self.device)
            with autocast(self.device, self.precision):
                out = model(**batch)
            order.extend(indices)
            outputs.append(out.logits.detach().float().cpu().numpy())
            loss_sum += out.loss.float().item() * len(indices)
        model.train(was_training)
        return np.concatenate(outputs)[np.argsort(order)], loss_sum / len(order)

    def __call__(self, model: nn.Module, splits: dict[str, tuple[Dataset, Any]]) -> dict[str, dict[str, float]]:
        """{split: metrics} for {split: (rows, features)}."""
        return {name: self.kind.evaluate(self, model, rows, features) for name, (rows, features) in splits.items()}


@dataclass(frozen=True)
class TaskKind:
    auto_model: type  # transformers Auto class whose from_pretrained builds the model with this kind's head
    model_kwargs: Callable[[TaskSpec], dict[str, Any]]  # from_pretrained arguments for a task, e.g. num_labels
    train_features: Callable[[Dataset, Any, int], Dataset]  # (rows, tokenizer, max_length) -> inputs + labels
    eval_features: Callable[[Dataset, Any, int], Any]  # (rows, tokenizer, max_length) -> what evaluate needs
    evaluate: Callable[[Evaluator, nn.Module, Dataset, Any], dict[str, float]]  # -> metrics incl. main_metric
    predict: Callable[[Evaluator, nn.Module, list[str]], list[str]]  # texts -> one readable line each


def _classification_kwargs(spec: TaskSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels, "problem_type": spec.problem_type}
    if spec.id2label is not None:
        kwargs["id2label"] = spec.id2label
        kwargs["label2id"] = {name: i for i, name in spec.id2label.items()}
    return kwargs


def _evaluate_classification(run: Evaluator, model: nn.Module, rows: Dataset, features: Dataset) -> dict[str, float]:
    logits, loss = run.outputs(model, features)  # (N, num_labels)
    return {**compute_metrics(run.spec, logits, np.asarray(features["labels"])), "loss": loss}


def _predict_classification(run: Evaluator, model: nn.Module, texts: list[str]) -> list[str]:
    """Sentence pairs come as "first<TAB>second". Lines: label<TAB>probability (regression: the score)."""
    spec = run.spec
    columns = {TEXT: [t.split("\t")[0] for t in texts]}
    if len(spec.text_columns) == 2:
        columns[TEXT_PAIR] = [t.split("\t")[1] if "\t" in t else "" for t in texts]
    columns[LABEL] = [0.0 if spec.is_regression else 0] * len(texts)  # placeholder, never scored
    features = tokenize(Dataset.from_dict(columns), run.tokenizer, run.max_length)
    logits, _ = run.outputs(model, features)
    if spec.is_regression:
        return [f"{score:.4f}" for score in predictions_from_logits(spec, logits)]
    probs = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()  # (N, num_labels)
    return [f"{spec.id2label[int(p.argmax())]}\t{p.max():.4f}" for p in probs]


KINDS: dict[str, TaskKind] = {
    SEQUENCE_CLASSIFICATION: TaskKind(
        auto_model=tf.AutoModelForSequenceClassification,
        model_kwargs=_classification_kwargs,
        train_features=tokenize,
        eval_features=tokenize,
        evaluate=_evaluate_classification,
        predict=_predict_classification,
    ),
}


def kind_of(spec: TaskSpec) -> TaskKind:
    if spec.kind not in KINDS:
        raise ValueError(f"task {spec.name} is of kind {spec.kind!r}, which `lorakit train` does not support yet; "
                         f"supported kinds: {', '.join(KINDS)}")
    return KINDS[spec.kind]
