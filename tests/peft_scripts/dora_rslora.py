"""DoRA and rsLoRA: the same few training steps with use_dora=True and with use_rslora=True."""
import json

import torch
from transformers import BertConfig, BertForSequenceClassification

from peft import LoraConfig, TaskType, get_peft_model

ids = torch.randint(5, 80, (8, 10), generator=torch.Generator().manual_seed(5))
labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
out = {}
for name, extra in [("dora", {"use_dora": True}), ("rslora", {"use_rslora": True}), ("both", {"use_dora": True, "use_rslora": True})]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=37, num_labels=2,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=16,
                                             target_modules=["query", "key", "value", "dense"], **extra))
    trainable, total = model.get_nb_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        out[name] = {"losses": losses, "logits": model(input_ids=ids[:2]).logits.tolist(), "trainable": trainable,
                     "total": total}
print(json.dumps(out))
