"""Stopping and resuming a run: README's `--resume auto` line as written, flags that override the recorded settings,
an early stop that survives resumption, kills at any moment (a torn log line, temporaries, between the renames of
best, while old checkpoints are deleted), SIGTERM / SIGINT saving a checkpoint, and a resumed curve equal to the
uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli_env, csv_argv, resumed_config, step_losses, tiny_config, tiny_flags
from lorakit.cli.main import main
from lorakit.errors import RunInterrupted
from lorakit.training.checkpoint import RunDir
from lorakit.training.config import TrainConfig
from lorakit.training.run import train


def test_readme_resume_line_runs_as_written(tiny_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_flags(tiny_inputs, "runs/x", "--max-steps", "4", "--save-steps", "2", "--lr", "1e-2")) == 0
    shutil.rmtree("runs/x/checkpoints/step-000004")  # as if it had been interrupted after step 2
    Path("runs/x/metrics.json").unlink()
    capsys.readouterr()
    assert main(["train", "--output", "runs/x", "--resume", "auto"]) == 0  # README's line: no other flag
    out = capsys.readouterr().out
    assert "resuming from runs/x/checkpoints/step-000002 at step 2" in out
    assert "differ" not in out  # every setting came from the run's config.yaml
    metrics = json.loads(Path("runs/x/metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["task"] == "csv"


def test_resume_flags_override_the_recorded_settings_and_are_named(tiny_inputs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_flags(tiny_inputs, run, "--max-steps", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "auto", "--max-steps", "3"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "differ" in line]
    assert len(notes) == 1 and "max_steps 2 -> 3" in notes[0]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    # a checkpoint path alone: the run directory it belongs to supplies the settings (and the output)
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert main(["train", "--resume", str(checkpoint)]) == 0
    assert "differ" not in capsys.readouterr().out


def test_resuming_an_early_stopped_run_does_not_train_past_the_stop(tiny_inputs, tmp_path):
    cfg = tiny_config(tiny_inputs, tmp_path / "run", max_steps=12, eval_steps=1, early_stopping_patience=1, lr=1e-9)
    first = train(cfg)
    assert first["stopped_early"] and first["steps"] < 12
    again = train(TrainConfig.from_dict({**cfg.to_dict(), "resume": "auto"}))
    assert again["stopped_early"] == first["stopped_early"] and again["steps"] == first["steps"]
    assert max(step_losses(tmp_path / "run")) == first["steps"]


def test_a_torn_log_line_and_temporaries_are_handled_on_resume(tiny_inputs, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    shutil.copytree(reference_run / "checkpoints" / "step-000006", run / "checkpoints" / "step-000004")
    state = json.loads((run / "checkpoints/step-000004/state.json").read_text())
    # a run killed at step 5: the newest checkpoint is step 4 (here: step 6's files, relabelled below), a line torn
    (run / "log.jsonl").write_text((reference_run / "log.jsonl").read_text() + '{"step": 7, "lo')
    (run / "checkpoints" / ".step-000008.tmp-abc12").mkdir()  # a checkpoint being written
    (run / "checkpoints" / ".step-000002.trash-xyz").mkdir()  # one being deleted
    (run / ".log.jsonl.tmp-q1w2").write_text("half")
    assert state["state"]["step"] == 6
    train(resumed_config(run))
    assert "left by an interrupted run" in capsys.readouterr().err
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole


def test_a_kill_between_the_renames_of_best_keeps_the_best(tiny_inputs, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    best_step = json.loads((run / "checkpoints/best/state.json").read_text())["step"]
    os.replace(run / "checkpoints" / "best", run / "checkpoints" / ".best.old")  # the first rename happened
    (run / "checkpoints" / ".best.tmp-k9").mkdir()  # the new one was not renamed in
    metrics = train(resumed_config(run))
    assert json.loads((run / "checkpoints/best/state.json").read_text())["step"] == best_step == metrics["best_step"]
    assert metrics["eval"] == json.loads((reference_run / "metrics.json").read_text())["eval"]


def test_deleting_old_checkpoints_never_leaves_one_without_weights(tiny_inputs, tmp_path, monkeypatch):
    deleted = []
    real = shutil.rmtree

    def killed_after_one_file(path, *args, **kwargs):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if files and not deleted:
            files[-1].unlink()  # the kill came after the first file was gone
            deleted.append(path)
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_inputs, tmp_path / "run", max_steps=6, save_total_limit=1))
    monkeypatch.setattr(shutil, "rmtree", real)
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step-*"):
        assert {p.name for p in checkpoint.iterdir()} == {"trainable.safetensors", "optimizer.safetensors",
                                                          "rng.safetensors", "state.json"}


def test_log_is_replaced_never_truncated_in_place(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(1, 9)))
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: opened.append((Path(path).name, flags))
                        or real_open(path, flags, *a))
    out = RunDir(tmp_path, resume_step=4)
    out.log({"step": 5, "loss": 0.25})
    out.close()
    assert not [name for name, flags in opened if name == "log.jsonl" and flags & os.O_TRUNC]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_saves_and_resume_reproduces(tiny_inputs, reference_run, tmp_path, signum, status):
    cfg = tiny_config(tiny_inputs, tmp_path / "run", max_steps=6, save_total_limit=1, eval_steps=3)
    sent = []

    def signal_at_step_3(state):
        if not sent:
            sent.append(state.step)
            os.kill(os.getpid(), signum)

    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, on_evaluate=signal_at_step_3)
    assert stopped.value.exit_status == status and stopped.value.step == 3
    assert "--resume auto" in str(stopped.value)
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "trainable.safetensors").is_file()
    train(TrainConfig.from_dict({**cfg.to_dict(), "eval_steps": 2, "resume": "auto"}))
    reference_losses = step_losses(reference_run)
    assert step_losses(tmp_path / "run") == reference_losses  # the same steps as one uninterrupted run


def test_sigterm_to_the_cli_exits_143_with_the_resume_line(tiny_inputs, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lorakit", *csv_argv(tiny_inputs), "--batch-size", "8",
                                "--max-length", "32", "--max-steps", "400", "--threads", "1", "--output", str(out)],
                               env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").is_file() and (out / "log.jsonl").stat().st_size):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and f"lorakit train --output {out} --resume auto" in err
    assert list((out / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_kill_campaign_short(tmp_path):
    """Two SIGKILLs at random moments and, where strace is installed, one on a rename, then `--resume auto`:
    bit-identical to an uninterrupted run, no incomplete file, no temporary left."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import random

    import reliability

    inputs = reliability.make_inputs(tmp_path / "inputs")
    strace = 1 if shutil.which("strace") else 0
    figures = reliability.train_campaign(inputs, tmp_path, random_kills=2, strace_kills=strace, rng=random.Random(1))
    assert figures["chains"] >= 1 and figures["identical"] == figures["chains"]
    assert figures["incomplete"] == [] and figures["hidden_after_resume"] == []
