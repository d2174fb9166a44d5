"""lorakit compare: per-method configs, lora-best from a search's best.yaml, and a real (tiny) comparison that the
same command reuses."""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from helpers import save_tiny_bert_classifier
from lorakit.cli import compare as compare_cli
from lorakit.experiments import compare
from lorakit.experiments.compare import artifact_bytes, method_configs

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "glue"
BASE = {"model": "minilm", "task": "sst2", "max_train_samples": 100, "epochs": 1, "seed": 5}


def _best_yaml(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "best.yaml").write_text("# best trial\nmethod: lora\nlora_r: 2\nlora_alpha: 4.0\nlr: 0.005\nepochs: 7\n"
                                         "seed: 1\nmax_train_samples: 9999\ntarget_modules: [query, value]\n")
    return directory


def test_method_configs(tmp_path):
    configs = method_configs(BASE, ["head", "lora", "full", "lora-best"], tmp_path, _best_yaml(tmp_path / "s"))
    assert {m: c.lr for m, c in configs.items()} == {"head": 1e-3, "lora": 1e-3, "full": 5e-5, "lora-best": 5e-3}
    assert all(c.output == str(tmp_path / m) for m, c in configs.items())
    best = configs["lora-best"]
    assert (best.lora_r, best.lora_alpha, best.target_modules) == (2, 4.0, ("query", "value"))  # from best.yaml
    assert (best.epochs, best.seed, best.max_train_samples) == (1, 5, 100)  # the comparison's data, epochs, seed
    assert method_configs({**BASE, "lr": 3e-4}, ["full"], tmp_path)["full"].lr == 3e-4  # --lr: every method
    with pytest.raises(ValueError, match="--search-dir"):
        method_configs(BASE, ["lora-best"], tmp_path)
    with pytest.raises(FileNotFoundError, match="best.yaml"):
        method_configs(BASE, ["lora-best"], tmp_path, tmp_path / "empty")


def test_artifact_bytes_counts_tensor_files_only(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pytorch_model.bin").write_bytes(b"y" * 20)
    assert artifact_bytes(tmp_path) == 120


def test_parser_help():
    parser = argparse.ArgumentParser(prog="lorakit")
    text = compare_cli.add_compare_parser(parser.add_subparsers(dest="command")).format_help()
    for flag in ("--methods", "--search-dir", "--output", "--model", "--max-train-samples", "--epochs", "--seed"):
        assert flag in text
    assert "--method {" not in text  # replaced by --methods


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, minilm_path) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_bert_classifier(root / "model", minilm_path)
    if SST2.is_dir():
        train, dev = SST2.joinpath("train.tsv").read_text().splitlines()[:301], \
            SST2.joinpath("dev.tsv").read_text().splitlines()[:41]
    else:
        rows = [f"{'good fine great' if i % 2 else 'bad dull awful'} film {i}\t{i % 2}" for i in range(340)]
        train, dev = ["sentence\tlabel"] + rows[:300], ["sentence\tlabel"] + rows[300:]
    (root / "train.tsv").write_text("\n".join(train) + "\n")
    (root / "dev.tsv").write_text("\n".join(dev) + "\n")
    return {"model": str(root / "model"), "task": "sst2", "train_file": str(root / "train.tsv"),
            "eval_file": str(root / "dev.tsv"), "max_length": 32, "epochs": 1, "seed": 3}


