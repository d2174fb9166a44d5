"""Several adapters on one base: load them by name, switch with set_adapter, mix them per row with adapter_names=."""
import json
import os
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peft import LoraConfig, PeftModel, get_peft_model

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=40, max_position_embeddings=64)
work = tempfile.mkdtemp()


def base():
    torch.manual_seed(0)
    return LlamaForCausalLM(CONFIG).eval()


ids = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(4))
for i, (name, targets) in enumerate([("math", ["q_proj", "v_proj"]), ("code", ["k_proj", "o_proj", "down_proj"])]):
    trained = get_peft_model(base(), LoraConfig(r=4 + 2 * i, lora_alpha=8, target_modules=targets))
    opt = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        trained(input_ids=ids.roll(i, 1), labels=ids.roll(i, 1)).loss.backward()
        opt.step()
        opt.zero_grad()
    trained.save_pretrained(os.path.join(work, name))

model = PeftModel.from_pretrained(base(), os.path.join(work, "math"), adapter_name="math")
model.load_adapter(os.path.join(work, "code"), adapter_name="code")
out = {"adapters": sorted(model.peft_config), "active": model.active_adapter}
with torch.no_grad():
    math_logits = model(input_ids=ids).logits
    model.set_adapter("code")
    out["active_after_set"] = model.active_adapter
    code_logits = model(input_ids=ids).logits
    mixed = model(input_ids=ids, adapter_names=["math", "code", "__base__"]).logits
    with model.disable_adapter():
        plain = model(input_ids=ids).logits
out["rows_match"] = [torch.allclose(mixed[0], math_logits[0], atol=1e-5), torch.allclose(mixed[1], code_logits[1], atol=1e-5),
                     torch.allclose(mixed[2], plain[2], atol=1e-5)]
out["math"] = math_logits[0, -1, :6].tolist()
out["code"] = code_logits[1, -1, :6].tolist()
out["mixed"] = mixed[:, -1, :4].tolist()
prompt = ids[:, :4]
out["generated"] = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                                  do_sample=False, pad_token_id=0, adapter_names=["code", "__base__", "math"]).tolist()
model.delete_adapter("math")
out["after_delete"] = sorted(model.peft_config)
print(json.dumps(out))
