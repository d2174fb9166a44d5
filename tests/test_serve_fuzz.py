"""A property-based fuzz of `lorakit serve`'s HTTP API (Hypothesis): thousands of generated requests (routes, fields,
types, sizes, unicode with lone surrogates, NaN, nesting, raw bytes) and generated adapter directories under
--adapter-root (symlinks, sub-directories, extra tensor keys, damaged files), against a live server on a loopback
port over a tiny random Llama, while a steady background client asks the same greedy question over and over.

Properties: every answer is JSON (a stream: JSON events), every error OpenAI's error object, no 5xx, the background
client's every answer equals its answer alone, and the base model's weights are unchanged after every request.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import LiveServer, adapter_root

httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lorakit.serve.config import ServeConfig  # noqa: E402

REQUESTS = int(os.environ.get("LORAKIT_FUZZ_REQUESTS", 2000))  # generated HTTP requests: the API fuzz plus the adapter-directory fuzz
ADAPTER_DIRS = REQUESTS // 20  # each asks at least one request
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
SEEN: Counter = Counter()  # (test, status) of every fuzzed request, for the last test's summary
STEADY = {"model": "a", "prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory) -> dict:
    return adapter_root(tmp_path_factory.mktemp("fuzz"), {"a": (4, ["q_proj"]), "b": (2, ["v_proj"])})


class Steady(threading.Thread):
    """A client asking STEADY again and again; every answer must equal the first one, asked alone."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.client, self.url = httpx.Client(timeout=60), url
        self.expected = self.ask()
        self.stop, self.answers, self.wrong = threading.Event(), 0, []

    def ask(self) -> tuple[int, str]:
        response = self.client.post(f"{self.url}/v1/completions", json=STEADY)
        return response.status_code, response.text if response.status_code != 200 else response.json()["choices"][0][
            "text"]

    def run(self):
        while not self.stop.wait(0.1):  # steady, not flooding: the fuzz's requests share the model thread
            answer = self.ask()
            self.answers += 1
            if answer != self.expected:
                self.wrong.append(answer)


@pytest.fixture(scope="module")
def fuzzed(fuzz_dirs):
    """(the live server, a function saying whether the base weights are unchanged, the steady client)."""
    import torch

    cfg = ServeConfig(model=str(fuzz_dirs["base"]), adapter=(f"a={fuzz_dirs['a']}",), adapter_root=str(
        fuzz_dirs["root"]), max_tokens=1, max_prompts=4, max_request_tokens=400, max_request_bytes=20_000,
        body_timeout_s=2.0, batch_wait_ms=2, max_queue=256)
    server = LiveServer(cfg)
    model = server.server_state.served.model

    def base_weights() -> dict:  # by the names of the plain model (a LoRA-wrapped layer keeps its own as base_layer)
        return {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if "lora_" not in n}

    base = {n: p.detach().clone() for n, p in base_weights().items()}

    def base_unchanged() -> bool:
        now = base_weights()
        return now.keys() >= base.keys() and all(torch.equal(now[n], p) for n, p in base.items())

    steady = Steady(server.url)
    assert steady.expected[0] == 200
    steady.start()
    server.http = httpx.Client(timeout=60)  # keep-alive: the fuzz's own connection
    yield server, base_unchanged, steady
    server.http.close()
    steady.stop.set()
    steady.join(timeout=60)
    server.stop()


# --- the checks of every answer ---------------------------------------------------------------------------------

def check_answer(response: httpx.Response, test: str = "api") -> None:
    SEEN[test, response.status_code] += 1
    kind = response.headers.get("content-type", "")
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if kind.startswith("text/event-stream"):
        assert response.status_code == 200
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[len("data: "):])
                assert "error" not in event, event
        return
    assert kind.startswith("application/json"), (response.status_code, kind, response.text[:300])
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body


# --- the API fuzz -------------------------------------------------------------------------------------------------

def texts(max_size: int = 30):
    """Unicode text, lone surrogates and NULs included; one draw in ten long (1,000 to 25,000 characters)."""
    chars = st.characters(codec=None, exclude_categories=())
    short = st.one_of(st.text(chars, max_size=max_size), st.sampled_from(["Once upon a time", "hi", "", "\ud800x"]))
    long = st.builds(lambda n, c: c * n, st.integers(1000, 25_000), st.sampled_from(["a", "b ", "\u00e9"]))
    return st.integers(0, 9).flatmap(lambda k: long if k == 0 else short)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), texts(8))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(texts(6), inner, max_size=4)), max_leaves=12)
