"""The one-adapter path before and after a change: a training step of six 384 x 384 LoRA layers (r 8, 8 x 16 tokens,
one thread, forward + backward + SGD), median of 7 x 300 steps, printed in microseconds. Run it once per source tree
in separate processes, alternating, e.g. against an older commit unpacked with `git archive`:

    mkdir -p /tmp/oldsrc && git archive 99156ec src | tar -x -C /tmp/oldsrc
    for r in 1 2 3; do for p in /tmp/oldsrc/src src; do PYTHONPATH=$p .venv/bin/python benchmarks/one_adapter_step.py; done; done
"""
import statistics
import time

import torch
from torch import nn

from lorakit import LoraConfig, add_lora


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(384, 384) for _ in range(6)])
    add_lora(model, LoraConfig(r=8, alpha=16, target_modules=[str(i) for i in range(6)]))
    x = torch.randn(8, 16, 384)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(50):
        step()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(300):
            step()
        times.append((time.perf_counter() - start) / 300 * 1e6)
    print(f"{statistics.median(times):.1f}")


if __name__ == "__main__":
    main()
