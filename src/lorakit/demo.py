"""`make demo`: LoRA on MiniLM (query + value, r = 8), its parameter table, and a merge check."""
from __future__ import annotations

import torch

from .config import LoraConfig
from .inject import add_lora, disable_lora, merge_and_unload, merge_lora, unmerge_lora
from .models import load_classifier
from .params import parameter_report


def run_demo() -> int:
    torch.manual_seed(0)
    model, tokenizer = load_classifier("minilm", num_labels=2)
    model.eval()
    add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    report = parameter_report(model)
    print("MiniLM-L6 (all-MiniLM-L6-v2) with LoRA r=8 on query and value\n")
    print(report.table())
    print(report.summary(), "\n")
    with torch.no_grad():  # pretend training happened: non-zero B
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    batch = tokenizer(["a gripping, beautifully acted film", "flat and lifeless"], return_tensors="pt", padding=True)
    with torch.no_grad():
        adapted = model(**batch).logits
        with disable_lora(model):
            base = model(**batch).logits
        merge_lora(model)
        merged = model(**batch).logits
        unmerge_lora(model)
        plain = merge_and_unload(model)(**batch).logits
    print(f"adapter changes the logits by up to      {(adapted - base).abs().max().item():.3e}")
    print(f"merged vs unmerged, max |difference|:    {(merged - adapted).abs().max().item():.3e}")
    print(f"merge_and_unload vs adapted, max |diff|: {(plain - adapted).abs().max().item():.3e}")
    ok = (merged - adapted).abs().max() < 1e-4 and (plain - adapted).abs().max() < 1e-4
    print("merge check:", "OK" if ok else "FAILED")
    return 0 if ok else 1
