"""`lorakit serve` keeps clients apart (tracker issue 28): --adapter-root cannot be escaped (nested symlinks, a swap
between check and use), one bad request fails alone (never its batch), the limits hold (prompts, tokens, a chunked
or short body), and every error is OpenAI's JSON. One test per case that failed before.

A live server on a loopback port over a tiny random Llama with SmolLM2's tokenizer; to make batches deterministic,
a test holds the model's worker thread (`held`) while requests queue up behind it.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import transformers as tf

from helpers import LiveServer, adapter_root, random_adapter, save_tiny_bert_classifier

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from lorakit import LoraConfig  # noqa: E402
from lorakit.serve.config import ServeConfig  # noqa: E402

OK = {"model": "a", "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}


def serve_config(**settings) -> ServeConfig:
    """A ServeConfig of the settings this version of lorakit knows (the tests also ran against the old code)."""
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    return ServeConfig(**{k: v for k, v in settings.items() if k in known})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    """Adapters a and c under the root; outside it a copy of a whose config names a SECRET peft_type."""
    out = adapter_root(tmp_path_factory.mktemp("isolation"), {"a": (4, ["q_proj", "v_proj"]), "c": (2, ["o_proj"])})
    config = json.loads((out["outside"] / "adapter_config.json").read_text())
    (out["outside"] / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "SECRET-OUTSIDE"}))
    return out


@pytest.fixture(scope="module")
def server(dirs):
    cfg = serve_config(model=str(dirs["base"]), adapter=(f"a={dirs['a']}",), adapter_root=str(dirs["root"]),
                       max_tokens=8, max_batch_size=8, batch_wait_ms=50, max_request_bytes=1_000_000,
                       max_prompts=16, max_request_tokens=200, body_timeout_s=1.0)
    live = LiveServer(cfg)
    yield live
    live.stop()


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def post_raw(server, path: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def openai_error(response: httpx.Response, status: int) -> dict:
    """The response's OpenAI error object, after checking it is JSON of that shape with that status."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.text[:300]
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert response.status_code == status, (response.status_code, error)
    return error


def alone(server, body: dict) -> str:
    response = post(server, "/v1/completions", body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@contextlib.contextmanager
def held(server):
    """The model's worker thread busy until the block ends; yields how many calls wait behind it."""
    batcher = server.server_state.batcher
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(60)

    future = asyncio.run_coroutine_threadsafe(batcher.call(hold), batcher.task.get_loop())
    started.wait(30)
    try:
        yield lambda: batcher.executor._work_queue.qsize()
    finally:
        release.set()
        future.result(timeout=60)


# --- --adapter-root ---------------------------------------------------------------------------------------------

def nested_dir_link(dirs, name):
    (dirs["root"] / name).mkdir()
    (dirs["root"] / name / "adapter").symlink_to(dirs["outside"], target_is_directory=True)


def file_links(dirs, name):
    (dirs["root"] / name).mkdir()
    for file in dirs["outside"].iterdir():
        (dirs["root"] / name / file.name).symlink_to(file)


@pytest.mark.parametrize("layout", [nested_dir_link, file_links])
def test_symlinks_under_the_root_are_refused_and_quote_nothing_outside(server, dirs, layout):
    name = f"link-{layout.__name__}"
    layout(dirs, name)
    response = post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name})
    error = openai_error(response, 403)
    assert error["code"] == "path_not_allowed" and "SECRET" not in response.text


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_read(server, dirs):
    swap = dirs["root"] / "swap"
    shutil.copytree(dirs["a"], swap)
    with ThreadPoolExecutor(1) as pool, held(server) as waiting:
        load = pool.submit(post, server, "/v1/load_lora_adapter", {"lora_name": "swap", "lora_path": "swap"})
        wait_until(lambda: waiting() >= 1)  # checked; the load waits for the model thread
        swap.rename(dirs["root"] / "swapped-out")
        swap.symlink_to(dirs["outside"], target_is_directory=True)
    response = load.result(timeout=60)
    assert response.status_code == 200 and "SECRET" not in response.text, response.text  # the copy made at check
    assert alone(server, {**OK, "model": "swap"}) == alone(server, OK)  # ... is adapter a's
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "swap"}).status_code == 200


# --- one bad request fails alone --------------------------------------------------------------------------------

