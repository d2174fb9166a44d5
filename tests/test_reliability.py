"""Issue 14: nothing lost, ever. One test (or a few) per defect of the issue, numbered as there, on tiny runs.

1 save_adapter never replaces what is not an adapter; 2 one run per output directory; 3 an early stop survives
resumption; 4 log.jsonl, checkpoints/best and old checkpoints survive a kill at any moment, temporaries are cleaned;
5 bad labels and non-finite numbers are errors; 6 inputs that ended in a traceback; 7 SIGTERM / SIGINT save a
checkpoint; 8 search's exit status, absolute data paths, contradicting flags, LoraConfig values.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit import LoraConfig, add_lora, save_adapter
from lorakit.training.checkpoint import RunDir
from lorakit.cli.main import main
from lorakit.errors import RunInterrupted, UserError
from lorakit.tasks import TaskError, load_splits
from lorakit.training.run import train
from lorakit.training.config import TrainConfig
from test_train import make_tiny_run_inputs, step_losses, tiny_classifier, tiny_config

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("rel"))


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (evaluations every 2 steps, one step checkpoint kept)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_config(tiny, out, max_steps=6, save_total_limit=1))
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lorakit")]
    assert len(lines) == 1, err
    return lines[0]


def _resumed(run: Path) -> TrainConfig:
    """The config of a copied run, resuming in the copy."""
    recorded = TrainConfig.from_yaml((run / "config.yaml").read_text())
    return TrainConfig.from_dict({**recorded.to_dict(), "output": str(run), "resume": "auto"})


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- 1. save_adapter ------------------------------------------------------------------------------------------

def test_1_save_adapter_never_replaces_a_file_or_a_user_directory(tmp_path):
    model = add_lora(tiny_classifier(), LoraConfig(r=2))
    data = tmp_path / "good.csv"
    data.write_text("text,label\na,0\n")
    with pytest.raises(UserError, match="is a file"):
        save_adapter(model, data)
    assert data.read_text() == "text,label\na,0\n"
    with pytest.raises(UserError, match="is a file"):
        save_adapter(model, data, overwrite=True)  # a file never
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="overwrite=True"):
        save_adapter(model, user)
    assert (user / "precious.txt").read_text() == "keep me" and (user / "sub").is_dir()
    adapter = save_adapter(model, tmp_path / "adapter")
    save_adapter(model, adapter)  # an adapter directory is replaced
    save_adapter(model, user, overwrite=True)  # the caller said so
    assert sorted(p.name for p in user.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


# --- 2. one run per output directory --------------------------------------------------------------------------

def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_2_second_run_on_a_live_output_exits_2_naming_the_first(tiny, tmp_path):
    out = tmp_path / "run"
    flags = ["-m", "lorakit", "train", "--model", str(tiny / "model"), "--task", "csv", "--train-file",
             str(tiny / "train.csv"), "--eval-file", str(tiny / "dev.csv"), "--batch-size", "8", "--max-length", "32",
             "--max-steps", "60", "--eval-steps", "20", "--threads", "1", "--output", str(out)]
    first = subprocess.Popen([sys.executable, *flags], env=_cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    first_locked = (out / ".lock").is_file()
    second = subprocess.Popen([sys.executable, *flags], env=_cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    results = {p.pid: (p, *p.communicate(timeout=300)) for p in (first, second)}
    # the second exits 2 naming the first; on a machine so loaded that the second started Python faster than the
    # first (its lock is taken before the heavy imports), the roles swap, never both run
    loser, winner = (second, first) if second.returncode == 2 or first_locked else (first, second)
    err = results[loser.pid][2]
    assert loser.returncode == 2, err
    assert f"in use by lorakit train process {winner.pid}" in err and "Traceback" not in err
    assert winner.returncode == 0, results[winner.pid][2]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 61))  # one run's lines, each once
    assert not (out / ".lock").exists()


def test_2_resume_auto_while_a_run_is_live_and_a_stale_lock(tiny, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _tree(run)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / ".lock").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "command": "train"}))
    flags = ["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto"]
    try:
        assert main(flags) == 2
    finally:
        live.kill()
        live.wait()
    assert f"in use by lorakit train process {live.pid}" in _error(capsys)
    assert _tree(run) == {**before, ".lock": (run / ".lock").read_bytes()}  # untouched
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "train"}))
    assert main(flags) == 0
    assert f"took over the lock of {run} from process {dead.pid}" in capsys.readouterr().err
    assert not (run / ".lock").exists()


def test_2_a_run_that_fails_at_once_leaves_no_directory(tiny, tmp_path):
    with pytest.raises(TaskError):
        train(tiny_config(tiny, tmp_path / "new", text_columns=("nope",)))
    assert not (tmp_path / "new").exists()


# --- 3. early stopping survives resumption --------------------------------------------------------------------

def test_3_resuming_an_early_stopped_run_does_not_train_past_the_stop(tiny, tmp_path):
    cfg = tiny_config(tiny, tmp_path / "run", max_steps=12, eval_steps=1, early_stopping_patience=1, lr=1e-9)
    first = train(cfg)
    assert first["stopped_early"] and first["steps"] < 12
    again = train(TrainConfig.from_dict({**cfg.to_dict(), "resume": "auto"}))
    assert again["stopped_early"] == first["stopped_early"] and again["steps"] == first["steps"]
    assert max(step_losses(tmp_path / "run")) == first["steps"]


# --- 4. log, best, old checkpoints, temporaries ---------------------------------------------------------------

def test_4_a_torn_log_line_and_temporaries_are_handled_on_resume(tiny, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    shutil.copytree(reference / "checkpoints" / "step-000006", run / "checkpoints" / "step-000004")
    state = json.loads((run / "checkpoints/step-000004/state.json").read_text())
    # a run killed at step 5: the newest checkpoint is step 4 (here: step 6's files, relabelled below), a line torn
    (run / "log.jsonl").write_text((reference / "log.jsonl").read_text() + '{"step": 7, "lo')
    (run / "checkpoints" / ".step-000008.tmp-abc12").mkdir()  # a checkpoint being written
    (run / "checkpoints" / ".step-000002.trash-xyz").mkdir()  # one being deleted
    (run / ".log.jsonl.tmp-q1w2").write_text("half")
    assert state["state"]["step"] == 6
    train(_resumed(run))
    assert "left by an interrupted run" in capsys.readouterr().err
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole


def test_4_a_kill_between_the_renames_of_best_keeps_the_best(tiny, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    best_step = json.loads((run / "checkpoints/best/state.json").read_text())["step"]
    os.replace(run / "checkpoints" / "best", run / "checkpoints" / ".best.old")  # the first rename happened
    (run / "checkpoints" / ".best.tmp-k9").mkdir()  # the new one was not renamed in
    metrics = train(_resumed(run))
    assert json.loads((run / "checkpoints/best/state.json").read_text())["step"] == best_step == metrics["best_step"]
    assert metrics["eval"] == json.loads((reference / "metrics.json").read_text())["eval"]


def test_4_deleting_old_checkpoints_never_leaves_one_without_weights(tiny, tmp_path, monkeypatch):
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
        train(tiny_config(tiny, tmp_path / "run", max_steps=6, save_total_limit=1))
    monkeypatch.setattr(shutil, "rmtree", real)
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step-*"):
        assert {p.name for p in checkpoint.iterdir()} == {"trainable.safetensors", "optimizer.safetensors",
                                                          "rng.safetensors", "state.json"}


def test_4_log_is_replaced_never_truncated_in_place(tmp_path, monkeypatch):
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


# --- 5. labels and non-finite numbers -------------------------------------------------------------------------

@pytest.mark.parametrize("labels, message", [
    (["0", "1", "", "1"], "1 empty label(s) (line 4)"),
    (["0", "1", "yes", "1", "0", "oops"], "other values ['oops', 'yes'] (lines 4, 7)"),
    (["0.5", "nan", "1.5"], "['nan'] (line 3)"),
])
def test_5_bad_label_columns_are_errors_listing_the_values(tmp_path, labels, message):
    file = tmp_path / "train.csv"
    file.write_text("text,label\n" + "".join(f"t{i},{label}\n" for i, label in enumerate(labels)))
    with pytest.raises(TaskError) as err:
        load_splits("csv", train_file=file, eval_file=file)
    assert message in str(err.value) and str(file) in str(err.value)


@pytest.mark.parametrize("flag, value", [("--lora-alpha", "nan"), ("--lr", "inf"), ("--lora-dropout", "nan"),
                                         ("--warmup-ratio", "nan"), ("--max-grad-norm", "inf")])
def test_5_non_finite_numbers_exit_2_before_any_output(tiny, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--output", str(out), flag, value]) == 2
    assert "finite" in _error(capsys)
    assert not out.exists()


# --- 6. inputs that ended in a traceback ----------------------------------------------------------------------

def test_6_truncated_weights_and_a_changed_rank_on_resume(tiny, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    for command in (["eval", "--adapter", str(run)], ["predict", "--adapter", str(run), "w1 w2"]):
        assert main(command) == 2
        line = _error(capsys)
        assert str(weights) in line and "truncated" in line
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto",
                 "--lora-r", "4"]) == 2
    assert "--lora-r 4 (the checkpoint's: 8)" in _error(capsys)
    step = run / "checkpoints" / "step-000006" / "optimizer.safetensors"
    step.write_bytes(step.read_bytes()[:100])
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto"]) == 2
    assert str(step) in _error(capsys)


def test_6_a_head_of_other_labels_is_named_as_such(tiny, reference, tmp_path, capsys):
    three = tmp_path / "three.csv"
    three.write_text("text,label\n" + "".join(f"w{i} w{i + 1},{'abc'[i % 3]}\n" for i in range(12)))
    assert main(["eval", "--adapter", str(reference), "--train-file", str(three), "--eval-file", str(three)]) == 2
    line = _error(capsys)
    assert "3 outputs" in line and "different base model" not in line
    from conftest import tiny_model
    from lorakit import load_adapter

    two_labels = save_adapter(add_lora(tiny_classifier(), LoraConfig(r=2)), tmp_path / "adapter")
    with pytest.raises(ValueError, match="task head has 2 outputs and this task 3") as err:
        load_adapter(tiny_model("bert"), two_labels)  # 3 labels
    assert "different base model" not in str(err.value)
    rank = tmp_path / "adapter" / "adapter_config.json"
    rank.write_text(rank.read_text().replace('"r": 2', '"r": 4'))
    with pytest.raises(ValueError, match="rank 2 differs from the rank 4") as err:
        load_adapter(tiny_classifier(), two_labels)
    assert "different base model" not in str(err.value)


# --- 7. SIGTERM / SIGINT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_7_a_signal_finishes_the_step_saves_and_resume_reproduces(tiny, reference, tmp_path, signum, status):
    cfg = tiny_config(tiny, tmp_path / "run", max_steps=6, save_total_limit=1, eval_steps=3)
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
    reference_losses = step_losses(reference)
    assert step_losses(tmp_path / "run") == reference_losses  # the same steps as one uninterrupted run


def test_7_sigterm_to_the_cli_exits_143_with_the_resume_line(tiny, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lorakit", "train", "--model", str(tiny / "model"), "--task",
                                "csv", "--train-file", str(tiny / "train.csv"), "--batch-size", "8", "--max-length",
                                "32", "--max-steps", "400", "--threads", "1", "--output", str(out)],
                               env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").is_file() and (out / "log.jsonl").stat().st_size):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and f"lorakit train --output {out} --resume auto" in err
    assert list((out / "checkpoints").glob("step-*"))


# --- 8. search status, paths, contradictions, LoraConfig ------------------------------------------------------

def test_8_search_exits_1_when_every_trial_failed(tiny, tmp_path, capsys):
    status = main(["search", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                   "--max-steps", "1", "--space", "lora_r=0,-1", "--output", str(tmp_path / "s")])
    assert status == 1
    assert "every trial failed (2)" in capsys.readouterr().err


def test_8_relative_data_paths_are_recorded_absolute(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tiny)
    assert main(["train", "--model", "model", "--task", "csv", "--train-file", "train.csv", "--eval-file", "dev.csv",
                 "--batch-size", "8", "--max-length", "32", "--max-steps", "2", "--output", str(tmp_path / "run")]) == 0
    recorded = TrainConfig.from_yaml((tmp_path / "run" / "config.yaml").read_text())
    assert recorded.train_file == str(tiny / "train.csv") and recorded.eval_file == str(tiny / "dev.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--adapter", str(tmp_path / "run"), "--model", str(tiny / "model")]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--method", "head", "--lora-r", "64"], "--method head trains no LoRA, so --lora-r 64 would be ignored"),
    (["--method", "full", "--lora-query"], "--lora-query would be ignored"),
    (["--target-modules", "query", "--target-regex", ".*value"], "give one of them"),
])
def test_8_contradicting_flags_exit_2(tiny, tmp_path, capsys, flags, message):
    assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--output", str(tmp_path / "run"), *flags]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes, message", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"target_modules": 5}, "target_modules must be"),
    ({"r": "8"}, "r must be an integer"),
    ({"target_modules": "(query"}, "not a valid regular expression"),
])
def test_8_lora_config_rejects_bad_values(changes, message):
    with pytest.raises(UserError, match=message):
        LoraConfig(**changes)


def test_run_files_load_with_safetensors_only(reference):
    """What the reference run wrote parses: every JSON file, every line of log.jsonl, every safetensors file."""
    for path in reference.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.name == "log.jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]


# --- the kill campaign, short (benchmarks/reliability.py runs the full one) --------------------------------------

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


def test_4_recover_never_restores_a_temporary_of_a_temporary(tmp_path):
    """A kill between the two renames of save_adapter's replace inside save_artifact's atomic_dir leaves
    `..adapter.tmp-X.old`: restoring it would bring back `.adapter.tmp-X`, a temporary nobody deletes."""
    from lorakit.io.atomic import recover

    (tmp_path / "..adapter.tmp-abc.old").mkdir()
    (tmp_path / ".adapter.old").mkdir()  # a real interrupted replacement: restored
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
