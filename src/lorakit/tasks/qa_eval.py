"""Scoring an extractive QA model on SQuAD: logits per window -> best answer span per question -> EM / F1.

    features = prepare_eval_features(examples, tokenizer, max_length=384, doc_stride=128)
    metrics, predictions = evaluate_qa(model, tokenizer, spec, examples, features)
    # metrics {"exact_match": 80.1, "f1": 87.9, ...}; predictions {question id: answer text}

    answer_question(model, tokenizer, "Who won?", "The Broncos won the game.")   # "The Broncos"

Post-processing follows Hugging Face's run_qa.py (utils_qa.postprocess_qa_predictions): in every window of a
question, the n_best highest start logits and the n_best highest end logits are paired; a pair is a candidate
when both tokens lie in the context, end >= start and the span has at most max_answer_length tokens; its score
is start_logit + end_logit. The best candidate over all windows of the question is the answer, cut from the
context by the tokens' character offsets. SQuAD 2.0: the null score is the smallest CLS score
(start_logit[0] + end_logit[0]) over the windows; the answer is "" when null score - best span score >
null_score_diff_threshold. A question without any candidate gets "" (run_qa.py writes the word "empty").
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from datasets import Dataset

from lorakit.tasks.base import TaskSpec
from lorakit.tasks.batching import LengthGroupedBatchSampler, PaddingCollator
from lorakit.tasks.qa_metrics import squad_metrics
from lorakit.tasks.squad import ANSWERS, CONTEXT, ID, MODEL_INPUTS, QUESTION, is_version_2, prepare_eval_features


@torch.no_grad()
def qa_logits(model, features: Dataset, tokenizer, batch_size: int = 32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every feature, in feature order, each cut to the feature's own length.

    Batches are formed longest-first (little padding) and padded on the right, so row r of a batch of
    logits (B, T) holds the feature's L tokens at positions 0..L-1; the L values are stored at the feature's index.
    """
    # plain lists of token lists, read once (indexing a dataset column row by row is slow)
    columns = features.select_columns([c for c in MODEL_INPUTS if c in features.column_names]).to_dict()
    lengths = [len(ids) for ids in columns["input_ids"]]
    collator = PaddingCollator.from_tokenizer(tokenizer)
    collator.padding_side = "right"  # the cut below keeps the first L positions
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts: list[np.ndarray] = [np.empty(0)] * len(lengths)
    ends: list[np.ndarray] = [np.empty(0)] * len(lengths)
    for indices in LengthGroupedBatchSampler(lengths, batch_size, shuffle=False):
        batch = collator([{name: values[i] for name, values in columns.items()} for i in indices])
        output = model(**{name: tensor.to(device) for name, tensor in batch.items()})
        keep_window_logits(starts, ends, indices, lengths, *window_logits(output, batch))
    model.train(was_training)
    return starts, ends


def window_logits(output, batch=None) -> tuple[np.ndarray, np.ndarray]:
    """A QA model output's start and end logits, (B, T) each, as NumPy arrays."""
    return output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()


def keep_window_logits(starts: list, ends: list, indices: list[int], lengths: list[int], start_logits: np.ndarray,
                       end_logits: np.ndarray) -> None:
    """Store each batch row's start and end logits (B, T), cut to its window's length L (right padding: positions
    0..L-1), at the window's index."""
    for row, index in enumerate(indices):
        starts[index] = start_logits[row, : lengths[index]]
        ends[index] = end_logits[row, : lengths[index]]