def batch_with(server, bad: dict, status: int) -> None:
    """Five good requests and a bad one queued into one batch: the good ones answer as alone, the bad one `status`."""
    goods = [{**OK, "prompt": f"Once upon a time {i}"} for i in range(5)]
    expected = [alone(server, g) for g in goods]
    with ThreadPoolExecutor(6) as pool:
        with held(server) as waiting:
            futures = [pool.submit(post, server, "/v1/completions", g) for g in goods]
            bad_future = pool.submit(post, server, "/v1/completions", bad)
            time.sleep(0.5)  # all six arrived (a bad one that is refused at once never queues)
            wait_until(lambda: waiting() >= 1)
        answers = [f.result(timeout=60) for f in futures]
        openai_error(bad_future.result(timeout=60), status)
    assert [r.status_code for r in answers] == [200] * 5, [r.text[:200] for r in answers]
    assert [r.json()["choices"][0]["text"] for r in answers] == expected


def test_top_p_zero_is_a_400_and_not_a_failed_batch(server):
    batch_with(server, {**OK, "temperature": 1.0, "top_p": 0}, 400)


def test_a_tiny_temperature_is_a_400_and_not_a_failed_batch(server):
    batch_with(server, {**OK, "temperature": 1e-300}, 400)


def scaled_adapter(dirs, name: str, value: float) -> None:
    """Adapter a with every lora_B entry set to `value`, under the root as `name`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(dirs["a"], dirs["root"] / name)
    weights = dirs["root"] / name / "adapter_model.safetensors"
    save_file({k: v.fill_(value) if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)


def test_a_row_whose_sampling_is_not_finite_fails_alone(server, monkeypatch):
    from lorakit.serve import generate

    sample = generate.sample_top_p

    def nan_for_one_row(logits, temperature, top_p, generator):  # as if the model gave that row NaN logits
        return sample(logits * float("nan") if temperature == 1.25 else logits, temperature, top_p, generator)

    monkeypatch.setattr(generate, "sample_top_p", nan_for_one_row)
    batch_with(server, {**OK, "temperature": 1.25, "seed": 1}, 500)


@pytest.mark.parametrize("name, value", [("nan", float("nan")), ("huge", 3e38)])
def test_an_adapter_with_nan_or_overflowing_weights_is_refused_at_load(server, dirs, name, value):
    scaled_adapter(dirs, name, value)  # 0 x NaN (or x inf) in a mixed batch's masked product would reach other rows
    openai_error(post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name}), 400)


@pytest.mark.parametrize("declared", [{"modules_to_save": ["model.norm"]}, {"bias": "all"}])
def test_an_adapter_that_trains_a_shared_base_module_is_refused(server, dirs, declared):
    """Declared, so the loader accepts it; but the first adapter on a model trains such modules in place, where
    the base rows and the other tenants would compute with them."""
    before = alone(server, OK)  # another tenant's answer
    name = "shares-" + "-".join(declared)
    random_adapter(dirs["base"], dirs["root"] / name, tf.AutoModelForCausalLM,
                   LoraConfig(r=2, target_modules=["q_proj"], **declared), 6, "instruct")
    error = openai_error(post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name}), 400)
    assert "every client" in error["message"]
    assert alone(server, OK) == before


def test_a_dora_adapter_is_refused_at_load_not_failing_every_batch(server, dirs):
    random_adapter(dirs["base"], dirs["root"] / "dora", tf.AutoModelForCausalLM,
                   LoraConfig(r=2, target_modules=["k_proj"], use_dora=True), 5, "instruct")  # no other adapter there
    response = post(server, "/v1/load_lora_adapter", {"lora_name": "dora", "lora_path": "dora"})
    if response.status_code == 200:  # loaded: then its requests and every batch they join fail
        batch_with(server, {**OK, "model": "dora"}, 400)
    assert "DoRA" in openai_error(response, 400)["message"], response.text
    assert alone(server, OK)  # the others go on


def test_unloading_an_adapter_fails_only_its_queued_requests(server):
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "c", "lora_path": "c"}).status_code == 200
    goods = [{**OK, "prompt": f"Once upon a time {i}"} for i in range(5)]
    expected = [alone(server, g) for g in goods]
    with ThreadPoolExecutor(7) as pool:
        with held(server) as waiting:
            unload = pool.submit(post, server, "/v1/unload_lora_adapter", {"lora_name": "c"})
            wait_until(lambda: waiting() >= 1)  # the unload waits for the model thread; c is still loaded
            futures = [pool.submit(post, server, "/v1/completions", g) for g in goods]
            gone = pool.submit(post, server, "/v1/completions", {**OK, "model": "c"})
            time.sleep(0.5)  # all six arrived while c was still loaded
            wait_until(lambda: waiting() >= 2)  # the batch waits behind the unload
        assert unload.result(timeout=60).status_code == 200
        answers = [f.result(timeout=60) for f in futures]
        openai_error(gone.result(timeout=60), 404)
    assert [r.status_code for r in answers] == [200] * 5, [r.text[:200] for r in answers]
    assert [r.json()["choices"][0]["text"] for r in answers] == expected


# --- limits -----------------------------------------------------------------------------------------------------

def test_prompts_per_request_are_bounded(server):
    response = post(server, "/v1/completions", {**OK, "prompt": ["Once"] * 200, "max_tokens": 1})
    openai_error(response, 400)


def test_tokens_per_request_are_bounded(server):
    body = {**OK, "prompt": ["Once upon a time " * 5] * 10, "max_tokens": 8}  # 10 x (20 + 8) tokens, over 200
    assert "tokens" in openai_error(post(server, "/v1/completions", body), 400)["message"]


def raw_exchange(server, head: bytes, body_parts, timeout: float = 8.0) -> bytes:
    """Send a hand-made HTTP request (the body in parts, left unfinished) and read what comes back."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):
            for part in body_parts:
                sock.sendall(part)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer


