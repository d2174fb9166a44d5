"""OpenAI's request fields and response shapes, checked and built as plain dicts (no web framework here).

    sampling = read_sampling(body, max_tokens_limit=512, default_max_tokens=16)   # APIError (HTTP 400) if bad
    completion(id_, "sql", texts, finish_reasons, usage(12, 30))                     # the /v1/completions answer

Errors are OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`, with a 4xx status; the message names
the field and what it accepts.
"""
from __future__ import annotations

import math
import time
import uuid

from lorakit.tasks.instruct import ROLES
from lorakit.serve.generate import Sampling

MAX_STOPS = 4  # OpenAI's limit on `stop` strings
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MIN_TEMPERATURE = 1e-5  # temperature is 0 (greedy) or in [1e-5, 2]: below, logits / T overflow to inf


class APIError(Exception):
    """An error answer: HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


def number(body: dict, name: str, default: float, low: float, high: float, integer: bool = False) -> float | int:
    """body[name] (default when absent or null), a finite number (an integer when asked) in [low, high]."""
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise bad(name, f"expected {kind}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise bad(name, f"expected {kind} in [{low}, {high}], got {value!r}")
    return value


def read_stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad("stop", f"expected a non-empty string or a list of up to {MAX_STOPS}, got {value!r}")
    return tuple(stops)


def read_max_tokens(body: dict, limit: int, default: int) -> int:
    """max_tokens (or chat's max_completion_tokens): at least 1, at most the server's --max-tokens-limit."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = number(body, name, default, 1, math.inf, integer=True)
    if value > limit:
        raise bad(name, f"{value} is over this server's limit of {limit} tokens (lorakit serve --max-tokens-limit)",
                  code="max_tokens_too_large")
    return value


def read_sampling(body: dict, max_tokens_limit: int, default_max_tokens: int) -> Sampling:
    if body.get("n") not in (None, 1):
        raise bad("n", f"only n = 1 is served, got {body['n']!r}; send the request again for another answer")
    temperature = float(number(body, "temperature", 1.0, 0.0, 2.0))
    if 0 < temperature < MIN_TEMPERATURE:
        raise bad("temperature", f"expected 0 (greedy) or a number in [{MIN_TEMPERATURE}, 2], got {temperature!r}")
    top_p = float(number(body, "top_p", 1.0, 0.0, 1.0))
    if top_p <= 0:
        raise bad("top_p", f"expected a number in (0, 1], got {top_p!r}")
    return Sampling(max_tokens=read_max_tokens(body, max_tokens_limit, default_max_tokens), temperature=temperature,
                    top_p=top_p,
                    seed=number(body, "seed", None, -2**63, 2**63 - 1, integer=True),
                    stop=read_stop(body.get("stop")))


def read_flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise bad(name, f"expected true or false, got {value!r}")
    return value


def read_model(body: dict) -> str:
    value = body.get("model")
    if not isinstance(value, str) or not value:
        raise bad("model", "required: the adapter's name, or the base model's (GET /v1/models lists them)")
    return value


def read_prompts(body: dict, limit: int) -> list[str]:
    """/v1/completions' prompt: a string or a list of up to `limit` non-empty strings (one choice each)."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise bad("prompt", "expected a non-empty string or a non-empty list of them (token-id prompts are not "
                  "served)")
    if len(prompts) > limit:
        raise bad("prompt", f"{len(prompts)} prompts; this server takes up to {limit} per request (--max-prompts)",
                  code="too_many_prompts")
    return prompts


def read_messages(body: dict) -> list[dict[str, str]]:
    """/v1/chat/completions' messages: [{"role": system|user|assistant, "content": str}, ...]."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "expected a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
                message.get("content"), str):
            raise bad(f"messages[{i}]", f"expected {{\"role\": one of {', '.join(ROLES)}, \"content\": a string}}, "
                      f"got {message!r}")
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] == "assistant":
        raise bad("messages", "the last message must be the user's (or the system's): the answer is the assistant's "
                  "next turn")
    return out


def read_inputs(body: dict, limit: int) -> list[str]:
    """/v1/classify's input: a string or a list of up to `limit` strings."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad("input", "expected a string or a non-empty list of strings")
    if len(texts) > limit:
        raise bad("input", f"{len(texts)} texts; this server takes up to {limit} per request (--max-inputs)")
    return texts


# --- answers ------------------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id_: str, model: str, texts: list[str], finish: list[str], counts: dict) -> dict:
    """A /v1/completions answer: one choice per prompt."""
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in
               enumerate(zip(texts, finish))]
    return {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices,
            "usage": counts}


def completion_chunk(id_: str, model: str, index: int | None, text: str, finish: str | None,
                     counts: dict | None = None) -> dict:
    """One server-sent event of a streamed completion: a piece of choice `index` (None: the closing usage event)."""
    choices = [] if index is None else [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]
    out = {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
    if counts is not None:
        out["usage"] = counts
    return out


def chat(id_: str, model: str, text: str, finish: str, counts: dict) -> dict:
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": counts}


def chat_chunk(id_: str, model: str, delta: dict, finish: str | None, counts: dict | None = None,
               choices: bool = True) -> dict:
    """One server-sent event of a streamed chat answer (choices False: the closing usage event)."""
    out = {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if counts is not None:
        out["usage"] = counts
    return out


def model_list(base: str, adapters: list[str], created: int) -> dict:
    """GET /v1/models: the base model, then each adapter (parent: the base), as vLLM lists LoRA adapters."""
    entries = [{"id": base, "object": "model", "created": created, "owned_by": "lorakit", "root": base,
                "parent": None}]
    entries += [{"id": name, "object": "model", "created": created, "owned_by": "lorakit", "root": name,
                 "parent": base} for name in adapters]
    return {"object": "list", "data": entries}
