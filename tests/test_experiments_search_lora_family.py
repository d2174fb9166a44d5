"""The LoRA family in `lorakit search --space` (dora, lora_init, loftq_iter) and in parameter_report (DoRA's m)."""
from __future__ import annotations

import pytest
from helpers import tiny_model

from lorakit import LoraConfig, QuantConfig, add_lora, parameter_report, quantize_model
from lorakit.experiments.search_space import grid_points, parse_space, trial_config


def test_space_searches_dora_and_the_inits(tmp_path):
    space = parse_space(["dora=on,off", "lora_init=kaiming,pissa_niter_16,olora"])
    assert space == {"dora": (True, False), "lora_init": ("kaiming", "pissa_niter_16", "olora")}
    got = []
    for i, params in enumerate(grid_points(space)):
        try:  # DoRA over a residual init is refused per trial (the search records it as a failed trial)
            config = trial_config({"model": "m", "task": "sst2"}, params, tmp_path / str(i)).lora_config()
        except ValueError as err:
            assert params["dora"] and params["lora_init"] != "kaiming" and "use_dora" in str(err)
            continue
        got.append((config.use_dora, config.init))
    assert got == [(True, "kaiming"), (False, "kaiming"), (False, "pissa_niter_16"), (False, "olora")]


def test_space_searches_loftq_iterations(tmp_path):
    space = parse_space(["lora_init=kaiming,loftq", "loftq_iter=1,5"])
    base = {"model": "m", "task": "sst2", "method": "qlora"}
    configs = [trial_config(base, p, tmp_path / str(i)) for i, p in enumerate(grid_points(space))]
    assert [(c.lora_config().init, c.lora_config().loftq_iter) for c in configs] == [
        ("kaiming", 1), ("kaiming", 5), ("loftq", 1), ("loftq", 5)]


@pytest.mark.parametrize("params, message", [({"method": "qlora", "lora_init": "pissa"}, "full-precision"),
                                             ({"method": "lora", "lora_init": "loftq"}, "loftq")])
def test_invalid_family_combinations_are_refused_per_trial(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        trial_config({"model": "m", "task": "sst2"}, params, tmp_path / "t")


@pytest.mark.parametrize("quantized", [False, True])
def test_parameter_report_counts_the_magnitude(quantized):
    lora = add_lora(tiny_model("bert"), LoraConfig(r=4, alpha=8, target_modules=["query", "value"]))
    model = tiny_model("bert")
    if quantized:  # QDoRA: the base quantized first, as QLoRA does
        lora, model = (quantize_model(m, QuantConfig()) for m in (tiny_model("bert"), model))
        lora = add_lora(lora, LoraConfig(r=4, alpha=8, target_modules=["query", "value"]))
    dora = add_lora(model, LoraConfig(r=4, alpha=8, target_modules=["query", "value"], use_dora=True))
    magnitudes = [p for n, p in dora.named_parameters() if n.endswith("lora_magnitude_vector")]
    assert len(magnitudes) == 4 and all(p.requires_grad and p.numel() == 32 for p in magnitudes)
    assert parameter_report(dora).trainable == parameter_report(lora).trainable + 4 * 32
    assert parameter_report(dora).total == parameter_report(lora).total + 4 * 32
