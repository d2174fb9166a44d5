"""Reading a request's JSON body within the server's limits: the bytes are counted while they arrive (a chunked or
mislabelled body answers 413 as soon as it passes --max-request-bytes), the read has a deadline (408 after
--body-timeout-s: a Content-Length larger than the body sent cannot hold a connection open), and only a JSON object
of valid Unicode gets through (deep nesting, giant integers, lone surrogates: 400).

    body = await read_body(request, limit=1_000_000, timeout_s=30.0)    # dict, or APIError
"""
from __future__ import annotations

import asyncio
import json

from lorakit.serve.protocol import APIError


async def read_bytes(request, limit: int, timeout_s: float) -> bytes:
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the request body is over {limit} bytes, the most this server takes "
                                   "(--max-request-bytes)", code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s (--body-timeout-s)",
                       code="request_timeout") from None
    return b"".join(chunks)


async def read_body(request, limit: int, timeout_s: float) -> dict:
    """The request's JSON object; APIError 413 / 408 / 400 otherwise."""
    body = await read_bytes(request, limit, timeout_s)
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise APIError(400, f"the request body is not valid JSON ({str(err)[:200]})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request body holds a lone surrogate (\\ud800-\\udfff escape): not valid Unicode "
                       "text", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    return data