MODELS = st.one_of(st.sampled_from(["a", "b", "nope", "", "BASE"]), SCALARS)
NUMBERS = st.one_of(st.none(), st.integers(-3, 6), st.floats(-1, 3), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
                    st.sampled_from([0, 1e-300, 1e-6, 1e-5, 2**64, "1", True]), JSON)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot", 3]),
                                           "content": st.one_of(texts(), SCALARS)}), max_size=4)
PROMPTS = st.one_of(texts(), st.lists(texts(20), max_size=6), JSON)
FIELDS = {"model": MODELS, "prompt": PROMPTS, "messages": st.one_of(MESSAGES, JSON), "input": PROMPTS,
          "max_tokens": NUMBERS, "max_completion_tokens": NUMBERS, "temperature": NUMBERS, "top_p": NUMBERS,
          "seed": NUMBERS, "n": NUMBERS, "stop": st.one_of(texts(4), st.lists(texts(4), max_size=6), JSON),
          "stream": st.one_of(st.booleans(), SCALARS), "stream_options": st.one_of(
              st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), SCALARS)}), JSON),
          # never the steady client's adapter: unloading it is a legitimate request, which ends that client's answers
          "lora_name": st.one_of(st.sampled_from(["b", "z"]), SCALARS).filter(lambda name: name != STEADY["model"]),
          "lora_path": st.one_of(st.sampled_from(["b", "a", "../base", "/", "b/../b", "a\x00", "nope"]), SCALARS)}
ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/load_lora_adapter",
          "/v1/unload_lora_adapter", "/v1/models", "/health", "/v1/nothing", "/"]


TEMPLATES = {"/v1/completions": {"model": "a", "prompt": "Once upon a time", "max_tokens": 1},
             "/v1/chat/completions": {"model": "b", "messages": [{"role": "user", "content": "hi"}]},
             "/v1/classify": {"model": "a", "input": "hi"}, "/v1/load_lora_adapter": {"lora_name": "z",
                                                                                      "lora_path": "b"},
             "/v1/unload_lora_adapter": {"lora_name": "z"}}


@st.composite
def bodies(draw, path: str):
    """The route's valid body with some FIELDS changed (plus unknown keys), or other JSON, or raw bytes."""
    shape = draw(st.sampled_from(["fields"] * 6 + ["json", "raw"]))
    if shape == "raw":
        return draw(st.one_of(st.binary(max_size=200), st.sampled_from([
            b"[" * 50_000, b'{"model": "a", "prompt": "x", "seed": ' + b"9" * 5000 + b"}", b'{"model": "a"',
            b'{"a": NaN}', b"\xff\xfe{}", b"{}" + b" " * 30_000])))
    if shape == "json":
        return json.dumps(draw(JSON)).encode()
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=3))
    body = {**TEMPLATES.get(path, {}), **{name: draw(FIELDS[name]) for name in names}}
    body.update(draw(st.dictionaries(texts(6), JSON, max_size=1)))
    return json.dumps(body).encode()  # NaN and Infinity as Python writes them; lone surrogates as \\ud800


def base_named(payload: bytes, base: str) -> bytes:
    return payload.replace(b'"BASE"', json.dumps(base).encode())


@st.composite
def requests(draw):
    path = draw(st.sampled_from(ROUTES[:2] * 3 + ROUTES))
    method = draw(st.sampled_from(["GET"] * 6 + ["POST", "PUT"] if path in ROUTES[5:] else ["POST"] * 12 + ["GET"]))
    return method, path, draw(bodies(path))


@given(request=requests())
@settings(FUZZ, max_examples=REQUESTS - ADAPTER_DIRS)
def test_fuzzed_requests_get_json_answers_and_leave_the_base_and_other_clients_alone(fuzzed, fuzz_dirs, request):
    server, base_unchanged, steady = fuzzed
    method, path, body = request
    response = server.http.request(method, f"{server.url}{path}", content=base_named(body, str(fuzz_dirs["base"])),
                             headers={"Content-Type": "application/json"}, timeout=60)
    check_answer(response)
    assert base_unchanged()
    assert not steady.wrong, steady.wrong[:3]


# --- the adapter-directory fuzz -----------------------------------------------------------------------------------

def extra_tensors(directory: Path, keys: list[str]) -> None:
    """Undeclared tensors beside the adapter's own: base weights by their names, made-up names."""
    from safetensors.torch import load_file, save_file
    import torch

    weights = directory / "adapter_model.safetensors"
    try:
        tensors = load_file(weights)
    except Exception:  # an earlier change damaged it: it stays damaged
        return
    for key in keys:
        tensors[key] = torch.full((4, 4), 7.0)
    save_file(tensors, weights)


