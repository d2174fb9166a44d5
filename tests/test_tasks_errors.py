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
