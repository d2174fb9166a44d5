"""`lorakit serve` under load: concurrent clients (mixed-adapter batches) against the same requests one at a time.

    .venv/bin/python benchmarks/serve_load.py                       # SmolLM2, 4 adapters, 200 requests, 8 clients
    .venv/bin/python benchmarks/serve_load.py --requests 80 --rounds 2 --threads 2

The server is `lorakit serve` in its own process on a free loopback port, with SmolLM2-135M-Instruct and four
random non-zero LoRA adapters written by this script (save_adapter; ranks 4, 8, 8, 16 on different layers), so
that every request really runs an adapter. The requests: `--requests` chat completions, adapters in turn (one in
four each), prompts from a fixed list, greedy, max_tokens `--max-tokens`. Each round sends them with `--clients`
concurrent clients (official `openai` client, one thread each), then the same requests one at a time; rounds
alternate the two. Reported: wall time, requests/s, generated tokens/s, p50 / p99 latency, failures (any
exception or a wrong token count; there must be none).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lorakit") is None:
    sys.path.insert(0, str(ROOT / "src"))  # the repository's lorakit when none is installed or on PYTHONPATH
ADAPTERS = {"r4-qv": (4, ["q_proj", "v_proj"]), "r8-qv": (8, ["q_proj", "v_proj"]),
            "r8-mlp": (8, ["gate_proj", "up_proj", "down_proj"]), "r16-all": (16, "all-linear")}
PROMPTS = ["Name three colours.", "What is the capital of France?", "Write a haiku about the sea.",
           "Give me a tip for learning Python.", "What is 12 times 7?", "Describe a cat in one sentence.",
           "Suggest a name for a bakery.", "Why is the sky blue?"]


def write_adapters(directory: Path) -> dict[str, Path]:
    import torch
    import transformers as tf

    from lorakit import LoraConfig, add_lora, save_adapter
    from lorakit.models.loading import quiet_transformers, resolve_model_path

    out = {}
    for seed, (name, (r, targets)) in enumerate(ADAPTERS.items()):
        with quiet_transformers():
            model = tf.AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2"))
        add_lora(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        save_adapter(model, directory / name)
        (directory / name / "lorakit.json").write_text(json.dumps({"base_model": "smollm2", "task": "instruct"}))
        out[name] = directory / name
    return out


def start_server(adapters: dict[str, Path], args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lorakit", "serve", "--model", "smollm2", "--port", "0",
           "--threads", str(args.threads), "--max-batch-size", str(args.clients), "--max-queue", "256",
           *[a for name, path in adapters.items() for a in ("--adapter", f"{name}={path}")]]
    import lorakit

    src = Path(lorakit.__file__).parents[1]  # the lorakit this script imports (the repository's src/ first)
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"the server did not start: {line!r}")
    return process, "http://" + line.split("http://")[1].split()[0].rstrip("/")


def one_request(client, name: str, prompt: str, max_tokens: int) -> tuple[float, int, bool]:
    """(latency s, generated tokens, ok)."""
    start = time.perf_counter()
    try:
        answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0)
        tokens = answer.usage.completion_tokens
        ok = 0 < tokens <= max_tokens and answer.choices[0].finish_reason in ("stop", "length")
    except Exception:  # noqa: BLE001 - counted as a failure
        tokens, ok = 0, False
    return time.perf_counter() - start, tokens, ok


def run_mode(url: str, requests: list[tuple[str, str]], clients: int, max_tokens: int) -> dict:
    import openai

    pool_clients = [openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600) for _ in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda ir: one_request(pool_clients[ir[0] % clients], *ir[1], max_tokens),
                                enumerate(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    return {"wall_s": wall, "requests_per_s": len(requests) / wall,
            "tokens_per_s": sum(r[1] for r in results) / wall, "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "failures": sum(not r[2] for r in results), "requests": len(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = write_adapters(Path(tmp))
        names = list(adapters)
        requests = [(names[i % len(names)], PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
        process, url = start_server(adapters, args)
        try:
            run_mode(url, requests[:8], args.clients, 2)  # warm-up, not counted
            modes = {f"{args.clients} concurrent clients": args.clients, "one at a time": 1}
            results = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode, clients in modes.items():
                    results[mode].append(run_mode(url, requests, clients, args.max_tokens))
                    print(mode, json.dumps(results[mode][-1]), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=120)
    print(f"\n{args.requests} requests over {len(names)} adapters, max_tokens {args.max_tokens}, greedy; "
          f"median over {args.rounds} round(s)\n")
    print("| mode | wall (s) | requests/s | generated tokens/s | p50 latency (s) | p99 latency (s) | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        failed = sum(r["failures"] for r in rounds)
        print(f"| {mode} | {med['wall_s']:.1f} | {med['requests_per_s']:.2f} | {med['tokens_per_s']:.1f} | "
              f"{med['p50_s']:.2f} | {med['p99_s']:.2f} | {failed} of {args.requests * args.rounds} |")
    first, second = (statistics.median(r["requests_per_s"] for r in rounds) for rounds in results.values())
    print(f"\nthroughput, concurrent / one at a time: {first / second:.2f}x")


if __name__ == "__main__":
    main()
