# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # LoRA by hand on a toy MLP
#
# LoRA freezes a weight `W0` and learns a low-rank update: `h = W0·x + (alpha/r)·B·A·x`, with
# `A: (r, in)` random and `B: (out, r)` zero at the start, so training starts from the frozen model.
# This notebook writes that layer in ten lines, trains it on a toy problem, then does the same with
# `lorakit.add_lora` and checks the two agree.
#
# Size and time: a 2-layer toy MLP. Under a minute on one CPU thread (46 s measured, most of it imports, on a
# 2-core machine shared with other jobs, load average 15).
#
# Run it as a script (`python examples/01_lora_by_hand.py`) or open it with Jupytext.

# %%
import math
import os

import torch
from torch import nn

SMALL = os.environ.get("LORAKIT_EXAMPLE_SMALL") == "1"  # the test suite runs a reduced size
torch.manual_seed(0)


# %% [markdown]
# ## The layer, from scratch

# %%
class LoRALayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, r: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.randn(r, in_dim) / math.sqrt(r))  # A ~ N(0, 1/r): (r, in)
        self.B = nn.Parameter(torch.zeros(out_dim, r))  # B = 0: (out, r)
        self.scaling = alpha / r

    def forward(self, x):  # x: (N, in) -> (N, out)
        return self.scaling * (x @ self.A.t() @ self.B.t())


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.linear = linear.requires_grad_(False)  # W0 frozen
        self.lora = LoRALayer(linear.in_features, linear.out_features, r, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


# %% [markdown]
# ## A toy task: a frozen "pretrained" MLP must learn a new mapping

# %%
def make_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))


n = 256 if SMALL else 2048
x = torch.randn(n, 16)
y = (x[:, :4].sum(dim=1) > 0).long()  # the new task


def train(model, steps):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (model(x).argmax(-1) == y).float().mean().item()


steps = 30 if SMALL else 200
mlp = make_mlp()
print("frozen MLP accuracy:", (mlp(x).argmax(-1) == y).float().mean().item())
mlp[0] = LinearWithLoRA(mlp[0], r=4, alpha=8)
mlp[2] = LinearWithLoRA(mlp[2], r=4, alpha=8)
trainable = sum(p.numel() for p in mlp.parameters() if p.requires_grad)
total = sum(p.numel() for p in mlp.parameters())
print(f"trainable: {trainable} of {total} parameters")
print("after LoRA training:", train(mlp, steps))

# %% [markdown]
# ## The same with lorakit
# `add_lora` wraps the named modules (here the `nn.Sequential` indices "0" and "2"), freezes the rest, and
# merges the update into `W0` on request, after which inference costs nothing extra.

# %%
from lorakit import LoraConfig, add_lora, merge_and_unload, parameter_report

model = add_lora(make_mlp(), LoraConfig(r=4, alpha=8, target_modules=["0", "2"]))
print(parameter_report(model).table())  # one row per trainable tensor
print(parameter_report(model))  # PEFT's line: trainable params || all params || trainable%
accuracy = train(model, steps)
print("lorakit LoRA accuracy:", accuracy)
with torch.no_grad():
    before = model(x)
    merged = merge_and_unload(model)  # a plain nn.Sequential of nn.Linear again
    print("merged == adapted:", torch.allclose(merged(x), before, atol=1e-5), type(merged[0]).__name__)
assert accuracy > 0.8
