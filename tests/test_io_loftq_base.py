"""A QLoRA + LoftQ artifact reloads onto the Q_T it was trained with (io/loftq_base.py), not onto q(W0)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import inputs, logits, make_tiny_run_inputs

from lorakit import load_adapter
from lorakit.training.methods import load_artifact, load_base, save_artifact, setup_method
from lorakit.quant.linear import QuantLinear
from lorakit.tasks import get_task
from lorakit.training.config import TrainConfig
from lorakit.training.step import build_optimizer


def _trained_loftq_run(root, quant_kind: str):
    """A tiny BERT trained two optimizer steps with --method qlora --lora-init loftq, saved; (model, cfg, spec)."""
    cfg = TrainConfig(model=str(make_tiny_run_inputs(root) / "model"), method="qlora", lora_init="loftq",
                      loftq_iter=3, quant_kind=quant_kind, lora_r=4, output=str(root / "run"))
    spec = get_task("sst2")
    model, tokenizer = load_base(cfg.model, spec, new_head=True)  # full precision, as train.py loads it for LoftQ
    setup_method(model, cfg)
    optimizer = build_optimizer(model, cfg)
    model.train()
    for step in range(2):
        batch = inputs(batch=4, length=9, seed=step)
        model(**batch, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_artifact(model.eval(), tokenizer, cfg, spec, cfg.output)
    return model, cfg, spec


@pytest.mark.parametrize("quant_kind", ["nf4", "int8"])
def test_reloaded_loftq_artifact_computes_the_trained_logits(quant_kind, tmp_path):
    model, cfg, spec = _trained_loftq_run(tmp_path, quant_kind)
    batch = inputs(batch=3, length=11, seed=7)
    trained = logits(model, batch)
    reloaded, _, record = load_artifact(tmp_path / "run", spec)
    assert record["config"]["lora_init"] == "loftq"
    query = reloaded.bert.encoder.layer[0].attention.self.query
    assert isinstance(query.base_layer, QuantLinear)
    torch.testing.assert_close(logits(reloaded, batch), trained, atol=1e-6, rtol=0)
    # the same adapter over a plainly quantized base (what the reload did before): visibly other logits
    plain, _ = load_base(cfg.model, spec, quant_config=cfg.quant_config())
    load_adapter(plain, tmp_path / "run" / "adapter")
    assert (logits(plain, batch) - trained).abs().max() > 3e-3 * trained.abs().max()


def test_loftq_artifact_continued_from_an_adapter_reloads_over_plain_quantization(tmp_path):
    """With --init-adapter LoftQ is not applied (setup_method quantizes plainly), and the reload agrees."""
    model, cfg, spec = _trained_loftq_run(tmp_path / "first", "nf4")
    cont = dataclasses.replace(cfg, init_adapter=str(tmp_path / "first" / "run" / "adapter"),
                               output=str(tmp_path / "second"))
    base, tokenizer = load_base(cont.model, spec, new_head=True)
    setup_method(base, cont)
    save_artifact(base.eval(), tokenizer, cont, spec, cont.output)
    batch = inputs(seed=3)
    reloaded, _, _ = load_artifact(tmp_path / "second", spec)
    torch.testing.assert_close(logits(reloaded, batch), logits(base, batch), atol=1e-6, rtol=0)
