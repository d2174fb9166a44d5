"""report.py: table cells, CSV / markdown, the Pareto front, and that every plot writes a PNG."""
from __future__ import annotations

import csv
import json

import pytest

from helpers import title_fits
from lorakit.experiments import report

PNG = b"\x89PNG"


def test_fmt_cells():
    assert report.fmt(None) == ""
    assert report.fmt(float("nan")) == ""
    assert report.fmt(1234567) == "1,234,567"
    assert report.fmt(0.812345) == "0.8123"
    assert report.fmt(True) == "on"
    assert report.fmt(["query", "value"]) == "query+value"
    assert report.human_bytes(512) == "512 B"
    assert report.human_bytes(3 * 2**20) == "3.0 MB"


def test_markdown_table_and_csv(tmp_path):
    rows = [{"trial": 0, "lora_r": 8, "acc": 0.8, "note": "a|b"}, {"trial": 1, "lora_r": 16, "acc": None, "extra": [1]}]
    table = report.markdown_table(rows, {"trial": "trial", "lora_r": "r", "acc": "accuracy", "note": "note"})
    lines = table.splitlines()
    assert lines[0] == "| trial | r | accuracy | note |"
    assert lines[2] == "| 0 | 8 | 0.8 | a\\|b |"
    assert lines[3] == "| 1 | 16 |  |  |"
    path = report.write_csv(rows, tmp_path / "rows.csv")
    read = list(csv.DictReader(path.open()))
    assert list(read[0]) == ["trial", "lora_r", "acc", "note", "extra"]  # union of keys, first-seen order
    assert read[1]["acc"] == "" and json.loads(read[1]["extra"]) == [1]


def test_pareto_front():
    points = [(10, 0.5), (100, 0.8), (1000, 0.79), (50, 0.8), (5, 0.4), (2000, 0.9)]
    assert report.pareto_front(points) == [4, 0, 3, 5]  # (100, 0.8) is beaten by (50, 0.8); (1000, .79) too
    assert report.pareto_front([(1, 0.3), (2, 0.2)], maximize=False) == [0, 1]  # lower is better: both optimal


def test_plots_write_pngs(tmp_path):
    rows = [{"trial": i, "lora_r": r, "lora_alpha": a, "objective": 0.5 + 0.01 * r + 0.001 * a,
             "trainable_params": 1000 * r} for i, (r, a) in enumerate([(1, 1), (1, 16), (8, 1), (8, 16), (8, 16)])]
    assert report.plot_heatmap(rows, "objective", tmp_path / "h.png").read_bytes()[:4] == PNG
    assert report.plot_pareto(rows, "objective", tmp_path / "p.png").read_bytes()[:4] == PNG
    assert report.plot_heatmap(rows[:1], "objective", tmp_path / "none.png") is None  # one cell: nothing to show
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6},
                                                   {"step": 2, "eval": {"validation": {"loss": 0.5}}}]))
    assert report.read_losses(log) == ([1, 2], [0.7, 0.6])
    assert report.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert report.plot_curves({"a": log, "missing": tmp_path / "nope.jsonl"}, tmp_path / "c.png").is_file()
    methods = [{"method": "head", "validation_accuracy": 0.56, "trainable_params": 770},
               {"method": "lora", "validation_accuracy": 0.8, "trainable_params": 300_000}]
    assert report.plot_comparison(methods, "validation_accuracy", tmp_path / "cmp.png").read_bytes()[:4] == PNG


@pytest.mark.parametrize("metric", ["missing"])
def test_plots_skip_rows_without_values(tmp_path, metric):
    rows = [{"trial": 0, "trainable_params": 10}]
    assert report.plot_pareto(rows, metric, tmp_path / "p.png") is None
    assert report.plot_comparison([{"method": "x"}], metric, tmp_path / "c.png") is None


def test_heatmap_of_two_grids_and_of_one_dimension(tmp_path, captured_figures):
    from lorakit.experiments import report

    rows = [{"lora_r": r, "lora_alpha": a, "lr": 1e-3, "objective": 0.5 + 0.01 * r} for r in (1, 8) for a in (8, 16)]
    report.plot_heatmap(rows, "objective", tmp_path / "cells.png", scales={"lora_r": "grid", "lora_alpha": "grid"})
    ax = captured_figures[-1].axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("lora_r", "lora_alpha")  # lora_r has the effect
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "8"]
    assert title_fits(captured_figures[-1], ax)
    report.plot_heatmap(rows, "objective", tmp_path / "one.png", label="accuracy",
                        scales={"lora_r": "grid", "lr": "log"})  # lr takes one value: lora_r alone
    ax = captured_figures[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lora_r", "accuracy")
