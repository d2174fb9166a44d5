"""Trainer checkpoints of a LoRA model hold the adapter only; training resumes from one to the same end."""
import json
import os
import tempfile

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from peft import LoraConfig, get_peft_model

ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(8))
data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def run(out, steps, resume=None):
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, learning_rate=1e-2, max_steps=steps,
                             save_steps=2, logging_steps=1, report_to=[], seed=3, lr_scheduler_type="constant", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resume)
    model.eval()
    with torch.no_grad():
        return model, model(input_ids=ids[:2]).logits[:, -1, :6]


straight_dir, resumed_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
_, straight = run(straight_dir, 4)
run(resumed_dir, 2)
listing = os.listdir(os.path.join(resumed_dir, "checkpoint-2"))
_, resumed = run(resumed_dir, 4, resume=os.path.join(resumed_dir, "checkpoint-2"))
print(json.dumps({"straight": straight.tolist(), "resumed": resumed.tolist(),
                  "same": torch.allclose(straight, resumed, atol=1e-6),
                  "adapter_saved": "adapter_model.safetensors" in listing and "adapter_config.json" in listing,
                  "full_model_saved": "model.safetensors" in listing}))
