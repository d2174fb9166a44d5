"""Pinned numbers (torchtune's style): seeded tiny layers and a 4-step tiny training run whose outputs are literal
values committed here. A change of the init, the layer maths, the quantization, the dropout stream, the data order
or the schedule fails these tests, and is then updated on purpose. The training run learns (its loss falls by more
than 30%, its accuracy is far above chance), so the pinned curve is one of learning, not of noise around ln 2.

To regenerate after an intended change: `python tests/test_golden.py` prints the current values of every case in
the form of the dictionaries below; paste them over the old ones and say why in the commit.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit import DoRALinear, LoRAEmbedding, LoRALinear, QuantConfig, QuantLinear
from lorakit.training.run import train

sys.path.insert(0, str(Path(__file__).parent))
from helpers import WORDS, make_tiny_run_inputs, step_losses, tiny_config  # noqa: E402

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


EPOCH_STEPS = 8  # 128 training rows in batches of 16
CHANCE = 0.5  # the majority class's accuracy: half the dev rows are positive


def keyword_inputs(root: Path) -> Path:
    """The tiny BERT of make_tiny_run_inputs on a task it can learn in a few dozen steps: 2-5 random filler words
    and one keyword, w0 in every positive row and w1 in every negative one (128 train rows, 64 dev rows, balanced)."""
    make_tiny_run_inputs(root)
    rng = random.Random(0)
    for name, n in (("train.csv", 128), ("dev.csv", 64)):
        lines = ["text,label"]
        for i in range(n):
            positive = i % 2 == 0
            words = [rng.choice(WORDS[2:]) for _ in range(rng.randint(2, 5))]
            words.insert(rng.randrange(len(words) + 1), WORDS[0] if positive else WORDS[1])
            lines.append(f"{' '.join(words)},{'pos' if positive else 'neg'}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def training_curves(root: Path) -> dict[str, list[float]]:
    """Mean step loss of each epoch of 6-epoch (48-step) runs on the keyword task, then the best eval accuracy."""
    inputs = keyword_inputs(root / "inputs")
    curves = {}
    for name, changes in {"lora": {}, "qlora": {"method": "qlora"}, "dora": {"dora": True}}.items():
        metrics = train(tiny_config(inputs, root / name, max_steps=6 * EPOCH_STEPS, eval_steps=0, batch_size=16,
                                    lr=1e-2, warmup_ratio=0.1, **changes))
        losses = [loss for _, loss in sorted(step_losses(root / name).items())]
        epochs = [sum(losses[i:i + EPOCH_STEPS]) / EPOCH_STEPS for i in range(0, len(losses), EPOCH_STEPS)]
        curves[name] = [round(loss, 6) for loss in epochs] + [round(metrics["best_metric"], 6)]
    return curves


CURVES = {  # name -> mean step loss of epochs 1-6, then the best eval accuracy
    "lora": [0.695362, 0.694041, 0.455539, 0.136737, 0.042157, 0.024607, 1.0],
    "qlora": [0.695307, 0.693374, 0.446656, 0.137853, 0.040663, 0.023843, 1.0],
    "dora": [0.695475, 0.695688, 0.656728, 0.472124, 0.133567, 0.068827, 1.0],
}


def assert_learns(curve: list[float]) -> None:
    *losses, accuracy = curve
    assert losses[-1] <= 0.7 * losses[0], losses  # the loss falls by at least 30%
    assert accuracy >= CHANCE + 0.3, accuracy


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_outputs_are_pinned(name):
    assert summary(layer_cases()[name]) == pytest.approx(LAYERS[name], abs=TOLERANCE)


@pytest.mark.parametrize("name", ["lora", "qlora", "dora"])
def test_pinned_curves_learn(name):
    assert_learns(CURVES[name])


def test_golden_loss_curves(tmp_path):
    curves = training_curves(tmp_path)
    for name, expected in CURVES.items():
        assert_learns(curves[name])
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
