"""Where an adapter is: a local directory, or a hub id whose two adapter files transformers fetches (cached_file:
huggingface_hub's download and cache, offline from the cache; lorakit declares transformers, not huggingface_hub).

    path = adapter_dir("me/my-adapter", revision="main")   # offline (HF_HUB_OFFLINE=1): the cached snapshot
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def adapter_dir(model_id: str | os.PathLike, revision: str | None = None, subfolder: str | None = None,
                **hub_kwargs) -> Path:
    """The local directory that holds `model_id`'s adapter_config.json (and weights), as PEFT resolves it."""
    local = Path(model_id) / (subfolder or "")
    if local.is_dir():
        return local
    from transformers.utils import cached_file

    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "token", "local_files_only")}
    config = cached_file(str(model_id), CONFIG_NAME, revision=revision, subfolder=subfolder or "", **kwargs)
    cached_file(str(model_id), WEIGHTS_NAME, revision=revision, subfolder=subfolder or "", **kwargs)
    return Path(config).parent


def read_config(path: Path) -> dict:
    """adapter_config.json of an adapter directory."""
    return json.loads((Path(path) / CONFIG_NAME).read_text())
