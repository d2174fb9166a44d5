"""QLoRA on MiniLM: storage, peak memory and step time against LoRA and PEFT + bitsandbytes; cost of int8 adapters.

    .venv/bin/python benchmarks/qlora_bench.py bits                  # bits per base-linear parameter
    .venv/bin/python benchmarks/qlora_bench.py steps                 # peak memory + step time, 4 alternating rounds
    .venv/bin/python benchmarks/qlora_bench.py accuracy              # SST-2: fp32 vs int8 adapters (and QLoRA)
    .venv/bin/python benchmarks/qlora_bench.py steps --before-src /tmp/lorakit-head/src   # also an older lorakit

steps: one step = forward + backward + AdamW on a batch of 32 x 128 tokens, r=8, alpha=16, lora_dropout=0.1, train
mode; "qlora" = lorakit NF4 + double quant base, "peft-bnb" = transformers' BitsAndBytesConfig (nf4, double quant,
fp32 compute, classifier kept fp32: bitsandbytes 0.50 runs Linear4bit on CPU) + PEFT LoRA. Every configuration runs
in its own process, the configurations alternate round by round; s/step is the median over rounds, a ratio the
median over rounds of the ratio within a round (neighbouring runs share the machine's load of the moment: on a
shared machine single runs vary by tens of percent, the load over minutes more). "CPU s/step": process CPU time
(all threads) per step, less sensitive to other jobs than wall time. "peak MB": the process's maximum resident set
size (interpreter, libraries, model, optimizer state, activations). "saved MB": what autograd keeps for backward in
one forward pass, counted by storage, without the model's own parameters and buffers (activations and any dense
weight copies). --before-src DIR adds the QLoRA configurations once more, importing lorakit from DIR (for instance
`git worktree add /tmp/lorakit-head HEAD` before a change) to compare two implementations in the same run.

accuracy: a plain loop, no lorakit CLI: MiniLM, 4,000 SST-2 training sentences (a sample drawn with the run's seed),
LoRA all-linear r=8 alpha=8 (lorakit's default; no LoRA dropout), AdamW lr 1e-3, batch 32, max_length 64, one epoch, seeds from
--seeds (default 0); accuracy on the 872 dev sentences. Each adapter is saved, reloaded into a fresh model and
evaluated again: the reloaded predictions must equal the trained ones.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_CONFIGS = ["lora-all", "qlora-all", "peft-bnb-all", "lora-qv", "qlora-qv", "peft-bnb-qv"]
ACCURACY_CONFIGS = [
    "lora fp32 adapters", "lora int8 adapters", "qlora nf4+dq, fp32 adapters", "qlora nf4+dq, int8 adapters",
]  # fmt: skip
SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "glue"


def minilm_path() -> str:
    from lorakit.models.loading import resolve_model_path

    return resolve_model_path("minilm")


# ---------------------------------------------------------------- bits per parameter


def bits_table() -> None:
    import torch
    from transformers import AutoModel

    from lorakit import QuantConfig
    from lorakit.quant.linear import QuantLinear, quantize_model, quantized_bits_per_parameter

    settings = [
        ("nf4", QuantConfig(kind="nf4", double_quant=False)),
        ("nf4 + double quant", QuantConfig(kind="nf4", double_quant=True)),
        ("fp4", QuantConfig(kind="fp4", double_quant=False)),
        ("fp4 + double quant", QuantConfig(kind="fp4", double_quant=True)),
        ("int8 row-wise", QuantConfig(kind="int8")),
        ("int8 block-wise (64)", QuantConfig(kind="int8", int8_blockwise=True)),
    ]
    full = AutoModel.from_pretrained(minilm_path())
    full = sum(t.numel() * t.element_size() for t in [*full.parameters(), *full.buffers()]) / 2**20
    print("MiniLM-L6 (AutoModel), every nn.Linear quantized (block size 64): codes + constants, no code tables.")
    print("'whole model': all parameters and buffers (embeddings and LayerNorms stay fp32)\n")
    print("| kind | bits / parameter | quantized linear MB | fp32 linear MB | ratio | "
          f"whole model MB (fp32: {full:.1f}) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, config in settings:
        torch.manual_seed(0)
        model = quantize_model(AutoModel.from_pretrained(minilm_path()), config)
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        params = sum(m.in_features * m.out_features for m in layers)
        stored = sum(m.storage_bytes() for m in layers)
        bits = quantized_bits_per_parameter(model)
        whole = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        print(f"| {label} | {bits:.3f} | {stored / 2**20:.2f} | {4 * params / 2**20:.2f} | {32 / bits:.2f}x | "
              f"{whole / 2**20:.1f} |")  # fmt: skip
    print(f"\n{len(layers)} linear layers, {params:,} base-linear parameters")


# ---------------------------------------------------------------- peak memory and step time


def build_step_model(config: str, lora_dropout: float):
    import torch
    import transformers as tf

    targets = ["query", "value"] if config.endswith("-qv") else "all-linear"
    if config.startswith("peft-bnb"):
        import peft

        quant = tf.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["classifier"],
        )  # fmt: skip
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            minilm_path(), num_labels=2, quantization_config=quant, device_map="cpu"
        )
        cfg = peft.LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=lora_dropout, target_modules=targets
        )
        return peft.get_peft_model(model, cfg)
    from lorakit import LoraConfig, QuantConfig, add_lora
    from lorakit.quant.linear import quantize_model

    model = tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    if config.startswith("qlora"):
        quantize_model(model, QuantConfig(kind="nf4", double_quant=True))
    return add_lora(model, LoraConfig(r=8, alpha=16, dropout=lora_dropout, target_modules=targets))


def saved_for_backward_mb(model, batch) -> float:
    """MB of distinct storages autograd saves in one forward, not counting the model's parameters and buffers."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return sum(seen.values()) / 2**20


