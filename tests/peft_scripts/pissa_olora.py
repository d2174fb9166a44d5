"""PiSSA and OLoRA initialisations: the adapted model starts as the base model, then trains."""
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peft import LoraConfig, get_peft_model

ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(11))
results = {}
for init in ["pissa", "olora"]:
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64))
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, init_lora_weights=init, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        start = model(input_ids=ids).logits
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    results[init] = {"starts_as_base": torch.allclose(start, before, atol=1e-4), "after": after[0, -1, :6].tolist()}
print(json.dumps(results))
