"""llama.cpp itself reads lorakit's GGUF files: greedy tokens from the merged GGUF, and from base GGUF + LoRA GGUF,
against transformers' greedy tokens from the merged model (SmolLM2-135M-Instruct, a seeded random LoRA on all linear
layers, 32 new tokens after a chat prompt).

    python benchmarks/gguf_llamacpp.py --llamacpp-python /tmp/llamacpp-venv/python [--out /tmp/gguf-bench]

llama.cpp comes from the `llama-cpp-py-sync` wheel (llama.cpp b11739 prebuilt for CPU, CFFI bindings to llama.h) in
a virtualenv of its own: `bash benchmarks/llamacpp_venv.sh /tmp/llamacpp-venv` installs it (and, on glibc < 2.38 such
as Debian 12's, fixes its libraries) and writes /tmp/llamacpp-venv/python, the interpreter for --llamacpp-python.
It is not a lorakit dependency (`llama-cpp-python` has no wheel on PyPI: it compiles llama.cpp, long on 2 cores).
The llama.cpp side runs in that interpreter (a subprocess); tokens are compared as ids, the prompt is tokenized once
by transformers and given to both. Prints a Markdown block for benchmarks/results/gguf.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import textwrap
import time
from pathlib import Path

import torch
import transformers as tf

from lorakit import LoraConfig, add_lora, merge_and_unload
from lorakit.models.gguf import find_smollm2_gguf, smollm2_dir
from lorakit.export.gguf_export import write_lora_gguf, write_merged_gguf

NEW_TOKENS = 32
PROMPTS = ["Write a Python function that reverses a string.", "Name three colours.",
           "Explain in one sentence what a LoRA adapter is."]

LLAMA_SIDE = textwrap.dedent("""
    # llama.cpp's own C API (llama.h) through llama-cpp-py-sync's CFFI bindings: load, attach the LoRA GGUF with
    # llama_adapter_lora_init + llama_set_adapters_lora (what llama-cli --lora does), decode the prompt, then argmax
    import json, sys
    from llama_cpp_py_sync._cffi_bindings import get_ffi, get_lib
    ffi, lib = get_ffi(), get_lib()
    job = json.loads(sys.argv[1])
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(job["model"].encode(), lib.llama_model_default_params())
    assert model != ffi.NULL, "llama.cpp could not load " + job["model"]
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 512, 512, 512, 2, 2
    ctx = lib.llama_init_from_model(model, params)
    if job.get("lora"):
        adapter = lib.llama_adapter_lora_init(model, job["lora"].encode())
        assert adapter != ffi.NULL, "llama.cpp could not load the LoRA " + job["lora"]
        assert lib.llama_set_adapters_lora(ctx, ffi.new("struct llama_adapter_lora *[1]", [adapter]), 1,
                                           ffi.new("float[1]", [1.0])) == 0
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    tokens, out = list(job["prompt"]), []
    while len(out) < job["n"]:
        buf = ffi.new("llama_token[]", tokens)
        assert lib.llama_decode(ctx, lib.llama_batch_get_one(buf, len(tokens))) == 0
        logits = lib.llama_get_logits_ith(ctx, -1)
        best = max(range(n_vocab), key=lambda i: logits[i])
        out.append(best)
        tokens = [best]
    print(json.dumps(out))
""")


def llama_cpp_tokens(python: str, model: Path, prompt: list[int], lora: Path | None = None) -> list[int]:
    job = {"model": str(model), "lora": str(lora) if lora else None, "prompt": prompt, "n": NEW_TOKENS}
    result = subprocess.run([python, "-c", LLAMA_SIDE, json.dumps(job)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llamacpp-python", required=True, help="python of the virtualenv with llama-cpp-py-sync")
    parser.add_argument("--out", default="/tmp/gguf-bench", help="directory for the GGUF files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = tf.AutoTokenizer.from_pretrained(smollm2_dir())
    base = tf.AutoModelForCausalLM.from_pretrained(smollm2_dir()).eval()
    model = add_lora(copy.deepcopy(base), LoraConfig(r=8, alpha=16, target_modules="all-linear"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a random adapter that changes the output: B ~ N(0, 0.02^2)
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    source = find_smollm2_gguf()
    files = {"lora": write_lora_gguf(model, out / "lora.gguf")}
    merged = merge_and_unload(copy.deepcopy(model)).eval()
    for kind, m in (("merged", merged), ("base", base)):
        files[kind] = write_merged_gguf(m, tokenizer, out / f"{kind}-f32.gguf", "f32", base_gguf=source)
    print("| prompt | llama.cpp run | tokens | vs transformers merged | equal tokens | text |\n|---|---|---|---|---|---|")
    for text in PROMPTS:
        compare_prompt(tokenizer, text, base, merged, files, source, args.llamacpp_python)


def compare_prompt(tokenizer, text: str, base, merged, files: dict, source: Path, python: str) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        reference = merged.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        base_tokens = base.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    runs = {"merged f32 GGUF": llama_cpp_tokens(python, files["merged"], prompt),
            "base f32 GGUF + LoRA GGUF": llama_cpp_tokens(python, files["base"], prompt, files["lora"]),
            "packaged Q4_1 base + LoRA GGUF": llama_cpp_tokens(python, source, prompt, files["lora"])}
    changed = sum(a != b for a, b in zip(base_tokens, reference))
    print(f"| {text!r} | transformers merged (vs base: {changed}/{NEW_TOKENS} tokens changed by the adapter) "
          f"| {NEW_TOKENS} | - | - | {tokenizer.decode(reference)[:50]!r} |")
    for name, tokens in runs.items():
        same = sum(a == b for a, b in zip(tokens, reference))
        print(f"| | llama.cpp {name} | {len(tokens)} | {'equal' if tokens == reference else 'differ'} "
              f"| {same}/{NEW_TOKENS} | {tokenizer.decode(tokens)[:50]!r} |")

if __name__ == "__main__":
    started = time.time()
    main()
    print(f"total {time.time() - started:.0f} s")
