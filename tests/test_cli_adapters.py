"""`lorakit eval` / `lorakit predict` with several --adapter: one model load, one result per adapter, each equal to
the result of that adapter alone; the errors name the fix."""
from __future__ import annotations

import json

import pytest
import torch

from lorakit.cli import main
from helpers import error_line, make_tiny_run_inputs, tiny_flags


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two 4-step LoRA runs on the tiny task with different seeds and learning rates (different adapters)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("two")
    tiny = make_tiny_run_inputs(root / "inputs")
    for name, extra in (("first", ("--lr", "1e-2", "--seed", "1")), ("second", ("--lr", "3e-2", "--seed", "2"))):
        assert main(tiny_flags(tiny, root / name, "--method", "lora", *extra)) == 0
    return tiny, root


def test_eval_of_two_adapters_equals_each_alone(two_runs, tmp_path):
    _, root = two_runs
    for name in ("first", "second"):
        assert main(["eval", "--adapter", str(root / name), "--output", str(tmp_path / f"{name}.json")]) == 0
    assert main(["eval", "--adapter", str(root / "first"), "--adapter", f"other={root / 'second'}",
                 "--output", str(tmp_path / "both.json")]) == 0
    both = json.loads((tmp_path / "both.json").read_text())["adapters"]
    assert list(both) == ["first", "other"]
    assert both["first"] == json.loads((tmp_path / "first.json").read_text())["eval"]
    assert both["other"] == json.loads((tmp_path / "second.json").read_text())["eval"]


def test_predict_of_two_adapters_prints_a_block_each(two_runs, capsys):
    _, root = two_runs
    texts = ["w1 w2", "w90 w91 w92"]
    alone = {}
    for name in ("first", "second"):
        capsys.readouterr()
        assert main(["predict", "--adapter", str(root / name), *texts]) == 0
        alone[name] = capsys.readouterr().out.strip().splitlines()
    assert main(["predict", "--adapter", str(root / "first"), "--adapter", str(root / "second"), *texts]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["[first]", *alone["first"], "[second]", *alone["second"]]


def test_several_adapters_errors_are_one_line(two_runs, tmp_path, capsys):
    tiny, root = two_runs
    assert main(["eval", "--adapter", str(root / "first"), "--adapter", str(root / "first")]) == 2
    assert "is given to several adapters" in error_line(capsys)
    assert main(["eval", "--adapter", str(root / "first"), "--adapter", str(tmp_path / "nope")]) == 2
    assert "no such directory" in error_line(capsys)
    assert main(tiny_flags(tiny, tmp_path / "q", "--method", "qlora", "--max-steps", "1")) == 0
    assert main(["eval", "--adapter", str(root / "first"), "--adapter", str(tmp_path / "q")]) == 2
    assert "must share their base model" in error_line(capsys)
