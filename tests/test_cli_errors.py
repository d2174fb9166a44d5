"""Bad input on the command line (in-process): one clear line naming the value and the fix, exit status 2, and
nothing half-written (the output directory absent, or a run directory unchanged).

Kinds: train flags (numbers, types, contradictions, regexes, devices), data files, paths, --config files, resumption,
eval / predict / merge / params, search.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import csv_argv, error_line, flag_cases, tiny_classifier, tiny_model, trained_run, tree
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter
from lorakit.cli.main import main

FIX_WORDS = ("give", "use", "choose", "must", "accepted", "fix", "drop", "remove", "pass", "restore", "wait",
             "expected", "need", "save", "resume", "delete", "make", "write", "evaluate", "is not", "retrain",
             "should", "only", "supported", "not found", "no such", "set", "leave")


def check_line(capsys, expected: str) -> str:
    """error_line, which also holds the expected fragment and a word that says what to do."""
    line = error_line(capsys)
    assert expected in line, line
    assert any(word in line.lower() for word in FIX_WORDS), line
    return line


@pytest.fixture(scope="module")
def run(bad_inputs, tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("badrun") / "run", bad_inputs, max_steps=2, save_total_limit=1)


# extra flags | the expected fragment of the one error line
TRAIN_FLAGS = flag_cases("""
--lora-r 0                                      | r=0
--lora-r -3                                     | r=-3
--lora-alpha 0                                  | alpha=0
--lora-alpha -1                                 | alpha=-1
--lora-alpha nan                                | alpha must be a finite number, got nan
--lora-alpha inf                                | got inf
--lora-dropout 1.5                              | dropout=1.5
--lora-dropout -0.1                             | dropout=-0.1
--lora-dropout nan                              | got nan
--lr 0                                          | --lr must be > 0, got 0
--lr -1                                         | --lr must be > 0
--lr nan                                        | --lr must be a finite number, got nan
--lr inf                                        | --lr must be a finite number
--weight-decay -1                               | --weight-decay must be >= 0
--weight-decay nan                              | --weight-decay must be
--batch-size 0                                  | --batch-size must be a positive integer, got 0
--batch-size -2                                 | --batch-size must be a positive integer, got -2
--grad-accum 0                                  | --grad-accum must be
--eval-batch-size 0                             | --eval-batch-size must be
--epochs 0                                      | --epochs must be
--max-steps 0                                   | --max-steps must be a positive integer
--max-steps -5                                  | got -5
--warmup-ratio 1.5                              | --warmup-ratio must be in [0, 1), got 1.5
--warmup-ratio nan                              | --warmup-ratio must be a finite number
--warmup-ratio -0.1                             | got -0.1
--max-grad-norm -1                              | --max-grad-norm must be >= 0
--max-grad-norm inf                             | got inf
--eval-steps -1                                 | --eval-steps must be >= 0
--save-steps -1                                 | --save-steps must be >= 0
--save-total-limit 0                            | --save-total-limit must be >= 1
--early-stopping-patience -1                    | --early-stopping-patience must be >= 0
--loraplus-ratio 0.5                            | --loraplus-ratio must be >= 1
--loraplus-ratio inf                            | got inf
--max-length 0                                  | --max-length must be a positive integer, got 0
--max-length 100000                             | --max-length 100000 is longer than model
--threads 0                                     | --threads must be >= 1, got 0
--method head --lora-r 64                       | --method head trains no LoRA, so --lora-r 64 would be ignored
--method full --lora-alpha 4                    | --lora-alpha 4.0 would be ignored
--method last-layers --target-modules query     | --target-modules ['query'] would be ignored
--method head --use-rslora                      | --use-rslora would be ignored
--method head --loraplus-ratio 4                | --loraplus-ratio applies to LoRA methods, not --method head
--method full --fsdp                            | --fsdp shards LoRA training (--method lora, qlora or lora+head), not --method
--target-modules query --target-regex '.*value' | --target-modules query and --target-regex .*value
--target-regex '(['                             | '([' is not a valid regular expression
--target-regex '*x'                             | '*x' is not a valid regular expression
--device tpu                                    | unknown device 'tpu'
""") + [(["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda")]


@pytest.mark.parametrize("extra, expected", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_train_flag(bad_inputs, tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    assert main([*csv_argv(bad_inputs), "--max-steps", "1", "--output", str(out), *extra]) == 2
    check_line(capsys, expected)
    assert not out.exists()


ARGPARSE = [["--lora-r", "abc"], ["--method", "bogus"], ["--precision", "fp8"], ["--batch-size", "1.5"]]


@pytest.mark.parametrize("extra", ARGPARSE, ids=[" ".join(f) for f in ARGPARSE])
def test_train_flag_rejected_by_the_parser(bad_inputs, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--output", str(tmp_path / "run"), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and extra[1] in err.splitlines()[-1]
    assert not (tmp_path / "run").exists()


# flags ({tiny}: the inputs directory) | expected
DATA = flag_cases("""
--train-file {tiny}/empty_label.csv                            | 1 empty label(s) (line 3)
--train-file {tiny}/mixed.csv                                  | other values ['yes'] (line 4)
--train-file {tiny}/nan_target.csv                             | ['nan'] (line 3)
--train-file {tiny}/single.csv                                 | has a single label ['pos']
--train-file {tiny}/fields.csv                                 | fields.csv line 3: 3 fields but 2 columns
--train-file {tiny}/empty.csv                                  | empty.csv is empty
--train-file {tiny}/bad.jsonl                                  | bad.jsonl line 3: invalid JSON
--train-file {tiny}/bad.json                                   | bad.json line 2: invalid JSON
--train-file {tiny}/latin1.csv                                 | latin1.csv is not UTF-8 text
--train-file {tiny}/table.xls                                  | unknown file type '.xls'
--train-file {tiny}/absent.csv                                 | missing file
--train-file {tiny}/train.csv --eval-file {tiny}/absent.csv    | absent.csv
--train-file {tiny}/train.csv --text-column review             | column 'review' not found
--train-file {tiny}/train.csv --label-column stars             | column 'stars' not found
--train-file {tiny}/train.csv --eval-file {tiny}/mixed.csv     | mixed.csv
--train-file {tiny}/train.csv --model {tiny}/a_file.txt        | a_file.txt is a file
--train-file {tiny}/train.csv --model {tiny}/no_model          | no_model
--train-file {tiny}/train.csv --init-adapter {tiny}/no_adapter | no_adapter
--train-file {tiny}/train.csv --task nope                      | nope
""")


@pytest.mark.parametrize("flags, expected", DATA, ids=[" ".join(f) for f, _ in DATA])
def test_train_data(bad_inputs, tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    flags = [f.format(tiny=bad_inputs) for f in flags]
    argv = ["train", "--model", str(bad_inputs / "model"), "--task", "csv", "--max-steps", "1", "--max-length", "32",
            "--output", str(out)]
    assert main(argv + flags) == 2
    check_line(capsys, expected)
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_train_output_is_not_a_directory(bad_inputs, capsys, where):
    output = bad_inputs / "a_file.txt" if where == "file" else bad_inputs / "a_file.txt" / "run"
    before = (bad_inputs / "a_file.txt").read_text()
    assert main([*csv_argv(bad_inputs), "--output", str(output)]) == 2
    check_line(capsys, "a_file.txt")
    assert (bad_inputs / "a_file.txt").read_text() == before


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
def test_train_config_file(bad_inputs, tmp_path, capsys, name, expected):
    out = tmp_path / "run"
    assert main([*csv_argv(bad_inputs), "--config", str(bad_inputs / name), "--output", str(out)]) == 2
    check_line(capsys, expected)
    assert not out.exists()


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
def test_train_resume(bad_inputs, run, tmp_path, capsys, damage, flags, expected):
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
        import socket
        import subprocess
        import sys
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (copy / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    before = tree(copy)
    try:
        status = main(["train", "--config", str(copy / "config.yaml"), "--output", str(copy),
                       *[f.format(run=copy) for f in flags]])
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert status == 2
    check_line(capsys, expected)
    assert tree(copy) == before


# argv ({run}, {tiny}, {tmp} filled in) | damage to a copy of the run | expected
INFERENCE = flag_cases("""
eval --adapter {tmp}/none                              | -            | no such directory
eval                                                   | -            | give --adapter DIR
eval --adapter {run}                                   | weights      | adapter_model.safetensors is damaged or truncated
predict --adapter {run} w1                             | weights      | adapter_model.safetensors is damaged or truncated
eval --adapter {run}                                   | record       | lorakit.json is not valid JSON (line 1
eval --adapter {run}                                   | config-bytes | adapter_config.json is not UTF-8 text
eval --adapter {run} --max-length 100000               | -            | --max-length 100000 is longer
eval --adapter {run} --output {tiny}                   | -            | is a directory; give a file path
eval --adapter {run} --output {tiny}/a_file.txt/x.json | -            | a_file.txt is a file
eval --adapter {run} --eval-file {tiny}/mixed.csv      | -            | mixed.csv
eval --adapter {run} --lora-r 0                        | -            | unrecognized
predict --adapter {run}                                | -            | nothing to predict
predict --adapter {run} --question 'who?'              | -            | --question and --context go together
predict --adapter {run} --file {tmp}/absent.txt        | -            | absent.txt: no such file
predict --adapter {run} --file {tiny}/latin1.csv       | -            | latin1.csv
merge --adapter {run}                                  | -            | needs --output DIR
merge --adapter {run} --output {tiny}/a_file.txt       | -            | a_file.txt is a file
merge --adapter {run} --output {run}                   | -            | is not a merged model directory
merge --adapter {run} --output {tiny}                  | -            | is not a merged model directory
params --model {tiny}/a_file.txt                       | -            | a_file.txt is a file
params --model {tiny}/model --lora-r 0                 | -            | r=0
params --model {tiny}/model --lora-alpha nan           | -            | alpha must be a finite number
params --model {tiny}/model --target-regex '(['        | -            | not a valid regular expression
params --model {tiny}/model --lora-dropout 2           | -            | dropout=2.0
""")


@pytest.mark.parametrize("argv, damage, expected", INFERENCE, ids=[" ".join(a[:2]) + f" {d} {e[:20]}"
                                                                   for a, d, e in INFERENCE])
def test_inference_commands(bad_inputs, run, tmp_path, capsys, argv, damage, expected):
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
    before, inputs = tree(copy), tree(bad_inputs)
    argv = [a.format(run=copy, tiny=bad_inputs, tmp=tmp_path) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: a flag the command does not take
        status = exit_.code
        assert expected in capsys.readouterr().err
    else:
        check_line(capsys, expected)
    assert status == 2
    assert tree(copy) == before and tree(bad_inputs) == inputs


SEARCH = [(["--space", "lora_r=1", "--output", "{tiny}/a_file.txt"], "a_file.txt is a file"),
          (["--space", "lora_r"], "lora_r"), (["--space", "nonsense=1,2"], "nonsense"),
          (["--space", "lora_r=1", "--sampler", "random"], "--sampler random needs --n-trials"),
          (["--space", "lora_r=1", "--workers", "0"], "--workers must be >= 1, got 0"),
          (["--space", "lora_r=1", "--prune", "--metric", "validation_f1"], "leave --metric out with --prune"),
          (["--space", "lora_r=1", "--lr", "nan"], "--lr must be a finite number")]


@pytest.mark.parametrize("flags, expected", SEARCH, ids=[" ".join(f) for f, _ in SEARCH])
def test_search(bad_inputs, tmp_path, capsys, flags, expected):
    flags = [f.format(tiny=bad_inputs) for f in flags]
    if "--output" not in flags:
        flags += ["--output", str(tmp_path / "s")]
    assert main([*csv_argv(bad_inputs, "search"), *flags]) == 2
    check_line(capsys, expected)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag, value", [("--lora-alpha", "nan"), ("--lr", "inf"), ("--lora-dropout", "nan"),
                                         ("--warmup-ratio", "nan"), ("--max-grad-norm", "inf")])
def test_non_finite_numbers_exit_2_before_any_output(tiny_inputs, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main([*csv_argv(tiny_inputs), "--output", str(out), flag, value]) == 2
    assert "finite" in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--method", "head", "--lora-r", "64"], "--method head trains no LoRA, so --lora-r 64 would be ignored"),
    (["--method", "full", "--lora-query"], "--lora-query would be ignored"),
    (["--target-modules", "query", "--target-regex", ".*value"], "give one of them"),
])
def test_contradicting_flags_exit_2(tiny_inputs, tmp_path, capsys, flags, message):
    assert main([*csv_argv(tiny_inputs), "--output", str(tmp_path / "run"), *flags]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_truncated_weights_and_a_changed_rank_on_resume(tiny_inputs, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    for command in (["eval", "--adapter", str(run)], ["predict", "--adapter", str(run), "w1 w2"]):
        assert main(command) == 2
        line = error_line(capsys)
        assert str(weights) in line and "truncated" in line
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto",
                 "--lora-r", "4"]) == 2
    assert "--lora-r 4 (the checkpoint's: 8)" in error_line(capsys)
    step = run / "checkpoints" / "step-000006" / "optimizer.safetensors"
    step.write_bytes(step.read_bytes()[:100])
    assert main(["train", "--config", str(run / "config.yaml"), "--output", str(run), "--resume", "auto"]) == 2
    assert str(step) in error_line(capsys)


def test_a_head_of_other_labels_is_named_as_such(tiny_inputs, reference_run, tmp_path, capsys):
    three = tmp_path / "three.csv"
    three.write_text("text,label\n" + "".join(f"w{i} w{i + 1},{'abc'[i % 3]}\n" for i in range(12)))
    assert main(["eval", "--adapter", str(reference_run), "--train-file", str(three), "--eval-file", str(three)]) == 2
    line = error_line(capsys)
    assert "3 outputs" in line and "different base model" not in line
    two_labels = save_adapter(add_lora(tiny_classifier(), LoraConfig(r=2)), tmp_path / "adapter")
    with pytest.raises(ValueError, match="task head has 2 outputs and this task 3") as err:
        load_adapter(tiny_model("bert"), two_labels)  # 3 labels
    assert "different base model" not in str(err.value)
    rank = tmp_path / "adapter" / "adapter_config.json"
    rank.write_text(rank.read_text().replace('"r": 2', '"r": 4'))
    with pytest.raises(ValueError, match="rank 2 differs from the rank 4") as err:
        load_adapter(tiny_classifier(), two_labels)
    assert "different base model" not in str(err.value)


# --- issue 28 D: values that reached the run before being refused --------------------------------------------------

ISSUE_28 = flag_cases("""
--lora-r 100000       | --lora-r 100000 is larger than layer bert.encoder.layer.0.attention.self.query allows (32 -> 32: r <= min(in, out) = 32)
--lora-alpha 1e308    | alpha must be at most 3.4e+38 (the scaling alpha/r is applied in float32), got alpha=1e+308
--text-column label   | column 'label' is both a text column and the label column
""")


@pytest.mark.parametrize("extra, expected", ISSUE_28, ids=[" ".join(f) for f, _ in ISSUE_28])
def test_train_refuses_before_writing(bad_inputs, tmp_path, capsys, extra, expected):
    """Issue 28 D: --lora-r 100000 allocated until the OOM killer; --lora-alpha 1e308 gave a traceback after
    config.yaml, log.jsonl and versions.json were written; --text-column label trained on the labels."""
    out = tmp_path / "run"
    assert main([*csv_argv(bad_inputs), "--max-steps", "1", "--max-length", "32", "--output", str(out), *extra]) == 2
    check_line(capsys, expected)
    assert not out.exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "latin-1"])
def test_a_config_file_in_another_encoding(bad_inputs, tmp_path, capsys, encoding):
    """Issue 28 D: a UTF-16 YAML config gave a bare codec error; a byte-order mark is read, other bytes named."""
    config = tmp_path / "run.yaml"
    config.write_bytes(("lora_r: 7\n# café\n" if encoding != "latin-1" else "lora_r: 0\n# café\n").encode(encoding))
    out = tmp_path / "run"
    status = main([*csv_argv(bad_inputs), "--max-steps", "1", "--eval-file", str(bad_inputs / "dev.csv"),
                   "--max-length", "16", "--config", str(config), "--output", str(out)])
    if encoding == "latin-1":
        assert status == 2
        check_line(capsys, f"--config {config} is not UTF-8 text (byte 15: invalid continuation byte); save it as UTF-8")
        assert not out.exists()
    else:
        assert status == 0 and "lora_r: 7" in (out / "config.yaml").read_text()
