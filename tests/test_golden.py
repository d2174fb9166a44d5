"""Pinned numbers (torchtune's style): seeded tiny layers and a 4-step tiny training run whose outputs are literal
values committed here. A change of the init, the layer maths, the quantization, the dropout stream, the data order
or the schedule fails these tests, and is then updated on purpose.

To regenerate after an intended change: `python tests/test_golden.py` prints the current values of every case in
the form of the dictionaries below; paste them over the old ones and say why in the commit.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit import DoRALinear, LoRAEmbedding, LoRALinear, QuantConfig, QuantLinear
from lorakit.training.run import train

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_run_inputs, step_losses, tiny_config  # noqa: E402

TOLERANCE = 1e-5


def summary(t: torch.Tensor) -> list[float]:
    """Sum, mean |x| and the first three elements, rounded: what the literals pin."""
    flat = t.detach().double().flatten()
    return [round(v, 6) for v in (flat.sum().item(), flat.abs().mean().item(), *flat[:3].tolist())]


def seeded(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def lora_linear(base: nn.Module) -> LoRALinear:
    """The library's default init of A (kaiming-uniform, seed 0), then a seeded non-zero B."""
    torch.manual_seed(0)
    layer = LoRALinear(base, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.copy_(seeded(*layer.lora_B.weight.shape, seed=3) * 0.1)
    return layer


def layer_cases() -> dict[str, torch.Tensor]:
    x = seeded(2, 3, 64, seed=1)  # (B, T, in)
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    conv = Conv1D(16, 64)  # nf=16 outputs, nx=64 inputs: weight (64, 16)
    with torch.no_grad():
        conv.weight.copy_(seeded(64, 16, seed=4) * 0.02)
    cases = {"kaiming_A": lora_linear(nn.Linear(64, 16)).lora_A.weight,
             "linear": lora_linear(linear)(x), "conv1d": lora_linear(conv)(x)}
    torch.manual_seed(0)
    dora = DoRALinear(nn.Linear(64, 16), r=4, alpha=8, init="kaiming")
    with torch.no_grad():
        dora.lora_B.weight.copy_(seeded(16, 4, seed=3) * 0.1)
    cases["dora"] = dora(x)
    torch.manual_seed(0)
    embedding = LoRAEmbedding(nn.Embedding(10, 8), r=2, alpha=4)
    with torch.no_grad():
        embedding.lora_embedding_A.copy_(seeded(2, 10, seed=5))
    cases["embedding"] = embedding(torch.tensor([[1, 4, 9], [0, 2, 2]]))
    for kind in ("nf4", "fp4", "int8"):
        torch.manual_seed(0)
        quant = QuantLinear.from_linear(nn.Linear(64, 16), QuantConfig(kind=kind))
        cases[f"qlora_{kind}"] = lora_linear(quant)(x)
    return cases


LAYERS = {  # name -> summary(output): sum, mean |x|, first three elements
    "kaiming_A": [1.085243, 0.067364, 0.010441, 0.015608, -0.098268],
    "linear": [4.446797, 0.500389, -0.232957, -0.293546, -0.003084],
    "conv1d": [3.230888, 0.176662, -0.151142, -0.219043, 0.055724],
    "dora": [3.522712, 0.480121, -0.246491, -0.036241, -0.083187],
    "embedding": [11.896648, 2.257995, 0.1367, -2.133432, 1.275325],
    "qlora_nf4": [4.183861, 0.500955, -0.280623, -0.392827, 0.003083],
    "qlora_fp4": [4.767869, 0.493412, -0.203477, -0.330722, 0.093891],
    "qlora_int8": [4.445518, 0.500602, -0.230756, -0.291558, -0.002846],
}


def training_curves(root: Path) -> dict[str, list[float]]:
    """Step losses of 4-step runs of a tiny BERT on the tiny CSV task (test_train's), then the best eval metric."""
    inputs = make_tiny_run_inputs(root / "inputs")
    curves = {}
    for name, changes in {"lora": {}, "qlora": {"method": "qlora"}, "dora": {"dora": True}}.items():
        metrics = train(tiny_config(inputs, root / name, **changes))
        losses = step_losses(root / name)
        curves[name] = [round(losses[s], 6) for s in sorted(losses)] + [round(metrics["best_metric"], 6)]
    return curves


CURVES = {  # name -> losses of steps 1-4, then the best eval accuracy
    "lora": [0.702397, 0.689563, 0.690333, 0.688884, 0.46875],
    "qlora": [0.702393, 0.689749, 0.690593, 0.688814, 0.46875],
    "dora": [0.702397, 0.689602, 0.690338, 0.689019, 0.46875],
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_outputs_are_pinned(name):
    assert summary(layer_cases()[name]) == pytest.approx(LAYERS[name], abs=TOLERANCE)


def test_golden_loss_curves(tmp_path):
    curves = training_curves(tmp_path)
    for name, expected in CURVES.items():
        assert curves[name] == pytest.approx(expected, abs=TOLERANCE), name


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    print("LAYERS = {")
    for name, value in layer_cases().items():
        print(f"    {name!r}: {summary(value)},")
    print("}")
    with tempfile.TemporaryDirectory() as tmp:
        print("CURVES = {")
        for name, value in training_curves(Path(tmp)).items():
            print(f"    {name!r}: {value},")
        print("}")
