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

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers as tf
from datasets import Dataset
from torch import nn

from lorakit.training import distributed
from lorakit.training.fsdp import is_sharded
from lorakit.tasks import (CAUSAL_LM, LABEL, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TEXT, TEXT_PAIR,
                     LengthGroupedBatchSampler, PaddingCollator, TaskSpec, compute_metrics, predictions_from_logits, sequence_lengths, tokenize)
from lorakit.tasks.lm_eval import progress_bar
from lorakit.training.config import autocast, to_device


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
    def run(self, model: nn.Module, features: Dataset, fetch: Callable[[Any, dict], Any],
            collator: PaddingCollator | None = None, batch_size: int | None = None) -> list[tuple[list[int], Any]]:
        """[(row indices of a batch, fetch(model output, batch))] for every batch, longest first; batches of
        `batch_size` rows (default: self.batch_size).

        Data-parallel: each rank runs every world-th batch (the same batches, so the same padding, as one
        process) and the results of all ranks are gathered, so every rank gets the single-process list. FSDP: a
        forward pass is a collective (the blocks' weights are all-gathered), so a rank with a batch fewer runs one
        more forward pass, discarded.
        """
        was_training = model.training
        model.eval()
        collator = collator or self.collator
        sampler = LengthGroupedBatchSampler(sequence_lengths(features), batch_size or self.batch_size, shuffle=False)
        world, rank = distributed.world_size(), distributed.rank()
        batches = sampler.batches()
        mine = list(range(rank, len(batches), world))
        if is_sharded(model) and batches:  # as many forward passes on every rank: -(-n // w) = ceil(n / w)
            mine += [None] * (-(-len(batches) // world) - len(mine))
        done = []  # (batch index, row indices, fetched)
        for k in progress_bar(mine, "evaluate"):  # a bar on a terminal only
            indices = batches[0 if k is None else k]
            batch = to_device(collator([features[i] for i in indices]), self.device)
            with autocast(self.device, self.precision):
                out = model(**batch)
            if k is not None:
                done.append((k, indices, fetch(out, batch)))
        model.train(was_training)
        if world > 1:
            done = sorted((d for part in distributed.all_gather_object(done) for d in part), key=lambda d: d[0])
        return [(indices, fetched) for _, indices, fetched in done]

    @torch.no_grad()
    def outputs(self, model: nn.Module, features: Dataset) -> tuple[np.ndarray, float]:
        """(per-example outputs in dataset order, e.g. logits (N, num_labels); mean loss).

        Data-parallel: sharded over the ranks and gathered (`run`); every rank returns the single-process result.
        """
        done = self.run(model, features, lambda out, batch: (out.logits.detach().float().cpu().numpy(),
                                                             out.loss.float().item() * len(batch["input_ids"])))
        order = [i for indices, _ in done for i in indices]
        loss_sum = 0.0
        for _, (_, loss) in done:  # summed in batch order, as one process does
            loss_sum += loss
        return np.concatenate([logits for _, (logits, _) in done])[np.argsort(order)], loss_sum / len(order)

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
    # (run, model, eval rows) -> sample generations, written as generations_before/after.jsonl (causal LMs)
    generate: Callable[[Evaluator, nn.Module, Dataset], list[dict]] | None = None


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


def _no_kwargs(spec: TaskSpec) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------------------------ extractive QA (SQuAD)

@dataclass
class QAEvalFeatures:
    windows: Dataset  # prepare_eval_features: model inputs + example_id + offset_mapping
    inputs: Dataset  # the model inputs of `windows` only (what gets batched)
    with_positions: Dataset  # prepare_train_features of the same rows: start/end positions, for the eval loss


def _qa_train_features(rows: Dataset, tokenizer, max_length: int) -> Dataset:
    from lorakit.tasks.squad import prepare_train_features
    return prepare_train_features(rows, tokenizer, max_length)


def _qa_eval_features(rows: Dataset, tokenizer, max_length: int) -> QAEvalFeatures:
    from lorakit.tasks.squad import MODEL_INPUTS, prepare_eval_features, prepare_train_features
    windows = prepare_eval_features(rows, tokenizer, max_length)
    inputs = windows.select_columns([c for c in MODEL_INPUTS if c in windows.column_names])
    return QAEvalFeatures(windows, inputs, prepare_train_features(rows, tokenizer, max_length))


def _right_padded(collator: PaddingCollator) -> PaddingCollator:
    collator = copy.copy(collator)
    collator.padding_side = "right"  # row r of a batch holds the feature's L tokens at positions 0..L-1
    return collator


def _qa_logits(run: Evaluator, model: nn.Module, inputs: Dataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits per window, in window order, cut to each window's length (sharded under DDP)."""
    lengths = sequence_lengths(inputs)

    from lorakit.tasks.qa_eval import keep_window_logits, window_logits

    starts: list[np.ndarray] = [np.empty(0)] * len(lengths)
    ends: list[np.ndarray] = [np.empty(0)] * len(lengths)
    for indices, (start_logits, end_logits) in run.run(model, inputs, window_logits, _right_padded(run.collator)):
        keep_window_logits(starts, ends, indices, lengths, start_logits, end_logits)
    return starts, ends


def _evaluate_qa(run: Evaluator, model: nn.Module, rows: Dataset, features: QAEvalFeatures) -> dict[str, float]:
    """Official SQuAD EM / F1 (percent) from the windows' span logits; loss: the span loss of the answer windows."""
    from lorakit.tasks.qa_eval import postprocess_qa_predictions
    from lorakit.tasks.qa_metrics import squad_metrics
    from lorakit.tasks.squad import ANSWERS, ID, is_version_2

    starts, ends = _qa_logits(run, model, features.inputs)
    version_2 = is_version_2(run.spec)
    predictions = postprocess_qa_predictions(rows, features.windows, starts, ends, version_2)
    golds = rows.select_columns([ID, ANSWERS]).to_dict()
    references = {qid: answers["text"] for qid, answers in zip(golds[ID], golds[ANSWERS])}
    metrics = dict(squad_metrics(predictions, references, version_2))
    done = run.run(model, features.with_positions, lambda out, batch: out.loss.float().item() * len(batch["input_ids"]))
    loss_sum = 0.0
    for _, loss in done:
        loss_sum += loss
    return {**{k: float(v) for k, v in metrics.items()}, "loss": loss_sum / len(features.with_positions)}


def _predict_qa(run: Evaluator, model: nn.Module, texts: list[str]) -> list[str]:
    """Lines "question<TAB>context" -> the answer span."""
    from lorakit.tasks.qa_eval import answer_question
    lines = []
    for text in texts:
        question, _, context = text.partition("\t")
        lines.append(answer_question(model, run.tokenizer, question, context, max_length=run.max_length))
    return lines


# ------------------------------------------------------------------------------ instruction tuning (causal LM)

def _lm_features(rows: Dataset, tokenizer, max_length: int) -> Dataset:
    from lorakit.tasks.instruct import tokenize_instruct
    return tokenize_instruct(rows, tokenizer, max_length)


def _evaluate_causal(run: Evaluator, model: nn.Module, rows: Dataset, features: Dataset) -> dict[str, float]:
    """Response-token loss, perplexity and next-token accuracy (tasks.lm_eval's scoring, sharded under DDP)."""
    from lorakit.tasks.lm_eval import lm_metrics, score_tokens

    def fetch(out, batch):
        return score_tokens(out.logits.float(), batch["labels"])

    # logits are (rows, T, vocab) in fp32, and the loss makes two more of that size: with SmolLM2's 49,152-token
    # vocabulary, 64 rows of 256 tokens are 3.2 GB each. Rows per batch are capped to keep them near LOGITS_BYTES.
    rows = max(1, min(run.batch_size, LOGITS_BYTES // (4 * run.max_length * model.config.vocab_size)))
    sums = [0.0, 0, 0]  # summed loss, scored tokens, correct predictions
    for _, scores in run.run(model, features, fetch, batch_size=rows):
        sums = [a + b for a, b in zip(sums, scores)]
    return lm_metrics(*sums)


LOGITS_BYTES = 512 * 2**20  # causal-LM evaluation: the size of one batch's logits to stay near
GENERATION_SAMPLES = 4  # evaluation rows whose responses are generated before and after training
GENERATION_TOKENS = 32


def _generate_causal(run: Evaluator, model: nn.Module, rows: Dataset) -> list[dict]:
    from lorakit.tasks.instruct import OUTPUT
    from lorakit.tasks.lm_eval import generate_samples
    picked = [rows[i] for i in range(min(GENERATION_SAMPLES, len(rows)))]
    texts = generate_samples(model, run.tokenizer, picked, max_new_tokens=GENERATION_TOKENS, desc="generate",
                             synced_gpus=is_sharded(model))  # FSDP: every rank runs each forward pass
    return [{"prompt": {k: v for k, v in row.items() if k != OUTPUT}, "reference": row.get(OUTPUT),
             "generated": text} for row, text in zip(picked, texts)]


def _predict_causal(run: Evaluator, model: nn.Module, texts: list[str]) -> list[str]:
    """Greedy answers as generated (newlines kept); `lorakit predict --prompt` has its own sampling flags."""
    from lorakit.tasks.lm_eval import generate_samples
    return generate_samples(model, run.tokenizer, texts, max_new_tokens=128)


# per kind, in TaskKind's field order: model class, its kwargs, train and eval features, evaluate, predict, generate
KINDS: dict[str, TaskKind] = {
    SEQUENCE_CLASSIFICATION: TaskKind(tf.AutoModelForSequenceClassification, _classification_kwargs, tokenize,
                                      tokenize, _evaluate_classification, _predict_classification),
    QUESTION_ANSWERING: TaskKind(tf.AutoModelForQuestionAnswering, _no_kwargs, _qa_train_features,
                                 _qa_eval_features, _evaluate_qa, _predict_qa),
    CAUSAL_LM: TaskKind(tf.AutoModelForCausalLM, _no_kwargs, _lm_features, _lm_features, _evaluate_causal,
                        _predict_causal, _generate_causal),
}


def kind_of(spec: TaskSpec) -> TaskKind:
    if spec.kind not in KINDS:
        raise ValueError(f"task {spec.name} is of kind {spec.kind!r}, which `lorakit train` does not support yet; "
                         f"supported kinds: {', '.join(KINDS)}")
    return KINDS[spec.kind]
