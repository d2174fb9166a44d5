"""modules_to_save: train a layer norm and the head in full beside LoRA on a token classifier; save and reload."""
import json
import os
import tempfile

import torch
from safetensors.torch import load_file
from transformers import RobertaConfig, RobertaForTokenClassification

from peft import LoraConfig, PeftModel, TaskType, get_peft_model


def base():
    torch.manual_seed(0)
    return RobertaForTokenClassification(RobertaConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=37, num_labels=3,
                                                       max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0))


config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=4, lora_alpha=4, target_modules=["query", "value"],
                    modules_to_save=["encoder.layer.1.output.LayerNorm"], bias="lora_only")
model = get_peft_model(base(), config)
model.print_trainable_parameters()
ids = torch.randint(5, 80, (4, 7), generator=torch.Generator().manual_seed(6))
labels = torch.randint(0, 3, (4, 7), generator=torch.Generator().manual_seed(7))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
for _ in range(3):
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits
work = tempfile.mkdtemp()
model.save_pretrained(work)
keys = sorted(load_file(os.path.join(work, "adapter_model.safetensors")))
reloaded = PeftModel.from_pretrained(base(), work)
with torch.no_grad():
    again = reloaded(input_ids=ids).logits
print(json.dumps({"counts": list(model.get_nb_trainable_parameters()), "logits": logits[0, :3].tolist(),
                  "keys": keys, "reloaded": again[0, :3].tolist(), "class": type(reloaded).__name__}))
