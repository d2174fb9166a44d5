"""add_weighted_adapter: two adapters combined linearly, by concatenation and by SVD."""
import json
import os
import tempfile

import torch
from transformers import BertConfig, BertModel

from peft import LoraConfig, PeftModel, get_peft_model

work = tempfile.mkdtemp()


def base():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


ids = torch.randint(5, 80, (2, 9), generator=torch.Generator().manual_seed(2))
for i, name in enumerate(["first", "second"]):
    model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.cos(torch.arange(p.numel(), dtype=torch.float) * (i + 1)).reshape(p.shape))
    model.save_pretrained(os.path.join(work, name))

model = PeftModel.from_pretrained(base(), os.path.join(work, "first"), adapter_name="first")
model.load_adapter(os.path.join(work, "second"), adapter_name="second")
out = {}
for kind in ["linear", "cat", "svd"]:
    model.add_weighted_adapter(["first", "second"], [0.6, 0.4], adapter_name=kind, combination_type=kind)
    model.set_adapter(kind)
    with torch.no_grad():
        out[kind] = model(input_ids=ids).last_hidden_state[0, :2, :6].tolist()
    out[kind + "_r"] = model.peft_config[kind].r
print(json.dumps(out))
