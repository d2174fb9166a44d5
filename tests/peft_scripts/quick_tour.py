"""Quick tour: wrap a causal LM with get_peft_model, count what trains, save, and reload with AutoPeftModel."""
import json
import os
import sys
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peft import AutoPeftModelForCausalLM, LoraConfig, TaskType, get_peft_model

work = tempfile.mkdtemp()
torch.manual_seed(0)
base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64))
base.save_pretrained(os.path.join(work, "base"))
base = LlamaForCausalLM.from_pretrained(os.path.join(work, "base"))

peft_config = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.0)
model = get_peft_model(base, peft_config)
model.print_trainable_parameters()

ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
model.train()
for _ in range(3):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits

model.save_pretrained(os.path.join(work, "adapter"))
files = sorted(f for f in os.listdir(os.path.join(work, "adapter")) if f.endswith((".json", ".safetensors")))
with open(os.path.join(work, "adapter", "adapter_config.json")) as f:
    saved = json.load(f)

reloaded = AutoPeftModelForCausalLM.from_pretrained(os.path.join(work, "adapter"))
with torch.no_grad():
    again = reloaded(input_ids=ids).logits
print(json.dumps({"loss": loss.item(), "logits": logits[0, :3, :5].tolist(), "files": files,
                  "r": saved["r"], "lora_alpha": saved["lora_alpha"], "task_type": saved["task_type"],
                  "target_modules": sorted(saved["target_modules"]), "reloaded": again[0, :3, :5].tolist(),
                  "reloaded_class": type(reloaded).__name__, "training": reloaded.training,
                  "trainable_after_reload": sum(p.numel() for p in reloaded.parameters() if p.requires_grad)}))
