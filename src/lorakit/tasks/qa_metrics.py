"""The official SQuAD v1.1 and v2.0 evaluation metrics (exact match and F1), re-implemented line for line.

    squad_metrics({"q1": "Denver Broncos"}, {"q1": ["Denver Broncos", "The Broncos"]})
    # {"exact_match": 100.0, "f1": 100.0}
    squad_metrics(predictions, references, version_2=True)
    # {"exact_match", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", ...}

Scores are percentages (0-100), as the official scripts print them and papers report them.
Answer normalisation (both scripts): lower case, drop punctuation (string.punctuation), drop the articles
a / an / the as whole words, collapse white space. A prediction is scored against every gold answer and keeps
its best score; the dataset score is the mean over questions.

The two official scripts differ only in corner cases, which are kept:
    v1.1  F1 is 0 when prediction and gold share no token (also when both normalise to nothing).
    v2.0  gold answers that normalise to "" are dropped; a question left with none is unanswerable and its only
          gold is "" (so predicting "" scores 1). F1 of two empty token lists is 1, of one empty list 0.
          HasAns_* / NoAns_* repeat the scores over answerable / unanswerable questions (absent when there
          are none, as in the official script); "exact_match" is the official "exact".
A question without a prediction is scored as if "" had been predicted (v1.1's script scores it 0, as here).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation, articles and extra white space (the official order of steps)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """SQuAD v1.1 token F1 (bag of normalised tokens)."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    """SQuAD v2.0 token F1: as v1.1, except that an empty side scores 1 if both are empty, else 0."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    return f1_v1(prediction, gold)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  version_2: bool = False) -> dict[str, float]:
    """EM and F1 (percent) of `predictions` (question id -> answer text) against `references` (question id ->
    gold answer texts; v2: an empty list marks an unanswerable question). Scored over all reference ids."""
    if not references:
        raise ValueError("squad_metrics: no reference questions to score")
    exact, f1, has_answer = {}, {}, {}
    for qid, golds in references.items():
        prediction = predictions.get(qid, "")
        if version_2:
            golds = [g for g in golds if normalize_answer(g)] or [""]
            has_answer[qid] = golds != [""]
            exact[qid] = max(exact_match(prediction, g) for g in golds)
            f1[qid] = max(f1_v2(prediction, g) for g in golds)
        else:
            if not golds:
                raise ValueError(f"squad_metrics: question {qid!r} has no gold answer; SQuAD v1.1 needs one "
                                 "(score unanswerable questions with version_2=True)")
            exact[qid] = max(exact_match(prediction, g) for g in golds)
            f1[qid] = max(f1_v1(prediction, g) for g in golds)
    result = _mean_scores(exact, f1, list(references))
    if not version_2:
        return {"exact_match": result["exact"], "f1": result["f1"]}
    result = {"exact_match": result["exact"], "f1": result["f1"], "total": result["total"]}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid in references if has_answer[qid] is wanted]
        if ids:
            group = _mean_scores(exact, f1, ids)
            result.update({f"{prefix}_exact": group["exact"], f"{prefix}_f1": group["f1"],
                           f"{prefix}_total": group["total"]})
    return result


def _mean_scores(exact: dict[str, float], f1: dict[str, float], ids: list[str]) -> dict[str, float]:
    total = len(ids)
    return {"exact": 100.0 * sum(exact[q] for q in ids) / total, "f1": 100.0 * sum(f1[q] for q in ids) / total,
            "total": float(total)}
