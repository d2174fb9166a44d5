"""Merging: merge_adapter / unmerge_adapter, merge_and_unload into a plain model, unload without merging."""
import json

import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedModel

from peft import LoraConfig, TaskType, get_peft_model


def fresh():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=37, num_labels=2)).eval()


def fill(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.sin(torch.arange(p.numel(), dtype=torch.float)).reshape(p.shape))


ids = torch.randint(5, 80, (3, 9), generator=torch.Generator().manual_seed(9))
model = get_peft_model(fresh(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules="all-linear"))
fill(model)
model.eval()
out = {}
with torch.no_grad():
    out["adapted"] = model(input_ids=ids).logits.tolist()
    model.merge_adapter()
    out["merged"] = model(input_ids=ids).logits.tolist()
    model.unmerge_adapter()
    model.disable_adapter_layers()
    out["disabled"] = model(input_ids=ids).logits.tolist()
    model.enable_adapter_layers()
    out["enabled"] = model(input_ids=ids).logits.tolist()
    plain = model.merge_and_unload(safe_merge=True)
    out["plain_class"] = type(plain).__name__
    out["plain_is_pretrained"] = isinstance(plain, PreTrainedModel)
    out["plain"] = plain(input_ids=ids).logits.tolist()
    out["plain_has_lora"] = any("lora" in n for n, _ in plain.named_parameters())
    other = get_peft_model(fresh(), LoraConfig(r=4, lora_alpha=8, target_modules=["query"]))
    fill(other)
    unloaded = other.unload()
    out["unloaded"] = unloaded(input_ids=ids).logits.tolist()
    out["unloaded_has_lora"] = any("lora" in n for n, _ in unloaded.named_parameters())
print(json.dumps(out))
