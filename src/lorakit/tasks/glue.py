"""GLUE tasks (Wang et al. 2018): specs, official metrics and the local file layouts each one accepts.

Hub source: `datasets.load_dataset("nyu-mll/glue", <task>)`; GLUE's test splits are unlabelled and never loaded.
Label ids follow the hub's ClassLabel order, so a model trained on local files predicts hub-compatible ids.

Local layouts (data_dir), besides GLUE's own `train.tsv` / `dev.tsv` (tab-separated, header, no quoting):
    cola   cola_public release: raw/in_domain_train.tsv; dev = in_domain_dev.tsv + out_of_domain_dev.tsv (= GLUE dev)
    sst2   data_dir or data_dir/glue; test-labeled.tsv (unofficial labelled test) becomes the "test" split
    mrpc   msr_paraphrase_train.txt / msr_paraphrase_test.txt (GLUE's dev ids file is not public here, so the
           validation split is carved from train, seeded; msr_paraphrase_test.txt, labelled, is the "test" split)
    mnli   dev_matched.tsv and dev_mismatched.tsv are two evaluation splits
    qnli   train.tsv may be absent (pass split_from_eval to carve a train split out of dev.tsv)
    rte    SuperGLUE jsonl: train.jsonl / val.jsonl (premise, hypothesis, label "entailment"/"not_entailment")
"""
from __future__ import annotations

from lorakit.tasks.base import TaskSpec
from lorakit.tasks.layouts import Layout, LayoutReader

HUB = "nyu-mll/glue"
TSV = {"train": "train.tsv", "validation": "dev.tsv"}


def _glue_tsv(text_columns: tuple[str, ...], label_column: str, **options) -> Layout:
    names = ", ".join(TSV.values())
    return Layout(f"GLUE tsv ({names}; columns {', '.join(text_columns)}, {label_column})",
                  tuple((split, (name,)) for split, name in TSV.items()), text_columns, label_column, **options)


def _spec(name: str, text_columns: tuple[str, ...], label_names: tuple[str, ...] | None, metrics: tuple[str, ...],
          main: str, layouts: tuple[Layout, ...], hub_splits: tuple[str, ...] = ("train", "validation"),
          label_column: str = "label") -> TaskSpec:
    reader = LayoutReader(layouts)
    return TaskSpec(
        name=name,
        text_columns=text_columns,
        label_column=label_column,
        num_labels=len(label_names) if label_names else 1,
        label_names=label_names,
        metric_names=metrics,
        main_metric=main,
        hub_path=(HUB, name),
        hub_splits=hub_splits,
        local_layout=reader.describe(),
        read_local=reader,
    )


COLA_COLUMNS = ("source", "label", "mark", "sentence")  # the header-less 4-column CoLA files
COLA = _spec(
    "cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",), "matthews_correlation",
    (
        _glue_tsv(("sentence",), "label", header=COLA_COLUMNS),
        Layout(
            "cola_public raw (in_domain_train.tsv, in_domain_dev.tsv, out_of_domain_dev.tsv; no header)",
            (("train", ("in_domain_train.tsv",)), ("validation", ("in_domain_dev.tsv", "out_of_domain_dev.tsv"))),
            ("sentence",), "label", header=COLA_COLUMNS, subdirs=("", "raw", "cola_public/raw"),
        ),
    ),
)

SST2 = _spec(
    "sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy",
    (
        Layout(
            "GLUE tsv (train.tsv, dev.tsv, optional test-labeled.tsv; columns sentence, label)",
            (("train", ("train.tsv",)), ("validation", ("dev.tsv",)), ("test", ("test-labeled.tsv",))),
            ("sentence",), "label", subdirs=("", "glue"),
        ),
    ),
)

MRPC_COLUMNS = ("#1 String", "#2 String")
MRPC = _spec(
    "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"), "accuracy",
    (
        _glue_tsv(MRPC_COLUMNS, "Quality"),
        Layout(
            "MSR paraphrase corpus (msr_paraphrase_train.txt, msr_paraphrase_test.txt)",
            (("train", ("msr_paraphrase_train.txt",)), ("test", ("msr_paraphrase_test.txt",))),
            MRPC_COLUMNS, "Quality", required=("train",),
        ),
    ),
)

STSB = _spec(
    "stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"), "pearson",
    (_glue_tsv(("sentence1", "sentence2"), "score"),),
)

QQP = _spec(
    "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"), "accuracy",
    (_glue_tsv(("question1", "question2"), "is_duplicate", skip_malformed=True),),
)

MNLI = _spec(
    "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
    (
        Layout(
            "GLUE tsv (train.tsv, dev_matched.tsv, dev_mismatched.tsv; columns sentence1, sentence2, gold_label)",
            (("train", ("train.tsv",)), ("validation_matched", ("dev_matched.tsv",)),
             ("validation_mismatched", ("dev_mismatched.tsv",))),
            ("sentence1", "sentence2"), "gold_label", required=("validation_matched", "validation_mismatched"),
        ),
    ),
    hub_splits=("train", "validation_matched", "validation_mismatched"),
)

QNLI = _spec(
    "qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
    (_glue_tsv(("question", "sentence"), "label"),),
)

RTE = _spec(
    "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
    (
        _glue_tsv(("sentence1", "sentence2"), "label"),
        Layout(
            "SuperGLUE jsonl (train.jsonl, val.jsonl; fields premise, hypothesis, label)",
            (("train", ("train.jsonl",)), ("validation", ("val.jsonl",))),
            ("premise", "hypothesis"), "label",
        ),
    ),
)

WNLI = _spec(
    "wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "accuracy",
    (_glue_tsv(("sentence1", "sentence2"), "label"),),
)

GLUE_TASKS = (COLA, SST2, MRPC, STSB, QQP, MNLI, QNLI, RTE, WNLI)
