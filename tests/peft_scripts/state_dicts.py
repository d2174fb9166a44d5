"""The low-level API: get_peft_model_state_dict, set_peft_model_state_dict and inject_adapter_in_model."""
import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict


def fresh():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"])
source = get_peft_model(fresh(), config)
with torch.no_grad():
    for n, p in source.named_parameters():
        if "lora_" in n:
            p.copy_(0.05 * torch.cos(torch.arange(p.numel(), dtype=torch.float)).reshape(p.shape))
state = get_peft_model_state_dict(source)
ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])

target = get_peft_model(fresh(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
result = set_peft_model_state_dict(target, state)
injected = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]), fresh())
with torch.no_grad():
    out = {"keys": sorted(state), "shapes": [list(state[k].shape) for k in sorted(state)],
           "unexpected": list(result.unexpected_keys),
           "source": source(input_ids=ids).logits[0, -1, :6].tolist(),
           "target": target(input_ids=ids).logits[0, -1, :6].tolist(),
           "injected_trainable": sum(p.numel() for p in injected.parameters() if p.requires_grad),
           "injected_is_plain": type(injected).__name__}
print(json.dumps(out))