def postprocess_qa_predictions(examples: Dataset, features: Dataset, start_logits: list[np.ndarray],
                               end_logits: list[np.ndarray], version_2: bool = False, n_best: int = 20,
                               max_answer_length: int = 30, null_score_diff_threshold: float = 0.0) -> dict[str, str]:
    """Answer text of every question (example) from the logits of its windows (features); see the module doc.

    start_logits[k] / end_logits[k]: logits of feature k, aligned with features[k]["offset_mapping"].
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(start_logits)} start / {len(end_logits)} end logit rows for {len(features)} features")
    meta = features.select_columns(["example_id", "offset_mapping"]).to_dict()  # plain lists, read once
    features_of = defaultdict(list)  # question id -> indices of its windows
    for index, example_id in enumerate(meta["example_id"]):
        features_of[example_id].append(index)
    all_offsets = meta["offset_mapping"]
    questions = examples.select_columns([ID, CONTEXT]).to_dict()
    predictions = {}
    for example_id, context in zip(questions[ID], questions[CONTEXT]):
        best_score, best_span, null_score = -np.inf, None, np.inf
        for index in features_of[example_id]:
            starts, ends, offsets = start_logits[index], end_logits[index], all_offsets[index]
            null_score = min(null_score, float(starts[0] + ends[0]))
            in_context = np.array([span is not None for span in offsets], dtype=bool)  # (L,)
            # indices of the n_best largest logits, largest first (run_qa's argsort slice); context tokens only
            top_starts = np.argsort(starts)[-1: -n_best - 1: -1]
            top_ends = np.argsort(ends)[-1: -n_best - 1: -1]
            top_starts, top_ends = top_starts[in_context[top_starts]], top_ends[in_context[top_ends]]
            if not len(top_starts) or not len(top_ends):
                continue
            span_tokens = top_ends[None, :] - top_starts[:, None] + 1  # (S, E) span length in tokens
            scores = starts[top_starts][:, None] + ends[top_ends][None, :]  # (S, E)
            scores = np.where((span_tokens >= 1) & (span_tokens <= max_answer_length), scores, -np.inf)
            s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)  # first maximum, start-major as run_qa
            if scores[s, e] > best_score:  # strict: on a tie the earlier window wins, as run_qa's stable sort
                best_score = float(scores[s, e])
                best_span = (offsets[top_starts[s]][0], offsets[top_ends[e]][1])
        answer = context[best_span[0]: best_span[1]] if best_span is not None else ""
        if version_2 and (best_span is None or null_score - best_score > null_score_diff_threshold):
            answer = ""
        predictions[example_id] = answer
    return predictions


def evaluate_qa(model, tokenizer, spec: TaskSpec, examples: Dataset, features: Dataset, batch_size: int = 32,
                n_best: int = 20, max_answer_length: int = 30,
                null_score_diff_threshold: float = 0.0) -> tuple[dict[str, float], dict[str, str]]:
    """Official SQuAD metrics (percent) of `model` on `examples`, and its answer per question id.

    features: prepare_eval_features(examples, tokenizer, ...) (kept by the caller to tokenize once).
    """
    start_logits, end_logits = qa_logits(model, features, tokenizer, batch_size)
    version_2 = is_version_2(spec)
    predictions = postprocess_qa_predictions(examples, features, start_logits, end_logits, version_2, n_best,
                                             max_answer_length, null_score_diff_threshold)
    golds = examples.select_columns([ID, ANSWERS]).to_dict()
    references = {qid: answers["text"] for qid, answers in zip(golds[ID], golds[ANSWERS])}
    return squad_metrics(predictions, references, version_2), predictions


def answer_question(model, tokenizer, question: str, context: str, max_length: int = 384,
                    doc_stride: int | None = None, max_answer_length: int = 30, allow_no_answer: bool = False,
                    null_score_diff_threshold: float = 0.0) -> str:
    """The model's answer to one question about one context ("" only with allow_no_answer, SQuAD 2.0 style).

    A context longer than max_length is read in windows, as in evaluation (doc_stride None: max_length // 3).
    """
    example = Dataset.from_dict({ID: ["q"], CONTEXT: [context], QUESTION: [question],
                                 ANSWERS: [{"text": [], "answer_start": []}]})
    features = prepare_eval_features(example, tokenizer, max_length, doc_stride)
    start_logits, end_logits = qa_logits(model, features, tokenizer)  # reads the model inputs only
    return postprocess_qa_predictions(example, features, start_logits, end_logits, allow_no_answer,
                                      max_answer_length=max_answer_length,
                                      null_score_diff_threshold=null_score_diff_threshold)["q"]
