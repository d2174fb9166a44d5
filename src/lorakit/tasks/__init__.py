"""Tasks: reading benchmark data, tokenizing it, batching it and scoring predictions. Knows nothing of LoRA.

    from lorakit.tasks import load_splits, tokenize, sequence_lengths, PaddingCollator, \\
        LengthGroupedBatchSampler, compute_metrics

    data = load_splits("sst2", data_dir="../shared/data/sst2")      # TaskData(spec, train, eval)
    train = tokenize(data.train, tokenizer, max_length=128)
    sampler = LengthGroupedBatchSampler(sequence_lengths(train), batch_size=32, seed=0)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    ...
    compute_metrics(data.spec, logits, labels)                     # {"accuracy": 0.93}

Files, one concept each:
    base.py        TaskError, TaskSpec (static facts), TaskData (loaded splits), label mapping, seeded carving
    files.py       CSV / TSV / JSONL reading, column checks, the generic `csv` task's label inference
    layouts.py     benchmark file layouts under a data_dir
    glue.py        the GLUE tasks; imdb.py: IMDB
    loading.py     the registry (TASKS, get_task) and load_splits (hub, local layout or user files)
    preprocess.py  tokenize (no padding), sequence_lengths
    batching.py    PaddingCollator (dynamic padding), LengthGroupedBatchSampler
    metrics.py     compute_metrics and the metric functions
    squad.py       SQuAD v1.1 / v2.0 (kind "question_answering"): reading, train / eval window features
    qa_eval.py     QA logits -> answer spans (run_qa.py post-processing), evaluate_qa, answer_question
    qa_metrics.py  the official SQuAD exact match and F1 (v1.1 and v2.0 with HasAns_ / NoAns_)
    instruct.py    instruction tuning (kind "causal_lm"): Alpaca / chat records, prompt formatting, masked labels
    lm_eval.py     held-out loss / perplexity / token accuracy and greedy generations of a causal LM

A new task family adds its own TaskSpec `kind`, readers (TaskSpec.read_local / read_file / read_hub), tokenize
step and metrics in a new file here and registers its specs in loading.TASKS.
"""
from lorakit.tasks.base import (
    CAUSAL_LM,
    LABEL,
    QUESTION_ANSWERING,
    SEQUENCE_CLASSIFICATION,
    TEXT,
    TEXT_PAIR,
    TaskData,
    TaskError,
    TaskSpec,
)
from lorakit.tasks.batching import LengthGroupedBatchSampler, PaddingCollator
from lorakit.tasks.loading import TASKS, get_task, load_splits, task_names
from lorakit.tasks.metrics import compute_metrics, predictions_from_logits
from lorakit.tasks.preprocess import sequence_lengths, tokenize

__all__ = [
    "CAUSAL_LM",
    "LABEL",
    "QUESTION_ANSWERING",
    "SEQUENCE_CLASSIFICATION",
    "TASKS",
    "TEXT",
    "TEXT_PAIR",
    "LengthGroupedBatchSampler",
    "PaddingCollator",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "compute_metrics",
    "get_task",
    "load_splits",
    "predictions_from_logits",
    "sequence_lengths",
    "task_names",
    "tokenize",
]