def build(directory: Path, dirs: dict, changes: list[tuple[str, object]]) -> None:
    shutil.copytree(dirs["a"], directory)
    for change, value in changes:
        if change == "link-file":
            (directory / value).unlink(missing_ok=True)
            (directory / value).symlink_to(dirs["outside"] / value)
        elif change == "link-dir":
            shutil.rmtree(directory)
            directory.mkdir()
            (directory / "adapter").symlink_to(dirs["outside"], target_is_directory=True)
        elif change == "subdir":
            shutil.rmtree(directory)
            shutil.copytree(dirs["a"], directory / "adapter")
        elif change == "config" and (directory / "adapter_config.json").is_file():
            config = json.loads((directory / "adapter_config.json").read_text())
            merged = {**config, **value} if isinstance(value, dict) and isinstance(config, dict) else value
            (directory / "adapter_config.json").write_text(json.dumps(merged))
        elif change == "record" and directory.joinpath("lorakit.json").is_file():
            directory.joinpath("lorakit.json").write_text(value)
        elif change == "tensors" and (directory / "adapter_model.safetensors").is_file():
            extra_tensors(directory, value)
        elif change == "truncate" and (directory / "adapter_model.safetensors").is_file():
            data = (directory / "adapter_model.safetensors").read_bytes()
            (directory / "adapter_model.safetensors").write_bytes(data[:value])
        elif change == "remove":
            (directory / value).unlink(missing_ok=True)


FILES = st.sampled_from(["adapter_config.json", "adapter_model.safetensors", "lorakit.json"])
BASE_KEYS = ["base_model.model.model.embed_tokens.weight", "base_model.model.model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.x.weight",
             "base_model.model.lm_head.weight", "junk"]
CHANGES = st.one_of(
    st.tuples(st.just("link-file"), FILES), st.tuples(st.just("link-dir"), st.none()),
    st.tuples(st.just("subdir"), st.none()), st.tuples(st.just("remove"), FILES),
    st.tuples(st.just("config"), st.one_of(JSON, st.fixed_dictionaries({}, optional={
        "r": SCALARS, "lora_alpha": SCALARS, "target_modules": st.one_of(SCALARS, st.lists(texts(8), max_size=3)),
        "peft_type": st.one_of(st.just("LORA"), SCALARS), "use_dora": SCALARS, "modules_to_save": JSON}))),
    st.tuples(st.just("record"), st.one_of(st.just('{"task": '), st.builds(json.dumps, JSON), st.builds(
        json.dumps, st.fixed_dictionaries({"task": st.one_of(st.just("sst2"), SCALARS), "config": JSON})))),
    st.tuples(st.just("tensors"), st.lists(st.sampled_from(BASE_KEYS), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("truncate"), st.integers(0, 400)))


@given(changes=st.lists(CHANGES, max_size=3))
@settings(FUZZ, max_examples=ADAPTER_DIRS)
def test_fuzzed_adapter_directories_load_or_are_refused_and_leave_the_base_alone(fuzzed, fuzz_dirs, changes):
    server, base_unchanged, steady = fuzzed
    directory = fuzz_dirs["root"] / "fuzzed"
    shutil.rmtree(directory, ignore_errors=True)
    build(directory, fuzz_dirs, changes)
    try:
        loaded = server.http.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "f", "lora_path": "fuzzed"},
                            timeout=60)
        check_answer(loaded, "adapter-dirs")
        assert loaded.status_code in (200, 400, 403), loaded.text
        if loaded.status_code == 200:
            check_answer(server.http.post(f"{server.url}/v1/completions", json={**STEADY, "model": "f"}, timeout=60),
                         "adapter-dirs")
            assert server.http.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "f"},
                              timeout=60).status_code == 200
        assert base_unchanged()
        assert not steady.wrong, steady.wrong[:3]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_fuzz_ran_beside_the_steady_client(fuzzed):
    server, base_unchanged, steady = fuzzed
    time.sleep(0.2)
    assert steady.answers > 0 and not steady.wrong and base_unchanged()
    print(f"\nfuzzed requests by status: {dict(sorted(SEEN.items()))}; steady client: {steady.answers} answers, "
          "all equal to its answer alone")
    if SEEN:  # the fuzz ran in this session: it covered successes and refusals both
        statuses = {status for _, status in SEEN}
        assert 200 in statuses and statuses & {400, 403, 404, 413}