def step_worker(config: str, steps: int, lora_dropout: float) -> dict:
    import torch

    torch.manual_seed(0)
    model = build_step_model(config, lora_dropout).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (32, 128), generator=g)
    labels = torch.randint(0, 2, (32,), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times, cpu_times = [], []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        start, cpu_start = time.perf_counter(), time.process_time()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "median_s": statistics.median(times), "cpu_s": statistics.median(cpu_times), "peak_mb": peak_mb,
        "trainable": sum(p.numel() for p in params),
        "saved_mb": saved_for_backward_mb(model, batch),
    }  # fmt: skip


def steps_table(args) -> None:
    runs = [(c, None) for c in args.configs]
    if args.before_src:
        runs += [(c, args.before_src) for c in args.configs if c.startswith("qlora")]
    label = {run: run[0] + (" (before)" if run[1] else "") for run in runs}
    results: dict[tuple, list[dict]] = {run: [] for run in runs}
    for r in range(args.rounds):
        for run in runs:
            config, src = run
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            if src:
                env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            cmd = [sys.executable, __file__, "worker", "--config", config, "--steps", str(args.steps),
                   "--lora-dropout", str(args.lora_dropout)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{label[run]} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[run].append(res)
            print(f"round {r + 1}: {label[run]:22s} {res['median_s']:.3f} s/step  peak {res['peak_mb']:.0f} MB  "
                  f"saved {res['saved_mb']:.0f} MB", file=sys.stderr)  # fmt: skip
    med = {run: statistics.median(x["median_s"] for x in v) for run, v in results.items()}
    mem = {run: statistics.median(x["peak_mb"] for x in v) for run, v in results.items()}
    saved = {run: statistics.median(x["saved_mb"] for x in v) for run, v in results.items()}
    cpu = {run: statistics.median(x["cpu_s"] for x in v) for run, v in results.items()}
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nMiniLM-L6, batch 32 x 128, r=8, train mode, lora_dropout={args.lora_dropout}, "
          f"{args.rounds} alternating rounds x {args.steps} steps; s/step: median over rounds; vs: median over rounds "
          f"of the ratio within the round; load average at the end {load}\n")  # fmt: skip
    print("| configuration | trainable | s/step | vs LoRA | vs PEFT + bnb | CPU s/step | peak MB | saved MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        targets = run[0].rsplit("-", 1)[1]  # the same targets: "all" or "qv"
        ratios = []
        for peer in (f"lora-{targets}", f"peft-bnb-{targets}"):
            if (peer, None) not in results:
                ratios.append("-")
                continue
            per_round = [a["median_s"] / b["median_s"] for a, b in zip(results[run], results[(peer, None)])]
            ratios.append(f"{statistics.median(per_round):.2f}x")
        print(f"| {label[run]} | {results[run][0]['trainable']:,} | {med[run]:.3f} | {' | '.join(ratios)} | "
              f"{cpu[run]:.2f} | {mem[run]:.0f} | {saved[run]:.0f} |")  # fmt: skip


# ---------------------------------------------------------------- accuracy of int8 adapters


def read_sst2(name: str) -> list[tuple[str, int]]:
    lines = (SST2 / name).read_text().splitlines()[1:]  # header: sentence<TAB>label
    return [(s.strip(), int(y)) for s, y in (line.rsplit("\t", 1) for line in lines)]


def build_accuracy_model(config: str, seed: int):
    import torch
    import transformers as tf

    from lorakit import LoraConfig, QuantConfig, add_lora
    from lorakit.quant.linear import quantize_model

    torch.manual_seed(seed)  # the classifier head's initialisation
    model = tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    if config.startswith("qlora"):
        quantize_model(model, QuantConfig(kind="nf4", double_quant=True))
    adapter_dtype = "int8" if "int8" in config else "float32"
    torch.manual_seed(seed)  # the adapters' initialisation
    return add_lora(model, LoraConfig(r=8, alpha=8, target_modules="all-linear", adapter_dtype=adapter_dtype))


def predict(model, tokenizer, sentences: list[str], max_length: int):
    import torch

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(sentences), 128):
            chunk = sentences[i : i + 128]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            preds.append(model(**enc).logits.argmax(-1))
    return torch.cat(preds)


