"""Bad data files through load_splits: a TaskError (a ValueError) naming the file, the line and the values."""
from __future__ import annotations

import pytest

from lorakit.tasks import TaskError, load_splits


@pytest.mark.parametrize("labels, message", [
    (["0", "1", "", "1"], "1 empty label(s) (line 4)"),
    (["0", "1", "yes", "1", "0", "oops"], "other values ['oops', 'yes'] (lines 4, 7)"),
    (["0.5", "nan", "1.5"], "['nan'] (line 3)"),
])
def test_bad_label_columns_are_errors_listing_the_values(tmp_path, labels, message):
    file = tmp_path / "train.csv"
    file.write_text("text,label\n" + "".join(f"t{i},{label}\n" for i, label in enumerate(labels)))
    with pytest.raises(TaskError) as err:
        load_splits("csv", train_file=file, eval_file=file)
    assert message in str(err.value) and str(file) in str(err.value)


@pytest.mark.parametrize("name, expected", [("empty_label.csv", "empty label"), ("mixed.csv", "'yes'"),
                                            ("nan_target.csv", "'nan'"), ("bad.jsonl", "line 3")])
def test_load_splits(bad_inputs, name, expected):
    with pytest.raises(ValueError, match=expected):
        load_splits("csv", train_file=bad_inputs / name)


def test_a_class_id_written_as_a_whole_float_is_the_same_class(tmp_path):
    """Issue 28 D: labels `1` and `1.0` in one column made three classes (0, 1, 1.0) of two."""
    file = tmp_path / "train.csv"
    file.write_text("text,label\na b,1\nc d,1.0\ne f,0\ng h,0.0\ni j,1\n")
    data = load_splits("csv", train_file=file, eval_file=file)
    assert data.spec.label_names == ("0", "1") and data.spec.num_labels == 2
    assert list(data.train["label"]) == [1, 1, 0, 0, 1]
