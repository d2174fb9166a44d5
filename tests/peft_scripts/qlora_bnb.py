"""QLoRA the PEFT way: a 4-bit NF4 base from BitsAndBytesConfig, prepare_model_for_kbit_training, LoRA on top."""
import json
import tempfile

import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

torch.manual_seed(0)
checkpoint = tempfile.mkdtemp()
LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=128)).save_pretrained(checkpoint)
bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
model = LlamaForCausalLM.from_pretrained(checkpoint, quantization_config=bnb_config)
model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                    bias="none", task_type="CAUSAL_LM")
model = get_peft_model(model, config)
model.print_trainable_parameters()

ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-2)
model.train()
steps = []
while len(steps) < 3:
    output = model(input_ids=ids, labels=ids)
    optimizer.zero_grad()
    output.loss.backward()
    optimizer.step()
    steps.append(output.loss.item())
with torch.no_grad():
    logits = model(input_ids=ids).logits
print(json.dumps({"steps": steps, "logits": logits[0, -1, :8].tolist(),
                  "counts": list(model.get_nb_trainable_parameters())}))