def test_compare_runs_methods_writes_table_chart_and_reuses_runs(tiny_base, tmp_path, capsys):
    output = tmp_path / "cmp"
    configs = method_configs(tiny_base, ["head", "lora", "lora-best"], output, _best_yaml(tmp_path / "search"))
    rows = compare.run_compare(configs)
    paths = compare.write_comparison(rows, output, title="tiny")
    assert [r["method"] for r in rows] == ["head", "lora", "lora-best"] and all(r["status"] == "complete" for r in rows)
    head, lora, best = rows
    # r 2 on query and value < r 8 on all linear layers
    assert head["trainable_params"] < best["trainable_params"] < lora["trainable_params"]
    assert all(0 < r["adapter_bytes"] and 0 < r["trainable_percent"] < 100 and r["peak_memory_mb"] > 0 for r in rows)
    assert lora["adapter_bytes"] > head["adapter_bytes"]
    assert head["total_params"] == lora["total_params"] == best["total_params"]  # the base model's, every method
    assert lora["trainable_percent"] == pytest.approx(100 * lora["trainable_params"] / lora["total_params"])
    table = paths["table"].read_text()
    assert "total params: the base model's parameters, one definition for every method" in table
    assert table.startswith("# tiny")
    assert "| method | validation_accuracy | validation_loss | trainable params | total params |" in table
    assert "% of total" in table and "adapter size" in table and "peak memory (MB)" in table
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    assert [r["method"] for r in csv.DictReader(paths["csv"].open())] == ["head", "lora", "lora-best"]

    # the same command (through the CLI parser) reuses the finished runs: no training
    parser = argparse.ArgumentParser(prog="lorakit")
    compare_cli.add_compare_parser(parser.add_subparsers(dest="command"))
    argv = ["compare", *(f"--{k.replace('_', '-')}={v}" for k, v in tiny_base.items()),
            "--methods", "head", "lora", "--output", str(output)]
    capsys.readouterr()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 2 and "| head |" in printed and "comparison.png" in printed


def test_comparison_table_and_chart_agree(tmp_path, captured_figures):
    from lorakit.experiments import compare

    rows = [{"method": m, "status": "complete", "validation_accuracy": acc, "validation_loss": 0.61,
             "main_metric": "validation_accuracy", "trainable_params": params, "total_params": 22_000_000,
             "trainable_percent": 100 * params / 22e6, "train_seconds": seconds, "peak_memory_mb": memory,
             "adapter_bytes": 4 * params, "artifact": "x", "lr": 5e-4}
            for m, acc, params, seconds, memory in (("lora", 0.656, 73_000, 291.0, 2057.0),
                                                    ("full", 0.8165, 22_000_000, 364.0, 2240.0))]
    paths = compare.write_comparison(rows, tmp_path)
    table = paths["table"].read_text()
    assert "| 0.6560 |" in table and "| 0.8165 |" in table
    fig = captured_figures[-1]
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["validation accuracy", "trainable parameters (log scale)", "train time (s)", "peak memory (MB)"]
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert shown == ["0.6560", "0.8165"]  # the table's cells
    assert [t.get_text() for t in fig.axes[2].texts] == ["291 s", "364 s"]


def test_comparison_chart_axes_follow_the_data(tmp_path, captured_figures):
    """0.7947 against 0.8016 shows (the accuracy axis does not start at 0), and a 22.7M-parameter model's parameter
    axis ends below 10^9."""
    from lorakit.experiments import compare

    rows = [{"method": m, "status": "complete", "validation_accuracy": acc, "main_metric": "validation_accuracy",
             "trainable_params": params, "total_params": 22_713_986, "trainable_percent": 100 * params / 22_713_986,
             "train_seconds": 50.0, "peak_memory_mb": 1200.0, "adapter_bytes": 4 * params, "artifact": "x"}
            for m, acc, params in (("lora", 0.7947, 338_690), ("qlora", 0.8016, 338_690), ("full", 0.8016, 22_713_986))]
    compare.write_comparison(rows, tmp_path)
    accuracy, params = captured_figures[-1].axes[:2]
    low, high = accuracy.get_xlim()
    assert 0.7 < low < 0.7947 and 0.8016 < high < 0.85
    assert 0.7947 - low > (high - low) / 5  # the smaller bar is a visible length, not a sliver
    low, high = params.get_xlim()
    assert low < 338_690 and 22_713_986 < high < 1e9