def accuracy_run(config: str, seed: int, n_train: int, max_length: int) -> dict:
    import torch
    import transformers as tf

    from lorakit import LoRALinear, QuantConfig, load_adapter, lora_layers, save_adapter
    from lorakit.state import adapter_state
    from lorakit.quant.linear import quantize_model

    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    train = read_sst2("train.tsv")
    random.Random(seed).shuffle(train)
    train = train[:n_train]
    dev = read_sst2("dev.tsv")
    model = build_accuracy_model(config, seed).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    for i in range(0, len(train), 32):  # one epoch, batch 32, in the sampled order
        sentences, labels = zip(*train[i : i + 32])
        enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        model(**enc, labels=torch.tensor(labels)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - start
    sentences, labels = zip(*dev)
    labels = torch.tensor(labels)
    preds = predict(model, tokenizer, list(sentences), max_length)
    rounded = None
    if adapter_state(model).config.adapter_dtype == "float32":  # the fp32 adapter rounded to int8 after training
        layers = [m for _, m in lora_layers(model) if isinstance(m, LoRALinear)]
        for layer in layers:
            layer.adapter_dtype = "int8"
        rounded = (predict(model, tokenizer, list(sentences), max_length) == labels).float().mean().item()
        for layer in layers:
            layer.adapter_dtype = "float32"
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp)
        file_bytes = (Path(tmp) / "adapter_model.safetensors").stat().st_size
        fresh = tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        if config.startswith("qlora"):
            quantize_model(fresh, QuantConfig(kind="nf4", double_quant=True))
        reloaded = predict(load_adapter(fresh, tmp), tokenizer, list(sentences), max_length)
    return {
        "accuracy": (preds == labels).float().mean().item(), "rounded_accuracy": rounded, "file_bytes": file_bytes,
        "reload_identical": bool(torch.equal(preds, reloaded)), "train_s": train_s,
    }  # fmt: skip


def accuracy_table(args) -> None:
    rows = {}
    for config in args.accuracy_configs:
        for seed in args.seeds:
            res = accuracy_run(config, seed, args.n_train, args.max_length)
            rows.setdefault(config, []).append(res)
            rounded = res["rounded_accuracy"]
            rounded = "" if rounded is None else f" (rounded to int8 after training: {rounded:.4f})"
            print(f"{config} seed {seed}: accuracy {res['accuracy']:.4f}{rounded}, adapter file {res['file_bytes']:,} "
                  f"bytes, reloaded predictions identical: {res['reload_identical']}, train {res['train_s']:.0f} s",
                  file=sys.stderr)  # fmt: skip
    print(f"\nSST-2, MiniLM-L6, LoRA all-linear r=8 alpha=8, AdamW lr 1e-3, {args.n_train} training sentences, "
          f"batch 32, max_length {args.max_length}, 1 epoch, seeds {args.seeds}; dev accuracy on 872 sentences. "
          "'fp32 rounded to int8': the trained fp32 adapters quantized per row after training (no fake-quant "
          "training)\n")  # fmt: skip
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| configuration | {seeds} | mean | fp32 rounded to int8, mean | adapter file bytes | vs fp32 file | "
          "reload identical |")  # fmt: skip
    print("|---|" + "---:|" * len(args.seeds) + "---:|---:|---:|---:|---|")
    fp32_bytes = {c: rows[c][0]["file_bytes"] for c in rows}
    for config, res in rows.items():
        peer = config.replace("int8", "fp32")
        smaller = peer in fp32_bytes and peer != config
        ratio = f"{fp32_bytes[peer] / res[0]['file_bytes']:.2f}x smaller" if smaller else "-"
        accs = " | ".join(f"{r['accuracy']:.4f}" for r in res)
        mean = statistics.mean(r["accuracy"] for r in res)
        rounded = "-"
        if res[0]["rounded_accuracy"] is not None:
            rounded = f"{statistics.mean(r['rounded_accuracy'] for r in res):.4f}"
        identical = "yes" if all(r["reload_identical"] for r in res) else "NO"
        print(f"| {config} | {accs} | {mean:.4f} | {rounded} | {res[0]['file_bytes']:,} | {ratio} | {identical} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["bits", "steps", "accuracy", "all", "worker"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=STEP_CONFIGS, choices=STEP_CONFIGS)
    ap.add_argument("--lora-dropout", type=float, default=0.1)
    ap.add_argument("--before-src", help="also run the QLoRA configurations with lorakit imported from this directory")
    ap.add_argument("--config", choices=STEP_CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--accuracy-configs", nargs="+", default=ACCURACY_CONFIGS, choices=ACCURACY_CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.part == "worker":
        print(json.dumps(step_worker(args.config, args.steps, args.lora_dropout)))
        return
    if args.part in ("bits", "all"):
        bits_table()
    if args.part in ("steps", "all"):
        steps_table(args)
    if args.part in ("accuracy", "all"):
        accuracy_table(args)


if __name__ == "__main__":
    main()
