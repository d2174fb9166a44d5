"""The bad-input corpus (issue 14): every case is one clear line and exit status 2 (CLI, run in-process) or the
documented exception (Python API: UserError / TaskError, both ValueError), a message that names the value and the
fix, and nothing half-written (the output directory absent, or a run directory unchanged).

Kinds: train flags (numbers, types, contradictions, regexes, devices), data files, paths, --config files,
resumption, eval / predict / merge / params, search, and the Python API. benchmarks/results/reliability.md counts them by kind.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lorakit import LoraConfig, add_lora, load_adapter, save_adapter
from lorakit.io.atomic import read_json
from lorakit.cli.main import main
from lorakit.config import QuantConfig
from lorakit.errors import UserError
from lorakit.tasks import load_splits
from lorakit.training.run import train
from lorakit.training.config import TrainConfig
from test_train import make_tiny_run_inputs, tiny_classifier, tiny_config

FIX_WORDS = ("give", "use", "choose", "must", "accepted", "fix", "drop", "remove", "pass", "restore", "wait",
             "expected", "need", "save", "resume", "delete", "make", "write", "evaluate", "is not", "retrain",
             "should", "only", "supported", "not found", "no such", "set", "leave")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = make_tiny_run_inputs(tmp_path_factory.mktemp("bad"))
    files = {
        "empty_label.csv": "text,label\na b,0\nc d,\ne f,1\n",
        "mixed.csv": "text,label\na b,0\nc d,1\ne f,yes\ng h,1\n",
        "nan_target.csv": "text,label\na b,0.5\nc d,nan\ne f,1.5\n",
        "single.csv": "text,label\na b,pos\nc d,pos\n",
        "fields.csv": "text,label\na b,0\nc d,1,extra\n",
        "empty.csv": "",
        "bad.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", label: 1}\n',
        "bad.json": '[{"text": "a", "label": 0},\n {"text": "b" "label": 1}]\n',
        "table.xls": "text,label\n",
        "config_list.yaml": "- lr\n- 1\n",
        "config_broken.yaml": "lr: [1\n",
        "config_unknown.yaml": "learning_rate: 0.1\n",
        "config_r.yaml": "lora_r: eight\n",
        "config_lr.yaml": "lr: fast\n",
        "config_bs.yaml": "batch_size: 1.5\n",
        "config_tm.yaml": "target_modules: 5\n",
        "config_es.yaml": "eval_steps: [1]\n",
        "config_alpha.yaml": "lora_alpha: .nan\n",
        "a_file.txt": "not a directory\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.csv").write_bytes("text,label\ncaf\xe9,0\nb,1\n".encode("latin-1"))
    return root


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("badrun") / "run"
    train(tiny_config(tiny, out, max_steps=2, save_total_limit=1))
    return out


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} \
        if path.exists() else {}


def _check_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lorakit")]
    assert len(lines) == 1, err
    line = lines[0]
    assert expected in line, line
    assert any(word in line.lower() for word in FIX_WORDS), line
    return line


# --- train: flags -----------------------------------------------------------------------------------------------

TRAIN_FLAGS = [  # (extra flags, expected fragment of the one error line)
    (["--lora-r", "0"], "r=0"), (["--lora-r", "-3"], "r=-3"),
    (["--lora-alpha", "0"], "alpha=0"), (["--lora-alpha", "-1"], "alpha=-1"),
    (["--lora-alpha", "nan"], "alpha must be a finite number, got nan"),
    (["--lora-alpha", "inf"], "got inf"), (["--lora-dropout", "1.5"], "dropout=1.5"),
    (["--lora-dropout", "-0.1"], "dropout=-0.1"), (["--lora-dropout", "nan"], "got nan"),
    (["--lr", "0"], "--lr must be > 0, got 0"), (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"), (["--lr", "inf"], "--lr must be a finite number"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"), (["--weight-decay", "nan"], "--weight-decay must be"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--batch-size", "-2"], "--batch-size must be a positive integer, got -2"),
    (["--grad-accum", "0"], "--grad-accum must be"), (["--eval-batch-size", "0"], "--eval-batch-size must be"),
    (["--epochs", "0"], "--epochs must be"), (["--max-steps", "0"], "--max-steps must be a positive integer"),
    (["--max-steps", "-5"], "got -5"), (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1), got 1.5"),
    (["--warmup-ratio", "nan"], "--warmup-ratio must be a finite number"), (["--warmup-ratio", "-0.1"], "got -0.1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0"), (["--max-grad-norm", "inf"], "got inf"),
    (["--eval-steps", "-1"], "--eval-steps must be >= 0"), (["--save-steps", "-1"], "--save-steps must be >= 0"),
    (["--save-total-limit", "0"], "--save-total-limit must be >= 1"),
    (["--early-stopping-patience", "-1"], "--early-stopping-patience must be >= 0"),
    (["--loraplus-ratio", "0.5"], "--loraplus-ratio must be >= 1"), (["--loraplus-ratio", "inf"], "got inf"),
    (["--max-length", "0"], "--max-length must be a positive integer, got 0"),
    (["--max-length", "100000"], "--max-length 100000 is longer than model"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--method", "head", "--lora-r", "64"], "--method head trains no LoRA, so --lora-r 64 would be ignored"),
    (["--method", "full", "--lora-alpha", "4"], "--lora-alpha 4.0 would be ignored"),
    (["--method", "last-layers", "--target-modules", "query"], "--target-modules ['query'] would be ignored"),
    (["--method", "head", "--use-rslora"], "--use-rslora would be ignored"),
    (["--method", "head", "--loraplus-ratio", "4"], "--loraplus-ratio applies to LoRA methods, not --method head"),
    (["--method", "full", "--fsdp"], "--fsdp shards LoRA training (--method lora, qlora or lora+head), not --method"),
    (["--target-modules", "query", "--target-regex", ".*value"], "--target-modules query and --target-regex .*value"),
    (["--target-regex", "(["], "'([' is not a valid regular expression"),
    (["--target-regex", "*x"], "'*x' is not a valid regular expression"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda"),
]


@pytest.mark.parametrize("extra, expected", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_train_flag(tiny, tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--max-steps", "1", "--output", str(out), *extra]) == 2
    _check_line(capsys, expected)
    assert not out.exists()


ARGPARSE = [["--lora-r", "abc"], ["--method", "bogus"], ["--precision", "fp8"], ["--batch-size", "1.5"]]


@pytest.mark.parametrize("extra", ARGPARSE, ids=[" ".join(f) for f in ARGPARSE])
def test_train_flag_rejected_by_the_parser(tiny, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--output", str(tmp_path / "run"), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and extra[1] in err.splitlines()[-1]
    assert not (tmp_path / "run").exists()


# --- train: data files and paths -------------------------------------------------------------------------------

DATA = [  # (flags with {tiny} for the inputs directory, expected)
    (["--train-file", "{tiny}/empty_label.csv"], "1 empty label(s) (line 3)"),
    (["--train-file", "{tiny}/mixed.csv"], "other values ['yes'] (line 4)"),
    (["--train-file", "{tiny}/nan_target.csv"], "['nan'] (line 3)"),
    (["--train-file", "{tiny}/single.csv"], "has a single label ['pos']"),
    (["--train-file", "{tiny}/fields.csv"], "fields.csv line 3: 3 fields but 2 columns"),
    (["--train-file", "{tiny}/empty.csv"], "empty.csv is empty"),
    (["--train-file", "{tiny}/bad.jsonl"], "bad.jsonl line 3: invalid JSON"),
    (["--train-file", "{tiny}/bad.json"], "bad.json line 2: invalid JSON"),
    (["--train-file", "{tiny}/latin1.csv"], "latin1.csv is not UTF-8 text"),
    (["--train-file", "{tiny}/table.xls"], "unknown file type '.xls'"),
    (["--train-file", "{tiny}/absent.csv"], "missing file"),
    (["--train-file", "{tiny}/train.csv", "--eval-file", "{tiny}/absent.csv"], "absent.csv"),
    (["--train-file", "{tiny}/train.csv", "--text-column", "review"], "column 'review' not found"),
    (["--train-file", "{tiny}/train.csv", "--label-column", "stars"], "column 'stars' not found"),
    (["--train-file", "{tiny}/train.csv", "--eval-file", "{tiny}/mixed.csv"], "mixed.csv"),
    (["--train-file", "{tiny}/train.csv", "--model", "{tiny}/a_file.txt"], "a_file.txt is a file"),
    (["--train-file", "{tiny}/train.csv", "--model", "{tiny}/no_model"], "no_model"),
    (["--train-file", "{tiny}/train.csv", "--init-adapter", "{tiny}/no_adapter"], "no_adapter"),
    (["--train-file", "{tiny}/train.csv", "--task", "nope"], "nope"),
]


@pytest.mark.parametrize("flags, expected", DATA, ids=[" ".join(f) for f, _ in DATA])
def test_train_data(tiny, tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    flags = [f.format(tiny=tiny) for f in flags]
    argv = ["train", "--model", str(tiny / "model"), "--task", "csv", "--max-steps", "1", "--max-length", "32",
            "--output", str(out)]
    assert main(argv + flags) == 2
    _check_line(capsys, expected)
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_train_output_is_not_a_directory(tiny, capsys, where):
    output = tiny / "a_file.txt" if where == "file" else tiny / "a_file.txt" / "run"
    before = (tiny / "a_file.txt").read_text()
    assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--output", str(output)]) == 2
    _check_line(capsys, "a_file.txt")
    assert (tiny / "a_file.txt").read_text() == before


# --- train: --config files -------------------------------------------------------------------------------------

CONFIGS = [("config_list.yaml", "must be a mapping"), ("config_broken.yaml", "is not valid YAML"),
           ("config_unknown.yaml", "unknown setting(s) ['learning_rate']"),
           ("config_r.yaml", "--lora-r must be an integer, got 'eight'"),
           ("config_lr.yaml", "--lr must be a number or null, got 'fast'"),
           ("config_bs.yaml", "--batch-size must be an integer, got 1.5"),
           ("config_tm.yaml", "--target-modules must be a list or a string, got 5"),
           ("config_es.yaml", "--eval-steps must be an integer, got [1]"),
           ("config_alpha.yaml", "--lora-alpha must be a finite number, got nan"),
           ("absent.yaml", "no such file")]


@pytest.mark.parametrize("name, expected", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_train_config_file(tiny, tmp_path, capsys, name, expected):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--config", str(tiny / name), "--output", str(out)]) == 2
    _check_line(capsys, expected)
    assert not out.exists()


# --- train: resumption and a used output directory ---------------------------------------------------------------

RESUME = [  # (how the copied run is damaged, extra flags, expected)
    ("none", [], "holds checkpoints of an earlier run"),
    ("none", ["--resume", "auto", "--lora-r", "4"], "--lora-r 4 (the checkpoint's: 8)"),
    ("none", ["--resume", "auto", "--target-modules", "query"], "--target-modules ['query']"),
    ("none", ["--resume", "auto", "--method", "lora+head"], "--method 'lora+head'"),
    ("none", ["--resume", "{run}/nowhere"], "is not a checkpoint directory"),
    ("optimizer", ["--resume", "auto"], "optimizer.safetensors is damaged or truncated"),
    ("weights", ["--resume", "auto"], "trainable.safetensors is damaged or truncated"),
    ("state", ["--resume", "auto"], "state.json is not valid JSON"),
    ("lock", ["--resume", "auto"], "is in use by lorakit train process"),
]


@pytest.mark.parametrize("damage, flags, expected", RESUME, ids=[f"{d} {' '.join(f)}" for d, f, _ in RESUME])
def test_train_resume(tiny, run, tmp_path, capsys, damage, flags, expected):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    step = next((copy / "checkpoints").glob("step-*"))
    sleeper = None
    if damage in ("optimizer", "weights"):
        file = step / ("optimizer.safetensors" if damage == "optimizer" else "trainable.safetensors")
        file.write_bytes(file.read_bytes()[:64])
    elif damage == "state":
        (step / "state.json").write_text('{"state": ')
    elif damage == "lock":
        import os
        import socket
        import subprocess
        import sys
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (copy / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    before = _tree(copy)
    try:
        status = main(["train", "--config", str(copy / "config.yaml"), "--output", str(copy),
                       *[f.format(run=copy) for f in flags]])
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert status == 2
    _check_line(capsys, expected)
    assert _tree(copy) == before


# --- eval, predict, merge, params --------------------------------------------------------------------------------

INFERENCE = [  # (argv with {run} / {tiny} / {tmp}, damage to a copy of the run, expected)
    (["eval", "--adapter", "{tmp}/none"], None, "no such directory"),
    (["eval"], None, "give --adapter DIR"),
    (["eval", "--adapter", "{run}"], "weights", "adapter_model.safetensors is damaged or truncated"),
    (["predict", "--adapter", "{run}", "w1"], "weights", "adapter_model.safetensors is damaged or truncated"),
    (["eval", "--adapter", "{run}"], "record", "lorakit.json is not valid JSON (line 1"),
    (["eval", "--adapter", "{run}"], "config-bytes", "adapter_config.json is not UTF-8 text"),
    (["eval", "--adapter", "{run}", "--max-length", "100000"], None, "--max-length 100000 is longer"),
    (["eval", "--adapter", "{run}", "--output", "{tiny}"], None, "is a directory; give a file path"),
    (["eval", "--adapter", "{run}", "--output", "{tiny}/a_file.txt/x.json"], None, "a_file.txt is a file"),
    (["eval", "--adapter", "{run}", "--eval-file", "{tiny}/mixed.csv"], None, "mixed.csv"),
    (["eval", "--adapter", "{run}", "--lora-r", "0"], None, "unrecognized"),
    (["predict", "--adapter", "{run}"], None, "nothing to predict"),
    (["predict", "--adapter", "{run}", "--question", "who?"], None, "--question and --context go together"),
    (["predict", "--adapter", "{run}", "--file", "{tmp}/absent.txt"], None, "absent.txt: no such file"),
    (["predict", "--adapter", "{run}", "--file", "{tiny}/latin1.csv"], None, "latin1.csv"),
    (["merge", "--adapter", "{run}"], None, "needs --output DIR"),
    (["merge", "--adapter", "{run}", "--output", "{tiny}/a_file.txt"], None, "a_file.txt is a file"),
    (["merge", "--adapter", "{run}", "--output", "{run}"], None, "is not a merged model directory"),
    (["merge", "--adapter", "{run}", "--output", "{tiny}"], None, "is not a merged model directory"),
    (["params", "--model", "{tiny}/a_file.txt"], None, "a_file.txt is a file"),
    (["params", "--model", "{tiny}/model", "--lora-r", "0"], None, "r=0"),
    (["params", "--model", "{tiny}/model", "--lora-alpha", "nan"], None, "alpha must be a finite number"),
    (["params", "--model", "{tiny}/model", "--target-regex", "(["], None, "not a valid regular expression"),
    (["params", "--model", "{tiny}/model", "--lora-dropout", "2"], None, "dropout=2.0"),
]


@pytest.mark.parametrize("argv, damage, expected", INFERENCE, ids=[" ".join(a[:2]) + f" {d} {e[:20]}"
                                                                   for a, d, e in INFERENCE])
def test_inference_commands(tiny, run, tmp_path, capsys, argv, damage, expected):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    adapter = copy / "adapter"
    if damage == "weights":
        file = adapter / "adapter_model.safetensors"
        file.write_bytes(file.read_bytes()[:100])
    elif damage == "record":
        (adapter / "lorakit.json").write_text("{oops")
    elif damage == "config-bytes":
        (adapter / "adapter_config.json").write_bytes(b'{"r": 8, "x": "\xff\xfe"}')
    before, inputs = _tree(copy), _tree(tiny)
    argv = [a.format(run=copy, tiny=tiny, tmp=tmp_path) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: a flag the command does not take
        status = exit_.code
        assert expected in capsys.readouterr().err
    else:
        _check_line(capsys, expected)
    assert status == 2
    assert _tree(copy) == before and _tree(tiny) == inputs


# --- search -------------------------------------------------------------------------------------------------------

SEARCH = [(["--space", "lora_r=1", "--output", "{tiny}/a_file.txt"], "a_file.txt is a file"),
          (["--space", "lora_r"], "lora_r"), (["--space", "nonsense=1,2"], "nonsense"),
          (["--space", "lora_r=1", "--sampler", "random"], "--sampler random needs --n-trials"),
          (["--space", "lora_r=1", "--workers", "0"], "--workers must be >= 1, got 0"),
          (["--space", "lora_r=1", "--prune", "--metric", "validation_f1"], "leave --metric out with --prune"),
          (["--space", "lora_r=1", "--lr", "nan"], "--lr must be a finite number")]


@pytest.mark.parametrize("flags, expected", SEARCH, ids=[" ".join(f) for f, _ in SEARCH])
def test_search(tiny, tmp_path, capsys, flags, expected):
    flags = [f.format(tiny=tiny) for f in flags]
    if "--output" not in flags:
        flags += ["--output", str(tmp_path / "s")]
    assert main(["search", "--model", str(tiny / "model"), "--task", "csv", "--train-file",
                 str(tiny / "train.csv"), *flags]) == 2
    _check_line(capsys, expected)
    assert not (tmp_path / "s").exists()


# --- the Python API -------------------------------------------------------------------------------------------

LORA = [({"r": 0}, "r=0"), ({"r": 1.5}, "r must be an integer, got 1.5"), ({"r": "8"}, "r must be an integer"),
        ({"r": True}, "r must be an integer, got True"), ({"alpha": math.nan}, "alpha must be a finite number"),
        ({"alpha": -1.0}, "alpha=-1.0"), ({"alpha": "big"}, "alpha must be a number, got 'big'"),
        ({"dropout": 1.0}, "dropout=1.0"), ({"dropout": math.inf}, "dropout must be a finite number"),
        ({"target_modules": 5}, "target_modules must be a list or a string, got 5"),
        ({"target_modules": [1, 2]}, "target_modules must be"), ({"target_modules": ()}, "target_modules is empty"),
        ({"target_modules": "(["}, "'([' is not a valid regular expression"),
        ({"exclude_modules": "*"}, "exclude_modules regex '*'"), ({"init": "zeros"}, "init='zeros'"),
        ({"bias": "some"}, "bias='some'"), ({"rank_pattern": {"q": 0}}, "rank_pattern['q']"),
        ({"alpha_pattern": {"q": math.nan}}, "alpha_pattern['q']"), ({"rank_pattern": {"[": 2}}, "'[' is not a valid"),
        ({"layers_to_transform": ["a"]}, "layers_to_transform must be"), ({"use_rslora": "yes"}, "use_rslora must be"),
        ({"adapter_dtype": "int4"}, "adapter_dtype='int4'")]


@pytest.mark.parametrize("changes, expected", LORA, ids=[str(c) for c, _ in LORA])
def test_lora_config(changes, expected):
    with pytest.raises(ValueError) as err:
        LoraConfig(**changes)
    assert expected in str(err.value)


TRAIN_CONFIG = [({"method": "dora"}, "unknown method 'dora'"), ({"lr": math.nan}, "--lr must be a finite number"),
                ({"lr": "fast"}, "--lr must be a number or null, got 'fast'"),
                ({"batch_size": 1.5}, "--batch-size must be an integer, got 1.5"),
                ({"epochs": True}, "--epochs must be an integer, got True"),
                ({"max_length": "128"}, "--max-length must be an integer, got '128'"),
                ({"report_to": ["mlflow"]}, "unknown --report-to ['mlflow']"),
                ({"text_columns": 5}, "--text-columns must be"), ({"precision": "fp8"}, "unknown precision 'fp8'"),
                ({"quant_kind": "nf3", "method": "qlora"}, "kind='nf3'"), ({"seed": 1.5}, "--seed must be an integer"),
                ({"warmup_steps": "x"}, "--warmup-steps must be an integer or null"),
                ({"split_from_eval": math.inf}, "--split-from-eval must be a finite number"),
                ({"learning_rate": 1e-3}, "unknown field(s) ['learning_rate']")]


@pytest.mark.parametrize("values, expected", TRAIN_CONFIG, ids=[str(v) for v, _ in TRAIN_CONFIG])
def test_train_config(values, expected):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(values)
    assert expected in str(err.value)


def test_quant_config():
    with pytest.raises(ValueError, match="block_size=48"):
        QuantConfig(block_size=48)


@pytest.mark.parametrize("target", ["file", "user directory", "directory under a file"])
def test_save_adapter_refuses(tmp_path, target):
    model = add_lora(tiny_classifier(), LoraConfig(r=2))
    (tmp_path / "f.txt").write_text("x")
    path = {"file": tmp_path / "f.txt", "user directory": tmp_path, "directory under a file": tmp_path / "f.txt" / "a"}
    before = _tree(tmp_path)
    with pytest.raises(UserError) as err:
        save_adapter(model, path[target])
    assert str(path[target]) in str(err.value) or "f.txt" in str(err.value)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("damage, expected", [("absent", "is not an adapter directory"),
                                              ("weights", "damaged or truncated"), ("config", "not valid JSON")])
def test_load_adapter_refuses(tmp_path, damage, expected):
    path = save_adapter(add_lora(tiny_classifier(), LoraConfig(r=2)), tmp_path / "a")
    if damage == "absent":
        (path / "adapter_model.safetensors").unlink()
    elif damage == "weights":
        (path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    else:
        (path / "adapter_config.json").write_text("{")
    with pytest.raises((ValueError, FileNotFoundError), match=expected):  # FileNotFoundError: a missing path
        load_adapter(tiny_classifier(), path)


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(UserError, match=r"x.json is not valid JSON \(line 2"):
        read_json(tmp_path / "x.json")


@pytest.mark.parametrize("name, expected", [("empty_label.csv", "empty label"), ("mixed.csv", "'yes'"),
                                            ("nan_target.csv", "'nan'"), ("bad.jsonl", "line 3")])
def test_load_splits(tiny, name, expected):
    with pytest.raises(ValueError, match=expected):
        load_splits("csv", train_file=tiny / name)


def test_train_api_refuses_a_file_output(tiny):
    with pytest.raises(UserError, match="is a file"):
        train(tiny_config(tiny, tiny / "a_file.txt"))
