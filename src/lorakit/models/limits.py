"""What a loaded model can read: its position limit, checked against the settings before any training or output.

    check_max_length(model, cfg.max_length)     # UserError if longer than the model's position embeddings
"""
from __future__ import annotations

from torch import nn

from lorakit.errors import UserError

# position-embedding tables that start at padding_idx + 1 (the first rows are not positions)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")
# rotary positions: max_position_embeddings is the trained context, not a table that longer inputs overflow
_ROTARY = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover; None for models without a limit (rotary)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if config.model_type in _OFFSET_POSITIONS:
        positions -= (config.pad_token_id or 0) + 1
    return positions


def check_max_length(model: nn.Module, max_length: int) -> None:
    limit = max_positions(model)
    if limit is not None and max_length > limit and model.config.model_type not in _ROTARY:
        raise UserError(f"--max-length {max_length} is longer than model {model.config.name_or_path or '?'} "
                        f"can read ({limit} positions); use --max-length {limit} or less")
