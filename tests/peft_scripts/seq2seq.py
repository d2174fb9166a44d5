"""Seq2seq: LoRA on a T5 model's attention, a few training steps, then generate."""
import json

import torch
from transformers import T5Config, T5ForConditionalGeneration

from peft import LoraConfig, TaskType, get_peft_model

torch.manual_seed(0)
model = T5ForConditionalGeneration(T5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4,
                                            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
peft_config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.0)
model = get_peft_model(model, peft_config)
model.print_trainable_parameters()

source = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]])
target = torch.tensor([[8, 7, 6, 5, 1], [12, 11, 10, 9, 1]])
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
history = []
for epoch in range(4):
    model.train()
    output = model(input_ids=source, labels=target)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    history.append(output.loss.item())
model.eval()
generated = model.generate(input_ids=source, max_new_tokens=6, do_sample=False)
print(json.dumps({"history": history, "generated": generated.tolist(),
                  "targets": sorted(model.peft_config["default"].target_modules)}))
