"""Sequence classification with transformers.Trainer: LoRA on BERT, the classifier head trained in full."""
import json
import os
import tempfile

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from peft import LoraConfig, TaskType, get_peft_model

torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=37, num_labels=2,
                                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
model = get_peft_model(model, config)
model.print_trainable_parameters()

g = torch.Generator().manual_seed(1)
ids = torch.randint(5, 80, (32, 12), generator=g)
labels = (ids[:, 0] > 40).long()
data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 32, "labels": labels.tolist()})

out = tempfile.mkdtemp()
args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, learning_rate=5e-3, max_steps=4,
                         save_steps=4, logging_steps=1, report_to=[], seed=7, use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=data)
result = trainer.train()
checkpoint = os.path.join(out, "checkpoint-4")
listing = os.listdir(checkpoint)

model.eval()
with torch.no_grad():
    logits = model(input_ids=ids[:4], attention_mask=torch.ones(4, 12, dtype=torch.long)).logits
print(json.dumps({"train_loss": result.training_loss, "logits": logits.tolist(),
                  "adapter_saved": "adapter_model.safetensors" in listing and "adapter_config.json" in listing,
                  "full_model_saved": "model.safetensors" in listing,
                  "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}))
