"""Causal LM: train a LoRA on GPT-2 for a few steps, then generate greedily."""
import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peft import LoraConfig, get_peft_model

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj"],
                                         fan_in_fan_out=True, task_type="CAUSAL_LM"))
model.print_trainable_parameters()

batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])}
batch["labels"] = batch["input_ids"].clone()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
model.train()
losses = []
for step in range(5):
    outputs = model(**batch)
    outputs.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(outputs.loss.item())

model.eval()
prompt = torch.tensor([[1, 2, 3]])
tokens = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                        pad_token_id=0)
with model.disable_adapter():
    plain = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                           do_sample=False, pad_token_id=0)
print(json.dumps({"losses": losses, "tokens": tokens[0].tolist(), "base_tokens": plain[0].tolist()}))
