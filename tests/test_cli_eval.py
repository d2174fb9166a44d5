"""`lorakit eval`: the sample cap said first ("all" accepted), instruction data evaluated on a default subset, and
--help's defaults those of the recorded run."""
from __future__ import annotations

import pytest

from helpers import tiny_flags
from lorakit.cli.main import main


def test_eval_names_its_sample_cap_and_accepts_all(tiny_inputs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_flags(tiny_inputs, run, "--max-steps", "1", "--max-eval-samples", "10")) == 0
    capsys.readouterr()
    assert main(["eval", "--adapter", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "up to 10 examples per split (the training run's --max-eval-samples" in lines[0]
    assert "(10 examples)" in lines[-1]
    assert main(["eval", "--adapter", str(run), "--max-eval-samples", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "every example" in lines[0] and "(32 examples)" in lines[-1]  # dev.csv has 32 rows
    assert main(["eval", "--adapter", str(run), "--max-eval-samples", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "up to 5 examples per split (--max-eval-samples;" in lines[0] and "(5 examples)" in lines[-1]
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--adapter", str(run), "--max-eval-samples", "some"])
    assert exit_.value.code == 2 and "expected a number of examples or 'all'" in capsys.readouterr().err


def test_instruction_data_is_evaluated_on_a_default_subset():
    from lorakit.training.config import INSTRUCT_EVAL_SAMPLES, eval_sample_cap

    assert eval_sample_cap(None, instruction_data=True) == INSTRUCT_EVAL_SAMPLES
    assert eval_sample_cap(None, instruction_data=False) is None
    assert eval_sample_cap(0, instruction_data=True) is None  # --max-eval-samples all
    assert eval_sample_cap(500, instruction_data=True) == 500


def test_eval_help_defaults_are_the_recorded_runs(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the recorded run's)" in text and "(default: sst2)" not in text
