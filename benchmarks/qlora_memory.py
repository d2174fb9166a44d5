"""Where the memory of a SmolLM2-135M LoRA / QLoRA training step goes (issue 18), each measurement its own process.

    python benchmarks/qlora_memory.py saved lora 1 128     # MB autograd saves in one forward, by shape and dtype
    python benchmarks/qlora_memory.py phases qlora 1 512   # RSS after load, each forward / backward / AdamW step
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/qlora_memory.py phases lora 1 512   # glibc's threshold fixed

Both build SmolLM2-135M-Instruct (`--model smollm2`'s directory) as `lorakit train` does: LoRA over the fp32
base from from_pretrained, or QLoRA over NF4 + double quant from load_quantized; LoRA all-linear r 8 alpha 8,
dropout 0.05, lorakit's CPU dropout, train mode, random token ids as inputs and labels.

saved: the distinct storages autograd keeps for backward in one forward pass (saved_tensors_hooks), the model's
own parameters and buffers excluded, summed by (shape, dtype), and the model's parameter + buffer bytes.
phases: two AdamW steps (2 threads); after each phase VmHWM, VmRSS, RssAnon and RssFile in MB from /proc/self/status.
"""
from __future__ import annotations

import sys
import time
from collections import Counter


def build(method: str):
    import transformers as tf

    from lorakit import LoraConfig, QuantConfig, add_lora, load_quantized
    from lorakit.layers.dropout import fast_dropout
    from lorakit.models.gguf import smollm2_dir

    path = str(smollm2_dir())
    if method == "qlora":
        model = load_quantized(path, QuantConfig(kind="nf4", double_quant=True), tf.AutoModelForCausalLM)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(path)
    memory("loaded")
    add_lora(model, LoraConfig(r=8, alpha=8, target_modules="all-linear", dropout=0.05))
    fast_dropout(model)
    return model.train()


def memory(tag: str) -> None:
    fields = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(fields))
    print(tag, {k: int(v.split()[0]) // 1024 for k, v in status.items()}, flush=True)


def saved(method: str, rows: int, length: int) -> None:
    import torch

    torch.set_num_threads(1)
    model = build(method)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}
    kinds: Counter = Counter()

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own and ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
            kinds[(tuple(t.shape), str(t.dtype))] += seen[ptr]
        return t

    ids = torch.randint(0, 49152, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss
    print(method, "saved MB", sum(seen.values()) / 2**20)
    for kind, size in kinds.most_common(12):
        print(kind, round(size / 2**20, 2))
    print("model MB", sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20)


def phases(method: str, rows: int, length: int) -> None:
    import torch

    torch.set_num_threads(2)
    memory("start")
    model = build(method)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        ids = torch.randint(0, 49152, (rows, length), generator=generator)
        began = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        memory(f"step{step} forward")
        loss.backward()
        memory(f"step{step} backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        memory(f"step{step} done {time.time() - began:.0f}s")


if __name__ == "__main__":
    command, method, rows, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    {"saved": saved, "phases": phases}[command](method, rows, length)
