"""What a newcomer meets in the first hour (issue 21): README's commands as written, readable reports, quiet runs.

Each test pins one of the issue's points on tiny models and tiny data (seconds).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.cli import main
from test_train import make_tiny_run_inputs


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("newcomer"))


def tiny_train(tiny: Path, output: str | Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
            "--eval-file", str(tiny / "dev.csv"), "--batch-size", "8", "--max-length", "32",
            "--output", str(output), *extra]


# --- 1. README's `lorakit train --output runs/x --resume auto` -------------------------------------------------

def test_readme_resume_line_runs_as_written(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_train(tiny, "runs/x", "--max-steps", "4", "--save-steps", "2", "--lr", "1e-2")) == 0
    shutil.rmtree("runs/x/checkpoints/step-000004")  # as if it had been interrupted after step 2
    Path("runs/x/metrics.json").unlink()
    capsys.readouterr()
    assert main(["train", "--output", "runs/x", "--resume", "auto"]) == 0  # README's line: no other flag
    out = capsys.readouterr().out
    assert "resuming from runs/x/checkpoints/step-000002 at step 2" in out
    assert "differ" not in out  # every setting came from the run's config.yaml
    metrics = json.loads(Path("runs/x/metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["task"] == "csv"


def test_resume_flags_override_the_recorded_settings_and_are_named(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train(tiny, run, "--max-steps", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "auto", "--max-steps", "3"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "differ" in line]
    assert len(notes) == 1 and "max_steps 2 -> 3" in notes[0]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    # a checkpoint path alone: the run directory it belongs to supplies the settings (and the output)
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert main(["train", "--resume", str(checkpoint)]) == 0
    assert "differ" not in capsys.readouterr().out
