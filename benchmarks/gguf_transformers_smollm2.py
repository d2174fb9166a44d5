"""SmolLM2 + a seeded random all-linear LoRA exported as GGUF (f16 and the base file's own types), read back by
transformers: logits, 32 greedy tokens, tokenizer and chat template.
    PYTHONPATH=src python benchmarks/gguf_transformers_smollm2.py"""
import copy, time, torch, transformers as tf
from lorakit import LoraConfig, add_lora, merge_and_unload
from lorakit.models.gguf import find_smollm2_gguf, smollm2_dir
from lorakit.export.gguf_export import write_merged_gguf, write_lora_gguf
torch.set_num_threads(1)
t0=time.time()
tok = tf.AutoTokenizer.from_pretrained(smollm2_dir()); base = tf.AutoModelForCausalLM.from_pretrained(smollm2_dir()).eval()
model = add_lora(copy.deepcopy(base), LoraConfig(r=8, alpha=16, target_modules="all-linear"))
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, p in model.named_parameters():
        if ".lora_B." in n: p.copy_(torch.randn(p.shape, generator=g) * 0.02)
merged = merge_and_unload(copy.deepcopy(model)).eval()
src = find_smollm2_gguf()
for typ in ("f16", "base"):
    t=time.time(); write_merged_gguf(merged, tok, f"/tmp/i20smol/m-{typ}.gguf", typ, base_gguf=src); print(typ, "write s", round(time.time()-t))
write_lora_gguf(model, "/tmp/i20smol/lora.gguf")
ids = tok.apply_chat_template([{"role":"user","content":"Write a Python function that reverses a string."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
ref = merged.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
bt = base.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
print("adapter changes output:", not torch.equal(ref, bt))
back = tf.AutoModelForCausalLM.from_pretrained("/tmp/i20smol", gguf_file="m-f16.gguf").eval()
with torch.no_grad():
    d = (back(ids).logits - merged(ids).logits).abs().max().item()
gb = back.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
print("f16 max logit diff", d, "greedy equal", torch.equal(gb, ref), (gb==ref).sum().item())
tb = tf.AutoTokenizer.from_pretrained("/tmp/i20smol", gguf_file="m-f16.gguf")
print("tokenizer same ids", tb("Hello, world! def f(x):").input_ids == tok("Hello, world! def f(x):").input_ids, "chat template same", tb.chat_template == tok.chat_template)
import gguf
r = gguf.GGUFReader("/tmp/i20smol/m-base.gguf")
from collections import Counter; print("base types", Counter(t.tensor_type.name for t in r.tensors), r.fields["general.file_type"].contents())
print("total", round(time.time()-t0))
