"""`lorakit serve`'s command line: its flags, generated from ServeConfig's fields (cli.flags' add_field_flag), and
the command, which loads the model and its adapters and runs the server (uvicorn) until SIGTERM / Ctrl-C, letting
the requests in flight finish."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import sys

from lorakit.serve.config import GROUP, ServeConfig
from lorakit.cli.flags import add_field_flag, command_parser

SERVE_DESCRIPTION = """\
Serve a base model and its LoRA adapters over HTTP with OpenAI's API: a request's `model` names the adapter (the
base model's name: no adapter). Causal LMs: POST /v1/completions, /v1/chat/completions (stream: true for
server-sent events); classifiers: POST /v1/classify {"model", "input": [texts]}. GET /v1/models, GET /health.
With --adapter-root, POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter
{"lora_name"} change the adapters at run time. Concurrent requests run together as mixed-adapter batches.
Generation samples by default (temperature 1, OpenAI's default), while `lorakit predict` is greedy: send
"temperature": 0 for predict's answers, or a "seed" to repeat a sampled one.

examples:
  lorakit serve --model smollm2 --adapter sql=runs/sql --adapter chat=runs/chat
  lorakit serve --adapter sst2=runs/sst2-lora --adapter imdb=runs/imdb-lora --port 8001
  LORAKIT_API_KEY=secret lorakit serve --adapter sql=runs/sql --adapter-root runs --host 0.0.0.0

SIGTERM or Ctrl-C: the server stops accepting connections, finishes the requests in flight, then exits (status 0
after SIGTERM, 130 after Ctrl-C); 2: bad input."""
FIELDS = dataclasses.fields(ServeConfig)


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = command_parser(sub, "serve", "serve a model and its adapters over an OpenAI-compatible HTTP API",
                       SERVE_DESCRIPTION)
    group = p.add_argument_group(GROUP)
    for f in FIELDS:
        add_field_flag(p if f.metadata["group"] == "model" else group, f)
    p.set_defaults(func=cmd_serve)
    return p


def serve_config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name) is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = serve_config_from_args(args)
    import uvicorn

    from lorakit.serve.app import create_app
    from lorakit.serve.registry import load_served

    served = load_served(cfg)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))  # OSError (port in use): one line, exit 2
    port = sock.getsockname()[1]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lorakit serve: %(message)s"))
    logger = logging.getLogger("lorakit.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    print(f"lorakit serve: {served.spec.name} on {served.base_name}, adapters: {', '.join(served.adapters) or 'none'}"
          f"; http://{cfg.host}:{port}/v1 (API key {'required' if cfg.resolved_api_key() else 'off'})", flush=True)
    config = uvicorn.Config(create_app(served, cfg), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None)
    # after a graceful stop uvicorn raises the signal again, into the handler it found: SIGTERM's is a no-op here,
    # so a SIGTERM stop ends with status 0 (SIGINT keeps Python's KeyboardInterrupt: 130)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
