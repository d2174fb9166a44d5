"""The HTTP API of `lorakit serve` (FastAPI): OpenAI's completions, chat completions and model list, vLLM's
/v1/classify and LoRA load / unload routes, /health.

    app = create_app(served, cfg)       # served: registry.Served; cfg: ServeConfig
    uvicorn.run(app, host="127.0.0.1", port=8000)

A request's `model` names the adapter (the base model's name: no adapter). Every request's rows go through one
Batcher (batcher.py), so concurrent requests for different adapters run as one mixed-adapter batch. With an API key,
every route but /health wants `Authorization: Bearer KEY` (401 otherwise). Errors are OpenAI's JSON with a 4xx
status (5xx when the model itself failed) and the server goes on. One access-log line per request (logger
"lorakit.serve"): method, path, status, model, tokens, latency.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.exceptions import StarletteHTTPException  # 404 / 405 of routes that do not exist

from lorakit.tasks import CAUSAL_LM, SEQUENCE_CLASSIFICATION
from lorakit.tasks.instruct import MESSAGES, prompt_ids, wants_chat_template
from lorakit.tasks.lm_eval import stop_ids
from lorakit.serve.batcher import Batcher
from lorakit.serve.classify import Text, classify_rows
from lorakit.serve.config import ServeConfig
from lorakit.serve.generate import Row, fail, generate_rows
from lorakit.serve.protocol import (DEFAULT_COMPLETION_TOKENS, APIError, bad, chat, chat_chunk, completion, completion_chunk,
                       model_list, new_id,
                       read_flag, read_inputs, read_messages, read_model, read_prompts, read_sampling, usage)
from lorakit.serve.body import read_body
from lorakit.serve.confine import confined_copy
from lorakit.serve.registry import Served

log = logging.getLogger("lorakit.serve")
DONE = object()  # end of a streamed answer's events
OPEN_PATHS = ("/health",)  # answered without the API key
GONE = "adapter unloaded"  # a row's error when its adapter was unloaded while it waited: 404


def row_failure(rows: list) -> APIError | None:
    """The error a request answers when one of its rows failed alone (an unloaded adapter: 404; else 500)."""
    for row in rows:
        if row is None or getattr(row, "error", None) == GONE:
            return APIError(404, "the adapter this request named was unloaded before the request ran", param="model",
                            code="model_not_found")
        if getattr(row, "error", None):
            return APIError(500, f"generation failed for this request ({row.error}); other requests were not "
                            "affected", code="generation_failed")
    return None


async def answered(server: "Server", rows: list) -> list:
    """The results of `rows` once run; APIError when one of them failed alone."""
    done = await server.submit(rows)
    failure = row_failure(done)
    if failure is not None:
        raise failure
    return done


class Server:
    """The served model, its batcher and the request handling that does not depend on the web framework."""

    def __init__(self, served: Served, cfg: ServeConfig):
        self.served, self.cfg, self.created = served, cfg, int(time.time())
        self.api_key = cfg.resolved_api_key()
        self.batcher = Batcher(self.run_rows, cfg.max_batch_size, cfg.max_queue, cfg.batch_wait_ms / 1000)
        self.stop_ids = stop_ids(served.model, served.tokenizer) if served.kind == CAUSAL_LM else []

    def run_rows(self, rows: list) -> list:
        """One batch on the worker thread: generation rows are filled in place; texts get their probabilities. A
        row whose adapter was unloaded while it waited fails alone (GONE; a text's result: None)."""
        gone = [row.adapter is not None and row.adapter not in self.served.adapters for row in rows]
        live = [row for row, g in zip(rows, gone) if not g]
        if self.served.kind == CAUSAL_LM:
            for row in (row for row, g in zip(rows, gone) if g):
                fail(row, GONE)
            if live:
                generate_rows(self.served, live, self.stop_ids)
            return rows
        probs = iter(classify_rows(self.served, live) if live else ())
        return [None if g else next(probs) for g in gone]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        await self.batcher.start()
        yield
        await self.batcher.stop()  # uvicorn has let the requests in flight finish
        log.info("stopped: %d batches of %d requests' rows served, none left in flight", self.batcher.batches,
                 self.batcher.rows)

    def adapter(self, name: str, kind: str) -> str | None:
        if self.served.kind != kind:
            what = "a causal LM (completions, chat)" if self.served.kind == CAUSAL_LM else "a classifier (classify)"
            raise APIError(400, f"this server serves {what}: {self.served.spec.name} on {self.served.base_name}",
                           param="model", code="wrong_endpoint")
        try:
            return self.served.resolve(name)
        except KeyError:
            raise APIError(404, f"the model {name!r} does not exist; served: {', '.join(self.served.names())}",
                           param="model", code="model_not_found") from None

    def check_context(self, prompt: list[int], max_tokens: int, param: str) -> None:
        limit = self.served.context_length
        if len(prompt) + max_tokens > limit:
            raise APIError(400, f"this model's maximum context length is {limit} tokens; the request asks for "
                           f"{len(prompt) + max_tokens} ({len(prompt)} in the prompt, {max_tokens} to generate): "
                           "shorten the prompt or lower max_tokens", param=param, code="context_length_exceeded")

    def submit(self, rows: list) -> asyncio.Future:
        """Queue one request's rows; 503 when --max-queue requests are already waiting."""
        try:
            future = self.batcher.submit(rows)
        except asyncio.QueueFull:
            raise APIError(503, f"the server is busy: {self.cfg.max_queue} requests are waiting (--max-queue); "
                           "retry shortly", code="server_busy") from None
        return future

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids exactly as `lorakit predict` builds them (the tokenizer's chat template)."""
        tokenizer = self.served.tokenizer
        if messages[-1]["role"] != "assistant":
            messages = [*messages, {"role": "assistant", "content": ""}]  # the turn to generate
        return prompt_ids({MESSAGES: messages}, tokenizer, wants_chat_template(tokenizer))

    def text_prompt(self, text: str) -> list[int]:
        return self.served.tokenizer(text)["input_ids"]


def access_log(request: Request, status: int) -> None:
    info = request.state.info
    tokens = "".join(f" {k}={v}" for k, v in info.items() if k not in ("start", "streaming"))
    log.info("%s %s %d%s latency_ms=%.1f", request.method, request.url.path, status, tokens,
             (time.perf_counter() - info["start"]) * 1000)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def streamed(server: Server, request: Request, rows: list[Row], first: list[dict], chunk, closing) -> StreamingResponse:
    """Server-sent events: `first` events, then chunk(i, piece) per piece of row i as it is generated, then
    closing(rows) events, then [DONE]; an error after the start is sent as an error event."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    for i, row in enumerate(rows):
        row.on_text = lambda piece, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, piece))
    future = server.submit(rows)  # 503 before the stream starts when the queue is full
    future.add_done_callback(lambda _: events.put_nowait(DONE))
    request.state.info["streaming"] = True

    async def events_out():
        status = 200
        try:
            for event in first:
                yield sse(event)
            while (item := await events.get()) is not DONE:
                yield sse(chunk(*item))
            future.result()  # the batch's exception, if it failed
            if (failure := row_failure(rows)) is not None:
                raise failure
            for event in closing(rows):
                yield sse(event)
            yield sse("[DONE]")
        except APIError as err:  # this request's rows failed alone
            status = err.status
            yield sse(err.body())
        except Exception as err:  # the model failed mid-stream: the client sees an error event
            status = 500
            yield sse(APIError(500, f"generation failed: {err}").body())
        finally:
            request.state.info.update(count_tokens(rows))
            access_log(request, status)

    return StreamingResponse(events_out(), media_type="text/event-stream")


def count_tokens(rows: list[Row]) -> dict:
    return {"prompt_tokens": sum(len(r.prompt) for r in rows), "completion_tokens": sum(len(r.tokens) for r in rows)}


def generation_rows(server: Server, body: dict, prompts: list[list[int]], adapter: str | None,
                    default_max_tokens: int | None) -> list[Row]:
    """One Row per prompt; each checked against the context length (chat's default max_tokens: what fits)."""
    room = server.served.context_length - max(len(p) for p in prompts)
    default = default_max_tokens or max(1, min(server.cfg.max_tokens, room))
    sampling = read_sampling(body, server.cfg.max_tokens, default)
    rows = []
    total = sum(len(p) for p in prompts) + sampling.max_tokens * len(prompts)
    if total > server.cfg.max_request_tokens:
        raise APIError(400, f"the request asks for {total} tokens (prompts plus max_tokens per prompt); this server "
                       f"takes up to {server.cfg.max_request_tokens} per request (--max-request-tokens)",
                       code="too_many_tokens")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise bad("prompt", "the prompt has no tokens")
        server.check_context(prompt, sampling.max_tokens, "prompt" if "prompt" in body else "messages")
        seed = None if sampling.seed is None else sampling.seed + i
        rows.append(Row(prompt, adapter, dataclasses.replace(sampling, seed=seed)))
    return rows


def stream_options(body: dict) -> bool:
    """stream_options.include_usage: a last event with the usage counts."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", f"expected an object, got {options!r}")
    return read_flag(options, "include_usage")


# --- the routes -------------------------------------------------------------------------------------------------

async def completions(server: Server, request: Request, body: dict):
    name = read_model(body)
    request.state.info["model"] = name
    adapter = server.adapter(name, CAUSAL_LM)
    prompts = [server.text_prompt(p) for p in read_prompts(body, server.cfg.max_prompts)]
    rows = generation_rows(server, body, prompts, adapter, DEFAULT_COMPLETION_TOKENS)
    id_ = new_id("cmpl")
    if read_flag(body, "stream"):
        include_usage = stream_options(body)

        def closing(done):
            events = [completion_chunk(id_, name, i, "", row.finish_reason) for i, row in enumerate(done)]
            return events + ([completion_chunk(id_, name, None, "", None, usage(**count_tokens(done)))]
                             if include_usage else [])

        return streamed(server, request, rows, [], lambda i, piece: completion_chunk(id_, name, i, piece, None),
                        closing)
    done = await answered(server, rows)
    request.state.info.update(count_tokens(done))
    return completion(id_, name, [r.text for r in done], [r.finish_reason for r in done], usage(**count_tokens(done)))


async def chat_completions(server: Server, request: Request, body: dict):
    name = read_model(body)
    request.state.info["model"] = name
    adapter = server.adapter(name, CAUSAL_LM)
    prompt = server.chat_prompt(read_messages(body))
    rows = generation_rows(server, body, [prompt], adapter, None)
    id_ = new_id("chatcmpl")
    if read_flag(body, "stream"):
        include_usage = stream_options(body)

        def closing(done):
            events = [chat_chunk(id_, name, {}, done[0].finish_reason)]
            return events + ([chat_chunk(id_, name, {}, None, usage(**count_tokens(done)), choices=False)]
                             if include_usage else [])

        return streamed(server, request, rows, [chat_chunk(id_, name, {"role": "assistant", "content": ""}, None)],
                        lambda i, piece: chat_chunk(id_, name, {"content": piece}, None), closing)
    (row,) = await answered(server, rows)
    request.state.info.update(count_tokens([row]))
    return chat(id_, name, row.text, row.finish_reason, usage(**count_tokens([row])))


async def classify(server: Server, request: Request, body: dict):
    name = read_model(body)
    request.state.info["model"] = name
    adapter = server.adapter(name, SEQUENCE_CLASSIFICATION)
    texts = read_inputs(body, server.cfg.max_inputs)
    id2label, max_length = server.served.labels(adapter)
    probs = await answered(server, [Text(t, adapter, max_length) for t in texts])
    request.state.info["inputs"] = len(texts)
    data = []
    for i, p in enumerate(probs):
        values = [round(float(v), 6) for v in p]
        label = id2label[int(p.argmax())] if id2label is not None else values[0]  # regression: the score
        data.append({"index": i, "label": label, "probs": values})
    return {"id": new_id("classify"), "object": "list", "created": int(time.time()), "model": name, "data": data}


async def load_lora(server: Server, request: Request, body: dict):
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise bad("lora_name", "expected {\"lora_name\": a new name, \"lora_path\": a directory under the adapter "
                  "root}")
    request.state.info["model"] = name
    try:
        with confined_copy(path, server.cfg.adapter_root) as private:  # read now, through no symlink
            await server.batcher.call(server.served.add, name, private)
    except PermissionError as err:
        raise APIError(403, str(err), param="lora_path", code="path_not_allowed") from None
    except (ValueError, OSError) as err:  # UserError: taken name, no adapter there, another task or base model
        raise APIError(400, str(err), param="lora_path", code="invalid_adapter") from None
    except Exception as err:  # a damaged adapter the loader did not foresee: still the client's input
        raise APIError(400, f"lora_path {path!r} is not a loadable adapter ({type(err).__name__})",
                       param="lora_path", code="invalid_adapter") from None
    return {"object": "lora_adapter", "id": name, "status": "loaded"}


async def unload_lora(server: Server, request: Request, body: dict):
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        raise bad("lora_name", "expected the name of a loaded adapter")
    request.state.info["model"] = name
    try:
        await server.batcher.call(server.served.remove, name)
    except KeyError:
        raise APIError(404, f"no adapter named {name!r} is loaded; loaded: {', '.join(server.served.adapters)}",
                       param="lora_name", code="model_not_found") from None
    return {"object": "lora_adapter", "id": name, "status": "unloaded"}


POSTS = {"/v1/completions": completions, "/v1/chat/completions": chat_completions, "/v1/classify": classify,
         "/v1/load_lora_adapter": load_lora, "/v1/unload_lora_adapter": unload_lora}


def create_app(served: Served, cfg: ServeConfig) -> FastAPI:
    server = Server(served, cfg)
    app = FastAPI(title="lorakit serve", lifespan=server.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(Exception)
    async def any_error(request: Request, err: Exception):
        return error_response(APIError(500, "the server failed on this request (see its log)", code="internal_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return error_response(APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                                       code="not_found" if err.status_code == 404 else None))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        request.state.info = {"start": time.perf_counter()}
        response = check_request(server, request)
        if response is None:
            try:
                response = await call_next(request)
            except Exception:  # a bug, not the client's: still OpenAI's JSON, and the server goes on
                log.exception("%s %s failed", request.method, request.url.path)
                response = error_response(APIError(500, "the server failed on this request (see its log)",
                                                   code="internal_error"))
        if not request.state.info.get("streaming"):
            access_log(request, response.status_code)
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return model_list(served.base_name, list(served.adapters), server.created)

    for path, handler in POSTS.items():
        app.post(path)(route(server, handler))
    return app


def route(server: Server, handler):
    async def endpoint(request: Request):
        body = await read_body(request, server.cfg.max_request_bytes, server.cfg.body_timeout_s)
        return await handler(server, request, body)
    return endpoint


def check_request(server: Server, request: Request) -> JSONResponse | None:
    """401 without the API key (every route but /health), 413 for a declared body over the limit; else None."""
    if server.api_key is not None and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
            what = "a wrong API key" if given else "no API key"
            return error_response(APIError(401, f"{what}: send `Authorization: Bearer KEY` with the key the server "
                                           "was started with (--api-key or $LORAKIT_API_KEY)",
                                           code="invalid_api_key"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > server.cfg.max_request_bytes:
        return error_response(APIError(413, f"the request body is {declared} bytes; this server takes up to "
                                       f"{server.cfg.max_request_bytes} (--max-request-bytes)",
                                       code="request_too_large"))
    return None
