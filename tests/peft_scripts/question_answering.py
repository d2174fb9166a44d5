"""Extractive QA: LoRA on a BERT question-answering model, qa_outputs trained in full, start and end positions."""
import json

import torch
from transformers import BertConfig, BertForQuestionAnswering

from peft import LoraConfig, TaskType, get_peft_model

torch.manual_seed(0)
model = BertForQuestionAnswering(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
model = get_peft_model(model, LoraConfig(task_type=TaskType.QUESTION_ANS, r=4, lora_alpha=8,
                                         target_modules=["query", "key", "value"]))
model.print_trainable_parameters()
ids = torch.randint(5, 80, (4, 16), generator=torch.Generator().manual_seed(12))
start, end = torch.tensor([3, 5, 2, 8]), torch.tensor([4, 9, 2, 10])
# SGD: the head's bias gets a zero gradient (a softmax ignores a shift), which Adam would turn into steps of noise
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
for _ in range(3):
    output = model(input_ids=ids, start_positions=start, end_positions=end)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    out = model(input_ids=ids)
print(json.dumps({"loss": output.loss.item(), "start": out.start_logits.argmax(-1).tolist(),
                  "end": out.end_logits.argmax(-1).tolist(), "start_logits": out.start_logits[0, :5].tolist(),
                  "trainable": model.get_nb_trainable_parameters()[0],
                  "head_trains": [n for n, p in model.named_parameters() if p.requires_grad and "qa_outputs" in n] != []}))
