"""ServeConfig: every setting of `lorakit serve`, one frozen dataclass; the command's flags are generated from it
(lorakit.cli.serve, with cli.flags' `add_field_flag`), so each default and help text lives here alone.

    cfg = ServeConfig(model="smollm2", adapter=("sql=runs/sql", "chat=runs/chat"), adapter_root="runs")
    cfg.adapter_dirs()        # {"sql": "runs/sql", "chat": "runs/chat"}

No torch, no fastapi here: `lorakit serve --help` reads it without them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lorakit.errors import UserError
from lorakit.training.config import setting

API_KEY_ENV = "LORAKIT_API_KEY"  # the environment variable read when --api-key is not given
GROUP = "serve"


@dataclass(frozen=True)
class ServeConfig:
    """One server: the base model, its adapters, where it listens and its limits."""

    model: str | None = setting(None, "model", "the base model: hub id, local directory, 'smollm2' or 'minilm' "
                                "(default: the base model the first --adapter was trained on)")
    adapter: tuple[str, ...] = setting((), "model", "an adapter served under NAME: a `lorakit train` output or "
                                       "adapter directory; repeatable", metavar="NAME=DIR", flags=("--adapter",))
    task: str | None = setting(None, "model", "what the model does: a causal-LM task (instruct) serves "
                               "/v1/completions and /v1/chat/completions, a classification task (sst2, ...) "
                               "/v1/classify (default: the first adapter's recorded task, else instruct)")
    adapter_root: str | None = setting(None, GROUP, "POST /v1/load_lora_adapter loads adapters from under this "
                                       "directory only (default: no loading at run time)", metavar="DIR")
    host: str = setting("127.0.0.1", GROUP, "address to bind (0.0.0.0 exposes the server to the network)")
    port: int = setting(8000, GROUP, "TCP port (0: a free one, printed at start)", metavar="N")
    api_key: str | None = setting(None, GROUP, "every route but /health requires `Authorization: Bearer KEY` "
                                  f"(default: ${API_KEY_ENV} when set, else no key)", metavar="KEY")
    max_batch_size: int = setting(8, GROUP, "requests run together in one mixed-adapter batch", metavar="N")
    max_queue: int = setting(64, GROUP, "requests waiting for the model; one more is answered 503", metavar="N")
    batch_wait_ms: float = setting(5.0, GROUP, "how long a batch waits for more requests once one arrived",
                                   metavar="MS")
    max_tokens: int = setting(512, GROUP, "the largest max_tokens a request may ask for", metavar="N",
                              flags=("--max-tokens-limit",))
    max_request_bytes: int = setting(1_000_000, GROUP, "the largest request body (413 above it)", metavar="N")
    max_inputs: int = setting(64, GROUP, "texts per /v1/classify request", metavar="N")
    max_prompts: int = setting(32, GROUP, "prompts per /v1/completions request (400 above it)", metavar="N")
    max_request_tokens: int = setting(16384, GROUP, "tokens one generation request may cost: its prompts' tokens plus "
                                      "max_tokens per prompt (400 above it)", metavar="N")
    body_timeout_s: float = setting(30.0, GROUP, "how long a request body may take to arrive (408 after it)",
                                    metavar="S")
    device: str = setting("auto", GROUP, "cpu, cuda, mps or auto")
    threads: int | None = setting(None, GROUP, "CPU threads of torch (default: torch's choice)", metavar="N")

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_tokens", "max_request_bytes", "max_inputs", "max_prompts",
                     "max_request_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise UserError(f"--batch-wait-ms must be in 0..10000, got {self.batch_wait_ms}")
        if not 0 < self.body_timeout_s <= 3600:
            raise UserError(f"--body-timeout-s must be in (0, 3600], got {self.body_timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.model is None and not self.adapter:
            raise UserError("give --model (the base model) and/or --adapter NAME=DIR")
        self.adapter_dirs()  # NAME=DIR syntax and unique names, checked here

    def adapter_dirs(self) -> dict[str, str]:
        """--adapter NAME=DIR values as {name: directory}, in the order given."""
        out: dict[str, str] = {}
        for item in self.adapter:
            name, sep, directory = item.partition("=")
            if not sep or not name or not directory:
                raise UserError(f"--adapter {item!r}: expected NAME=DIR, e.g. --adapter sst2=runs/sst2-lora")
            if name in out or name == self.model:
                raise UserError(f"--adapter {item!r}: the name {name!r} is taken; give each adapter its own name")
            out[name] = directory
        return out

    def resolved_api_key(self) -> str | None:
        """--api-key, else $LORAKIT_API_KEY (empty counts as unset)."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None
