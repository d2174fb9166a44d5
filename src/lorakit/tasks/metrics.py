"""Official task metrics computed from model outputs.

    compute_metrics(spec, logits, labels)  ->  {"accuracy": 0.91, "f1": 0.93}

Metric names (all greater-is-better, returned as Python floats):
    accuracy               fraction of exact class matches
    f1                     binary F1 of class 1 (MRPC "equivalent", QQP "duplicate"), GLUE's convention
    macro_f1               unweighted mean of per-class F1 (multi-class csv tasks)
    matthews_correlation   Matthews correlation coefficient (CoLA); the multi-class form of Gorodkin (2004)
    pearson, spearman      correlation of regression outputs with the gold scores (STS-B), via scipy

Conventions: F1 of a class never predicted and never present is 0; MCC and correlations of a constant
input are 0 (sklearn's choice for MCC; the coefficient is undefined there, and 0 keeps "best" comparisons sane).
Accuracy, F1 and MCC are computed here with numpy (they match sklearn, which lorakit does not depend on).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from lorakit.tasks.base import TaskSpec


def predictions_from_logits(spec: TaskSpec, logits) -> np.ndarray:
    """Class ids (argmax over the last axis) for classification, the squeezed scores for regression."""
    logits = np.asarray(logits)
    if spec.is_regression:
        return logits.reshape(-1).astype(np.float64) if logits.ndim <= 1 or logits.shape[-1] == 1 else logits
    return logits.argmax(axis=-1) if logits.ndim == 2 else logits


def compute_metrics(spec: TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's metrics (spec.metric_names) for one evaluation split.

    predictions: logits of shape (N, num_labels) or (N, 1) / (N,) for regression, or class ids of shape (N,).
    labels: the gold class ids or scores, shape (N,).
    """
    predictions = predictions_from_logits(spec, predictions)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"compute_metrics: predictions shape {predictions.shape} != labels shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("compute_metrics: no examples to score")
    return {name: float(METRICS[name](predictions, labels)) for name in spec.metric_names}


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def _f1_of(predictions: np.ndarray, labels: np.ndarray, cls) -> float:
    true_positive = np.sum((predictions == cls) & (labels == cls))
    predicted = np.sum(predictions == cls)
    actual = np.sum(labels == cls)
    return 0.0 if predicted + actual == 0 else float(2 * true_positive / (predicted + actual))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class."""
    return _f1_of(predictions, labels, 1)


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    classes = np.union1d(np.unique(labels), np.unique(predictions))
    return float(np.mean([_f1_of(predictions, labels, c) for c in classes]))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    n = labels.size
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    numerator = correct * total - predicted_counts @ true_counts
    denominator = np.sqrt((total**2 - predicted_counts @ predicted_counts) * (total**2 - true_counts @ true_counts))
    return 0.0 if denominator == 0 else float(numerator / denominator)


def _correlation(function, predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
    if predictions.size < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(predictions, labels)[0])


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.spearmanr, predictions, labels)


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}
