"""The `lorakit` commands: help, config files, clear errors, and train -> eval -> merge -> eval -> predict.

The acceptance test (marked slow: `make test-slow`, part of CI) trains LoRA on 4,000 SST-2 sentences with MiniLM.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pytest
import transformers as tf

from lorakit.training import step as train_step
from lorakit.cli.main import build_parser, main
from lorakit.cli.flags import train_config_from_args
from lorakit.training.config import TrainConfig
from helpers import error_line, make_tiny_run_inputs, tiny_flags

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize("command", ["train", "eval", "merge", "predict", "params", "demo"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: lorakit {command}" in capsys.readouterr().out


def test_serve_says_it_samples_where_predict_is_greedy(capsys):
    """serve --help and docs/serving.md, before its curl examples, say that a request without temperature is sampled
    (OpenAI's default, 1) while predict is greedy."""
    import re

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "samples by default (temperature 1, OpenAI's default)" in text and "`lorakit predict` is greedy" in text
    doc = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    before_curl = doc.split("curl -s http://127.0.0.1:8000/v1/chat/completions")[0].split("```bash")[-2]
    assert re.search(r"temperature.{0,10}1", before_curl) and "greedy" in before_curl


def test_train_help_names_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flags = {"text_columns": "--text-column", "group_by_length": "--no-group-by-length",
             "double_quant": "--no-double-quant"}
    for field in dataclasses.fields(TrainConfig):
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        assert flag in text, flag
    assert "lora 0.001" in text and "full 5e-05" in text  # per-method learning rates


def test_config_file_then_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1.0e-4\nbatch-size: 4\nlora_r: 4\ntarget_modules: [query, value]\n"
                      "text_columns: sentence\nmethod: lora+head\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--lr", "2e-4", "--lora-key"])
    cfg = train_config_from_args(args)
    assert (cfg.lr, cfg.batch_size, cfg.lora_r, cfg.method) == (2e-4, 4, 4, "lora+head")
    assert cfg.target_modules == ("key",) and cfg.text_columns == ("sentence",)  # flags' targets replace the file's
    no_flags = train_config_from_args(build_parser().parse_args(["train", "--config", str(config)]))
    assert no_flags.target_modules == ("query", "value") and no_flags.lr == 1e-4
    defaults = train_config_from_args(build_parser().parse_args(["train"]))
    assert defaults == TrainConfig()


def test_params_takes_a_config_file_too(tiny, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(f"model: {tiny / 'model'}\nlora_r: 4\ntarget_modules: all-linear\nlr: 0.1\n")
    assert main(["params", "--config", str(tmp_path / "p.yaml")]) == 0
    r4 = capsys.readouterr().out
    assert main(["params", "--config", str(tmp_path / "p.yaml"), "--lora-r", "2"]) == 0
    r2 = capsys.readouterr().out
    assert "pooler.dense.lora_A.weight" in r4  # all-linear from the file
    trainable = [int(out.split("trainable params: ")[1].split(" ")[0].replace(",", "")) for out in (r4, r2)]
    head = 2 * 32 + 2
    assert trainable[0] - head == 2 * (trainable[1] - head)  # LoRA parameters scale with r


def test_a_runs_config_yaml_is_a_config_file(tmp_path):
    cfg = TrainConfig(task="cola", method="qlora", lr=3e-4, target_modules="all-linear", max_train_samples=100,
                      text_columns=("a", "b"), loraplus_ratio=8.0, double_quant=False, output=str(tmp_path))
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "config.yaml")])
    assert train_config_from_args(args) == cfg


@pytest.mark.parametrize("case, expected", [
    ("unknown task", "unknown task 'sst3'"),
    ("missing file", "nope.csv"),
    ("wrong column", "review"),
    ("label outside set", "is not in the label set"),
    ("empty dataset", "no labelled rows"),
    ("no head", "has no sequence_classification head"),
    ("unknown config key", "unknown setting(s) ['learning_rate']"),
    ("bad value", "--batch-size must be a positive integer"),
    ("bad threads", "--threads must be >= 1, got 0"),
    ("missing reporter", "pip install"),
])
def test_bad_input_exits_2_with_one_line(case, expected, tiny, tmp_path, capsys, monkeypatch):
    flags = tiny_flags(tiny, tmp_path / "out")
    if case == "unknown task":
        flags = ["train", "--task", "sst3"]
    elif case == "missing file":
        flags[flags.index("--train-file") + 1] = str(tmp_path / "nope.csv")
    elif case == "wrong column":
        flags += ["--text-column", "review"]
    elif case == "label outside set":
        (tmp_path / "dev.csv").write_text("text,label\nw1 w2,pos\nw3 w4,maybe\n")
        flags[flags.index("--eval-file") + 1] = str(tmp_path / "dev.csv")
    elif case == "empty dataset":
        (tmp_path / "dev.csv").write_text("text,label\n")
        flags[flags.index("--eval-file") + 1] = str(tmp_path / "dev.csv")
    elif case == "no head":
        vit = tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                           image_size=8, patch_size=4)
        tf.ViTModel(vit).save_pretrained(tmp_path / "vit")
        flags[flags.index("--model") + 1] = str(tmp_path / "vit")
    elif case == "unknown config key":
        (tmp_path / "c.yaml").write_text("learning_rate: 0.1\n")
        flags += ["--config", str(tmp_path / "c.yaml")]
    elif case == "bad value":
        flags += ["--batch-size", "0"]
    elif case == "bad threads":
        flags += ["--threads", "0"]
    elif case == "missing reporter":
        find_spec = importlib.util.find_spec  # wandb is in the test extra: make it look absent
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "wandb" else find_spec(name, *a))
        flags += ["--report-to", "wandb"]

    capsys.readouterr()
    assert main(flags) == 2
    line = error_line(capsys)
    assert line.startswith("lorakit train: error:") and expected in line


