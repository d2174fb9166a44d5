"""`lorakit train`'s LoRA-only flags: which they are (from TrainConfig's fields) and what a method without LoRA does
with them (exit 2, one line that names the flag, the method and the fix, nothing written)."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from lorakit.cli.flags import train_flags_parser
from lorakit.cli.main import main
from lorakit.config import LoraConfig
from lorakit.training.config import METHODS, TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NON_LORA_METHODS = [m for m in METHODS if not TrainConfig(method=m).uses_lora]


def _options() -> dict[str, argparse.Action]:
    """`lorakit train`'s options by destination."""
    return {a.dest: a for a in train_flags_parser()._actions if a.option_strings}


def _lora_section() -> set[str]:
    """The destinations of the options in `lorakit train --help`'s LoRA section."""
    (group,) = [g for g in train_flags_parser()._action_groups if g.title == "LoRA"]
    return {a.dest for a in group._group_actions}


def _tagged() -> set[str]:
    """The TrainConfig fields whose metadata says they are LoRA-only."""
    return {n for n, f in FIELDS.items() if "lora" in f.metadata or f.metadata.get("lora_only")}


# every flag of --help's LoRA section and every field tagged LoRA-only (the tag is what the check reads)
LORA_ONLY = sorted(_lora_section() | _tagged())
VALUES = {"lora_dropout": "0.1", "lora_init": "gaussian", "target_modules": "query", "target_regex": ".*query"}


def _given(dest: str) -> list[str]:
    """The flag of `dest` with a valid value that is not its default."""
    action = _options()[dest]
    if action.nargs == 0:
        return [action.option_strings[0]]
    if dest in VALUES:
        return [action.option_strings[0], VALUES[dest]]
    value = {int: "4", float: "2"}[action.type]
    return [action.option_strings[0], value]


def test_non_lora_methods_are_the_methods_without_lora():
    assert NON_LORA_METHODS and set(NON_LORA_METHODS) < set(METHODS)
    assert {"head", "last-layers", "full"} <= set(NON_LORA_METHODS)


@pytest.mark.parametrize("method", NON_LORA_METHODS)
@pytest.mark.parametrize("dest", LORA_ONLY)
def test_a_lora_only_flag_with_a_method_without_lora_exits_2(dest, method, tmp_path, capsys):
    out = tmp_path / "run"
    flag = _given(dest)
    # a missing train file: should the check let the flag through, the run fails at once instead of training
    status = main(["train", "--model", str(tmp_path / "no-model"), "--task", "csv", "--train-file",
                   str(tmp_path / "missing.csv"), "--method", method, "--output", str(out), *flag])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert flag[0] in lines[0] and f"--method {method}" in lines[0], lines[0]
    assert "drop it" in lines[0] and "--method lora" in lines[0], lines[0]  # the fix
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--lora-dropout", "0"], ["--lora-r", "8"]])
def test_a_lora_only_flag_given_with_its_default_or_zero_is_still_refused(flag, tmp_path, capsys):
    status = main(["train", "--task", "csv", "--train-file", str(tmp_path / "missing.csv"), "--method", "head",
                   "--output", str(tmp_path / "run"), *flag])
    err = capsys.readouterr().err
    assert status == 2 and f"so {' '.join(flag)}" in err and "would be ignored" in err, err


def test_the_lora_only_flags_are_what_trainconfigs_fields_say():
    from lorakit.cli.flags import LORA_ONLY_FLAGS, TARGET_KEYS
    from lorakit.training.config import LORA_FIELDS, LORA_SETTINGS

    assert set(LORA_ONLY_FLAGS) == set(LORA_SETTINGS) | set(TARGET_KEYS)
    assert set(LORA_SETTINGS) == _tagged()
    assert {"dora", "loftq_iter", "loraplus_ratio", "lora_r"} <= set(LORA_SETTINGS)
    assert _lora_section() <= set(LORA_ONLY_FLAGS)  # everything --help lists under LoRA
    assert set(LORA_FIELDS) <= set(LORA_SETTINGS)
    assert set(LORA_FIELDS.values()) <= {f.name for f in dataclasses.fields(LoraConfig)}


def test_each_lora_field_reaches_the_lora_config_and_no_other_field_does():
    changed = {"lora_r": 4, "lora_alpha": 3.0, "lora_dropout": 0.25, "target_modules": ("query",),
               "use_rslora": True, "lora_init": "gaussian", "dora": True, "loftq_iter": 3}
    from lorakit.training.config import LORA_FIELDS

    assert set(changed) == set(LORA_FIELDS)
    lora = TrainConfig(**changed).lora_config()
    assert {LORA_FIELDS[k]: getattr(lora, LORA_FIELDS[k]) for k in changed} == {
        LORA_FIELDS[k]: v for k, v in changed.items()}
    default = TrainConfig().lora_config()
    for name, f in FIELDS.items():
        if name in LORA_FIELDS or f.type not in ("bool", "int", "float"):
            continue
        value = {"bool": lambda d: not d, "int": lambda d: d + 1, "float": lambda d: d / 2 + 0.1}[f.type](f.default)
        try:
            cfg = TrainConfig(**{name: value})
        except ValueError:
            continue  # not a valid value for this setting
        assert cfg.lora_config() == default, name


def test_lora_config_is_built_once_per_train_config(monkeypatch):
    built = []
    original = LoraConfig.__post_init__
    monkeypatch.setattr(LoraConfig, "__post_init__", lambda self: (built.append(1), original(self)))
    cfg = TrainConfig(method="lora")
    assert len(built) == 1
    assert cfg.lora_config() is cfg.lora_config() and len(built) == 1


# --- the run lock: taken once per run ------------------------------------------------------------------------

def test_lorakit_train_takes_the_run_lock_once(tmp_path, monkeypatch, capsys):
    import torch

    from lorakit.training import runlock
    from helpers import make_tiny_run_inputs

    tiny = make_tiny_run_inputs(tmp_path / "in")
    taken = []
    acquire = runlock.RunLock.acquire
    monkeypatch.setattr(runlock.RunLock, "acquire", lambda self: (taken.append(self.directory), acquire(self))[1])
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                     "--eval-file", str(tiny / "dev.csv"), "--batch-size", "8", "--max-steps", "2", "--max-length",
                     "32", "--threads", "1", "--output", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert taken == [tmp_path / "run"]
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_second_lock_in_the_same_process_is_refused_and_a_lock_of_this_pid_not_held_is_stale(tmp_path, capsys):
    import json
    import os
    import socket

    from lorakit.errors import UserError
    from lorakit.training.runlock import LOCK, RunLock, run_lock

    with run_lock(tmp_path / "run") as lock:
        with pytest.raises(UserError, match="in use by another run of this process"):
            RunLock(tmp_path / "run").acquire()
        with pytest.raises(ValueError, match="the lock given is that of"):
            with run_lock(tmp_path / "other", lock):
                pass
        with run_lock(tmp_path / "run", lock) as same:
            assert same is lock
        assert lock.held
    assert not (tmp_path / "run").exists()  # created by the lock, left empty
    (tmp_path / "left").mkdir()
    (tmp_path / "left" / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with run_lock(tmp_path / "left") as lock:  # a dead process's lock whose pid this process got again
        assert lock.held
    assert "took over the lock" in capsys.readouterr().err
    assert not (tmp_path / "left" / LOCK).exists()
