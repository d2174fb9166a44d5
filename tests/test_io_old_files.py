"""Old files keep loading: an adapter and a run directory written by lorakit (tests/fixtures, made once by
make_fixtures.py and never regenerated) load and predict the pinned logits, `lorakit eval` scores them as recorded,
PEFT reads the adapter, and the run's checkpoint resumes (without writing to the fixture). The base is the seeded
tiny BERT of helpers.make_tiny_run_inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.cli.main import main
from lorakit.training.methods import load_artifact
from lorakit.tasks import load_splits
from lorakit.training.run import train
from lorakit.training.config import TrainConfig
from helpers import make_tiny_run_inputs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = ["v1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_run_inputs(tmp_path_factory.mktemp("fixture-base"))


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("artifact", ["adapter", "run"])
def test_old_artifacts_load_and_predict_the_pinned_logits(base, version, artifact):
    expected = json.loads((FIXTURES / f"expected_{version}.json").read_text())
    spec = load_splits("csv", train_file=base / "train.csv", eval_file=base / "dev.csv").spec
    model, tokenizer, _ = load_artifact(FIXTURES / f"{artifact}_{version}", spec, base_model=str(base / "model"))
    with torch.no_grad():
        logits = model(**tokenizer(expected["texts"], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_peft_reads_the_old_adapter(base, version):
    peft = pytest.importorskip("peft")
    import transformers as tf

    expected = json.loads((FIXTURES / f"expected_{version}.json").read_text())
    model = peft.PeftModel.from_pretrained(tf.AutoModelForSequenceClassification.from_pretrained(base / "model"),
                                           str(FIXTURES / f"adapter_{version}")).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(base / "model")
    with torch.no_grad():
        logits = model(**tokenizer(expected["texts"], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_old_run_directory_evaluates_and_resumes(base, version, tmp_path):
    run = FIXTURES / f"run_{version}"
    before = _tree(run)
    data = ["--model", str(base / "model"), "--train-file", str(base / "train.csv"), "--eval-file",
            str(base / "dev.csv")]
    assert main(["eval", "--adapter", str(run), *data, "--output", str(tmp_path / "eval.json")]) == 0
    recorded = json.loads((run / "metrics.json").read_text())["eval"]["validation"]
    again = json.loads((tmp_path / "eval.json").read_text())["eval"]["validation"]
    assert again["accuracy"] == recorded["accuracy"] and again["loss"] == pytest.approx(recorded["loss"], abs=1e-5)
    config = TrainConfig.from_yaml((run / "config.yaml").read_text())
    resumed = TrainConfig.from_dict({**config.to_dict(), "model": str(base / "model"),
                                     "train_file": str(base / "train.csv"), "eval_file": str(base / "dev.csv"),
                                     "output": str(tmp_path / "resumed"), "max_steps": 4,
                                     "resume": str(run / "checkpoints" / "step-000002")})
    metrics = train(resumed)
    assert metrics["steps"] == 4
    assert _tree(run) == before  # the fixture itself is never written
    shutil.rmtree(tmp_path / "resumed")