def test_eval_of_a_missing_adapter_exits_2(tmp_path, capsys):
    assert main(["eval", "--adapter", str(tmp_path / "none")]) == 2
    assert "no such directory" in error_line(capsys)


def test_eval_of_a_model_with_another_head_exits_2(tiny, tmp_path, capsys):
    three_labels = tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, num_labels=3))
    three_labels.save_pretrained(tmp_path / "m")
    tf.AutoTokenizer.from_pretrained(tiny / "model").save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "m"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--eval-file", str(tiny / "dev.csv")]) == 2
    assert "head of another shape" in error_line(capsys)
    for file in (tmp_path / "m").iterdir():
        if file.name not in ("config.json", "model.safetensors"):
            file.unlink()  # the tokenizer's files
    assert main(["train", "--model", str(tmp_path / "m"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "tokenizer" in error_line(capsys)


def test_diverging_run_exits_1_naming_the_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    real = train_step.training_loss
    steps = []

    def nan_from_step_3(model, batch):
        steps.append(1)
        return real(model, batch) * (float("inf") if len(steps) >= 3 else 1.0)

    monkeypatch.setattr(train_step, "training_loss", nan_from_step_3)
    capsys.readouterr()
    assert main(tiny_flags(tiny, tmp_path / "run", "--eval-steps", "2")) == 1
    line = error_line(capsys)
    assert "loss is inf" in line and "step-000002" in line


@pytest.mark.parametrize("method, artifact", [("lora", "adapter"), ("lora+head", "adapter"), ("qlora", "adapter"),
                                              ("head", "weights"), ("last-layers", "weights"), ("full", "model")])
def test_train_eval_merge_predict_round_trip(method, artifact, tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_flags(tiny, run, "--method", method, "--lr", "1e-2", "--eval-steps", "2")) == 0
    assert (run / artifact / "lorakit.json").is_file()
    trained = json.loads((run / "metrics.json").read_text())["eval"]["validation"]

    assert main(["eval", "--adapter", str(run), "--output", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["eval"]["validation"] == trained

    assert main(["merge", "--adapter", str(run), "--output", str(tmp_path / "merged")]) == 0
    merged = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")  # plain transformers
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert main(["eval", "--model", str(tmp_path / "merged"), "--output", str(tmp_path / "merged.json")]) == 0
    again = json.loads((tmp_path / "merged.json").read_text())["eval"]["validation"]
    assert again["accuracy"] == trained["accuracy"] and again["loss"] == pytest.approx(trained["loss"], abs=1e-5)

    capsys.readouterr()
    (tmp_path / "texts.txt").write_text("w1 w2 w3\nw90 w91 w92 w93\n")
    assert main(["predict", "--adapter", str(run), "w1 w2", "--file", str(tmp_path / "texts.txt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0] in ("neg", "pos") for line in lines)
    assert lines[0].endswith("\tw1 w2")


def test_merge_refuses_to_overwrite_a_run_directory(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_flags(tiny, run, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(["merge", "--adapter", str(run), "--output", str(run)]) == 2
    assert "is not a merged model directory" in error_line(capsys)
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_acceptance_lora_minilm_sst2(minilm_path, tmp_path, capsys):
    """LoRA (all-linear, r=8, alpha=8, lr 1e-3) on 4,000 SST-2 sentences, one epoch: >= 78% on the 872 dev
    sentences, and the same accuracy from the reloaded adapter and from the merged model."""
    if not (SST2 / "glue" / "dev.tsv").is_file():
        pytest.skip(f"SST-2 files not found under {SST2}")
    run, merged = tmp_path / "sst2", tmp_path / "merged"
    began = time.perf_counter()
    assert main(["train", "--model", "minilm", "--task", "sst2", "--data-dir", str(SST2), "--method", "lora",
                 "--target-modules", "all-linear", "--lora-r", "8", "--lora-alpha", "8", "--lr", "1e-3", "--max-train-samples", "4000",
                 "--epochs", "1", "--max-length", "64", "--output", str(run)]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    accuracy = trained["eval"]["validation"]["accuracy"]
    assert accuracy >= 0.78, accuracy
    assert main(["eval", "--adapter", str(run), "--output", str(tmp_path / "adapter.json")]) == 0
    assert json.loads((tmp_path / "adapter.json").read_text())["eval"]["validation"]["accuracy"] == accuracy
    assert main(["merge", "--adapter", str(run), "--output", str(merged)]) == 0
    assert main(["eval", "--model", str(merged), "--output", str(tmp_path / "merged.json")]) == 0
    assert json.loads((tmp_path / "merged.json").read_text())["eval"]["validation"]["accuracy"] == accuracy
    with capsys.disabled():
        print(f"\nacceptance: SST-2 dev accuracy {accuracy:.4f} after {trained['steps']} steps; training "
              f"{trained['train_seconds']:.0f} s ({trained['train_examples_per_s']:.0f} examples/s); "
              f"whole test {time.perf_counter() - began:.0f} s")


def test_eval_test_flag_reaches_the_config(tmp_path):
    """--eval-test sets TrainConfig.eval_test (train and eval pass it to load_splits as include_test)."""
    args = build_parser().parse_args(["train", "--task", "imdb", "--eval-test"])
    assert train_config_from_args(args).eval_test is True
    assert train_config_from_args(build_parser().parse_args(["train"])).eval_test is False


# --- one set of LoRA defaults; damaged artifacts -------------------------------------------------------------------

def test_params_reports_the_trainable_count_train_trains(tiny, tmp_path, capsys):
    """No LoRA flags: `params` describes the adapter `train` builds (TrainConfig's defaults), and search / compare
    start from the same LoRA settings."""
    from lorakit.experiments.compare import method_configs
    from lorakit.cli.search import settings_from_args

    capsys.readouterr()
    assert main(["params", "--model", str(tiny / "model")]) == 0
    shown = capsys.readouterr().out.split("trainable params: ")[1].split(" ")[0]
    assert main(tiny_flags(tiny, tmp_path / "run", "--max-steps", "1")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert int(shown.replace(",", "")) == metrics["trainable_params"]

    default = TrainConfig().lora_config()
    assert train_config_from_args(build_parser().parse_args(["train"])).lora_config() == default
    search = settings_from_args(build_parser().parse_args(["search", "--space", "lr=1e-3,2e-3"]))
    assert TrainConfig.from_dict(search.base).lora_config() == default
    assert method_configs({}, ["lora"], tmp_path / "c")["lora"].lora_config() == default


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """Two finished one-step runs (lora: adapter/, head: weights/) to damage copies of."""
    root = tmp_path_factory.mktemp("trained")
    for method in ("lora", "head"):
        assert main(tiny_flags(tiny, root / method, "--method", method, "--max-steps", "1")) == 0
    return root


NO_BASE_NAME = '{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["query"]}'


@pytest.mark.parametrize("run, damage, expected", [
    ("head", {"weights/lorakit.json": None}, "does not name the base model it was trained on"),
    ("lora", {"adapter/lorakit.json": None, "adapter/adapter_config.json": NO_BASE_NAME},
     "does not name the base model it was trained on"),
    ("lora", {"adapter/adapter_config.json": "[]"}, "adapter_config.json must hold a JSON object"),
    ("head", {"weights/lorakit.json": "{oops"}, "lorakit.json is not valid JSON"),
    ("head", {"weights/lorakit.json": "[1]"}, "lorakit.json must hold a JSON object, not a list"),
    ("head", {"weights/trainable.safetensors": "junk"}, "trainable.safetensors is damaged or truncated"),
    ("lora", {"adapter/adapter_model.safetensors": "junk"}, "adapter_model.safetensors is damaged or truncated"),
], ids=["weights-no-record", "adapter-no-base", "config-list", "record-bad-json", "record-list", "weights-junk",
        "adapter-junk"])
def test_a_damaged_artifact_is_one_line_and_exit_2(run, damage, expected, trained, tiny, tmp_path, capsys):
    """`lorakit eval` / `merge --adapter D` on an artifact whose record is gone or whose files
    are damaged (None: the file is deleted)."""
    import shutil

    shutil.copytree(trained / run, tmp_path / run)
    for name, text in damage.items():
        if text is None:
            (tmp_path / run / name).unlink()
        else:
            (tmp_path / run / name).write_text(text + "\n")
    capsys.readouterr()
    for command in (["eval", "--task", "csv", "--train-file", str(tiny / "train.csv"), "--eval-file",
                     str(tiny / "dev.csv")], ["merge", "--output", str(tmp_path / "merged")]):
        assert main([*command, "--adapter", str(tmp_path / run)]) == 2
        assert expected in error_line(capsys)


def test_relative_data_paths_are_recorded_absolute(tiny_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tiny_inputs)
    assert main(["train", "--model", "model", "--task", "csv", "--train-file", "train.csv", "--eval-file", "dev.csv",
                 "--batch-size", "8", "--max-length", "32", "--max-steps", "2", "--output", str(tmp_path / "run")]) == 0
    recorded = TrainConfig.from_yaml((tmp_path / "run" / "config.yaml").read_text())
    assert recorded.train_file == str(tiny_inputs / "train.csv") and recorded.eval_file == str(tiny_inputs / "dev.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--adapter", str(tmp_path / "run"), "--model", str(tiny_inputs / "model")]) == 0