def test_a_chunked_body_is_counted_while_it_is_read(server):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    part = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    answer = raw_exchange(server, head, [part] * 20)  # 1.3 MB over the 1 MB limit, and the body never ends
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_shorter_than_its_content_length_times_out(server):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    answer = raw_exchange(server, head, [b'{"model": "a"'])
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


# --- JSON errors, never a plain-text 500 ------------------------------------------------------------------------

def test_a_nul_in_lora_path_is_a_json_400(server):
    openai_error(post(server, "/v1/load_lora_adapter", {"lora_name": "n", "lora_path": "a\u0000b"}), 400)


@pytest.mark.parametrize("content", ["null", "[]"])
def test_an_adapter_config_that_is_not_an_object_is_a_json_400(server, dirs, content):
    name = f"config-{len(content)}"
    shutil.copytree(dirs["a"], dirs["root"] / name)
    (dirs["root"] / name / "adapter_config.json").write_text(content)
    openai_error(post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name}), 400)


@pytest.mark.parametrize("content", ['{"task": ', '{"config": []}', '{"task": 5}', '{"config": {"max_length": "x"}}'])
def test_a_malformed_run_record_is_a_json_400(server, dirs, content):
    name = f"record-{len(content)}"
    shutil.copytree(dirs["a"], dirs["root"] / name)
    (dirs["root"] / name / "lorakit.json").write_text(content)
    openai_error(post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name}), 400)


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", b'{"model": "a", "prompt": "", "max_tokens": 1}'),
    ("/v1/completions", b'{"model": "a", "prompt": "a \\ud800 b", "max_tokens": 1}'),
    ("/v1/chat/completions", b'{"model": "a", "messages": [{"role": "user", "content": "hi"}, '
                             b'{"role": "assistant", "content": "hello"}], "max_tokens": 1}'),
    ("/v1/completions", b"[" * 100_000 + b"]" * 100_000),
    ("/v1/completions", b'{"model": "a", "prompt": "x", "seed": ' + b"7" * 5000 + b"}"),
], ids=["empty-prompt", "lone-surrogate", "assistant-last", "deep-nesting", "huge-integer"])
def test_malformed_inputs_are_json_400s(server, route, body):
    openai_error(post_raw(server, route, body), 400)


def test_a_classifier_adapter_with_a_negative_max_length_is_refused_at_load(tmp_path, minilm_path):
    base = save_tiny_bert_classifier(tmp_path / "base", minilm_path)
    adapter = random_adapter(base, tmp_path / "root" / "neg", tf.AutoModelForSequenceClassification,
                             LoraConfig(r=2, target_modules=["query"]), 1, "sst2")
    record = json.loads((adapter / "lorakit.json").read_text())
    (adapter / "lorakit.json").write_text(json.dumps({**record, "config": {"max_length": -5}}))
    live = LiveServer(serve_config(model=str(base), task="sst2", adapter_root=str(tmp_path / "root")))
    try:
        loaded = post(live, "/v1/load_lora_adapter", {"lora_name": "neg", "lora_path": "neg"})
        if loaded.status_code == 200:  # the old code loaded it: then every classify failed
            openai_error(post(live, "/v1/classify", {"model": "neg", "input": ["fine"]}), 400)
        openai_error(loaded, 400)
        assert post(live, "/v1/classify", {"model": str(base), "input": ["fine"]}).status_code == 200
    finally:
        live.stop()
