"""Where an adapter is: a local directory, or a hub id fetched with huggingface_hub (the adapter files only).

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
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "token", "local_files_only")}
    root = snapshot_download(str(model_id), revision=revision, allow_patterns=[prefix + CONFIG_NAME, prefix + WEIGHTS_NAME],
                             **kwargs)
    return Path(root) / (subfolder or "")


def read_config(path: Path) -> dict:
    """adapter_config.json of an adapter directory."""
    return json.loads((Path(path) / CONFIG_NAME).read_text())
