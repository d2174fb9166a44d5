"""The run directory: one run per output directory (a lock naming the live process, a stale lock taken over), no
directory left by a run that fails at once, and files that parse."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from helpers import cli_env, csv_argv, error_line, tiny_config, tiny_flags, tree
from lorakit.cli.main import main
from lorakit.errors import UserError
from lorakit.tasks import TaskError
from lorakit.training.run import train


def test_second_run_on_a_live_output_exits_2_naming_the_first(tiny_inputs, tmp_path):
    out = tmp_path / "run"
    flags = ["-m", "lorakit", *csv_argv(tiny_inputs), "--eval-file", str(tiny_inputs / "dev.csv"), "--batch-size", "8",
             "--max-length", "32", "--max-steps", "60", "--eval-steps", "20", "--threads", "1", "--output", str(out)]
    first = subprocess.Popen([sys.executable, *flags], env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    first_locked = (out / ".lock").is_file()
    second = subprocess.Popen([sys.executable, *flags], env=cli_env(), stdout=subprocess.PIPE,
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


def test_resume_auto_while_a_run_is_live_and_a_stale_lock(tiny_inputs, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = tree(run)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / ".lock").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "command": "train"}))
    flags = ["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto"]
    try:
        assert main(flags) == 2
    finally:
        live.kill()
        live.wait()
    assert f"in use by lorakit train process {live.pid}" in error_line(capsys)
    assert tree(run) == {**before, ".lock": (run / ".lock").read_bytes()}  # untouched
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "train"}))
    assert main(flags) == 0
    assert f"took over the lock of {run} from process {dead.pid}" in capsys.readouterr().err
    assert not (run / ".lock").exists()


def test_a_run_that_fails_at_once_leaves_no_directory(tiny_inputs, tmp_path):
    with pytest.raises(TaskError):
        train(tiny_config(tiny_inputs, tmp_path / "new", text_columns=("nope",)))
    assert not (tmp_path / "new").exists()


def test_train_api_refuses_a_file_output(bad_inputs):
    with pytest.raises(UserError, match="is a file"):
        train(tiny_config(bad_inputs, bad_inputs / "a_file.txt"))


def test_run_files_load_with_safetensors_only(reference_run):
    """What the reference run wrote parses: every JSON file, every line of log.jsonl, every safetensors file."""
    for path in reference_run.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.name == "log.jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]


def user_directory(root):
    """A directory of the user's own: a config.yaml and an adapter/ that are not lorakit's."""
    root.mkdir()
    (root / "config.yaml").write_text("mine: true\n")
    (root / "adapter").mkdir()
    (root / "adapter" / "notes.txt").write_text("keep me\n")
    return root


@pytest.mark.parametrize("flags", [[], ["--resume", "auto"]], ids=["fresh", "resume"])
def test_train_refuses_a_user_directory_and_touches_nothing(tiny_inputs, tmp_path, capsys, flags):
    """Issue 28 C: `train --output DIR` over a user's non-empty directory replaced their config.yaml and deleted
    the files of their adapter/, exit 0."""
    out = user_directory(tmp_path / "mine")
    before = tree(out)
    assert main(tiny_flags(tiny_inputs, out, *flags)) == 2
    assert "is not a lorakit run directory" in error_line(capsys)
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml"]


def test_train_refuses_the_current_directory_and_an_empty_output(tiny_inputs, tmp_path, capsys, monkeypatch):
    here = tmp_path / "checkout"
    here.mkdir()
    (here / "README.md").write_text("a checkout\n")
    monkeypatch.chdir(here)
    for output in (".", ""):
        assert main(tiny_flags(tiny_inputs, output)) == 2
        assert ("is not a lorakit run directory" if output else "--output is empty") in error_line(capsys)
    assert sorted(p.name for p in here.iterdir()) == ["README.md"]
    with pytest.raises(UserError, match="not a lorakit run"):
        train(tiny_config(tiny_inputs, here))


def test_new_run_starts_beside_user_files_but_replaces_none(tiny_inputs, tmp_path, capsys):
    out = user_directory(tmp_path / "mine")
    before = tree(out)
    assert main(tiny_flags(tiny_inputs, out, "--new-run")) == 2  # config.yaml and adapter/ are the user's
    assert "--new-run would replace adapter, config.yaml" in error_line(capsys)
    assert tree(out) == before
    (out / "config.yaml").unlink()
    shutil.rmtree(out / "adapter")
    (out / "notes.md").write_text("mine\n")
    assert main(tiny_flags(tiny_inputs, out, "--new-run")) == 0
    assert (out / "notes.md").read_text() == "mine\n" and (out / "adapter").is_dir()
    assert main(tiny_flags(tiny_inputs, out, "--max-steps", "6", "--resume", "auto")) == 0  # now a run: resumable


def test_merge_takes_the_run_lock_of_its_output(reference_run, tmp_path, capsys):
    """Issue 28 C: two merges into one --output both exited 0, one silently replacing the other."""
    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(reference_run), "--output", str(merged)]) == 0
    assert not (merged / ".lock").exists()
    before = tree(merged)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (merged / ".lock").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "command": "merge"}))
    try:
        assert main(["merge", "--adapter", str(reference_run), "--output", str(merged)]) == 2
    finally:
        live.kill()
        live.wait()
    assert f"in use by lorakit merge process {live.pid}" in error_line(capsys)
    assert {k: v for k, v in tree(merged).items() if k != ".lock"} == before
    (merged / ".lock").unlink()
    assert main(["merge", "--adapter", str(reference_run), "--output", str(merged)]) == 0  # replaces its own kind
    assert not (merged / ".lock").exists()
    killed = tmp_path / "killed"  # a merge killed after taking its lock leaves the lock alone: taken over
    killed.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (killed / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "merge"}))
    assert main(["merge", "--adapter", str(reference_run), "--output", str(killed)]) == 0
    assert (killed / "lorakit.json").is_file() and not (killed / ".lock").exists()
