"""PEFT as the oracle on a matrix: architecture families x task heads x target specs.

For every cell, lorakit and PEFT build LoRA from the same spec on the same tiny random model, and
  * the trainable parameter names (PEFT's normalized: no "base_model.model." prefix, no ".default" adapter name,
    no "modules_to_save.default." wrapper) and the trainable count (get_nb_trainable_parameters) are equal;
  * lorakit's adapter (save_adapter) loads in PEFT (PeftModel.from_pretrained on a fresh copy of the base) and
    PEFT's (save_pretrained) loads in lorakit (load_adapter), each giving the saving model's outputs to 1e-5
    (every trainable tensor is perturbed first, so adapters, heads and biases are non-trivial);
  * a spec PEFT rejects, lorakit rejects with a ValueError.
Only the cells that apply are generated (toggles where targets.TOGGLES knows the family, embeddings where the
family has a token embedding, ...). Base models are built once per (family, head) and copied per cell.
"""
from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
import transformers as tf

from helpers import peft_name, perturb_trainable
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter
from lorakit.inject.targets import TOGGLES, find_targets

peft = pytest.importorskip("peft")

V = 64  # vocabulary
SMALL = dict(vocab_size=V, max_position_embeddings=64)
DEC = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
           **SMALL)
BERTISH = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, **SMALL)
HEAD_CLASSES = {"seq": "ForSequenceClassification", "tok": "ForTokenClassification", "qa": "ForQuestionAnswering",
                "lm": "ForCausalLM", "s2s": "ForConditionalGeneration", "img": "ForImageClassification",
                "ctc": "ForCTC", "asr": "ForConditionalGeneration"}
# PEFT has no task type for images and speech: a plain PeftModel, no head trained in full (lorakit's default too)
TASK_TYPES = {"seq": "SEQ_CLS", "tok": "TOKEN_CLS", "qa": "QUESTION_ANS", "lm": "CAUSAL_LM", "s2s": "SEQ_2_SEQ_LM",
              "img": None, "ctc": None, "asr": None}

# family: (transformers prefix, config, heads, attention names, embedding name, an extra module to save,
#          a target name that also matches inside the seq head (None: the head's own name))
FAMILIES = {
    "bert": ("Bert", lambda: tf.BertConfig(**BERTISH), ("seq", "tok", "qa"), ["query", "value"],
             "word_embeddings", "embeddings.LayerNorm", None),
    "distilbert": ("DistilBert", lambda: tf.DistilBertConfig(vocab_size=V, dim=16, n_layers=2, n_heads=2,
                                                             hidden_dim=24, max_position_embeddings=64),
                   ("seq", "tok", "qa"), ["q_lin", "v_lin"], "word_embeddings", "LayerNorm", None),
    "roberta": ("Roberta", lambda: tf.RobertaConfig(**{**BERTISH, "max_position_embeddings": 70}),
                ("seq", "tok", "qa"), ["query", "value"], "word_embeddings", "embeddings.LayerNorm", "dense"),
    "electra": ("Electra", lambda: tf.ElectraConfig(embedding_size=16, **BERTISH), ("seq", "tok"),
                ["query", "value"], "word_embeddings", "embeddings.LayerNorm", "dense"),
    "gpt2": ("GPT2", lambda: tf.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=64),
             ("lm", "seq", "tok"), ["c_attn"], "wte", "ln_f", None),
    "llama": ("Llama", lambda: tf.LlamaConfig(**DEC), ("lm", "seq", "qa"), ["q_proj", "v_proj"], "embed_tokens",
              "norm", None),
    "mistral": ("Mistral", lambda: tf.MistralConfig(**DEC), ("lm", "tok"), ["q_proj", "v_proj"], "embed_tokens",
                "norm", None),
    "qwen2": ("Qwen2", lambda: tf.Qwen2Config(**DEC), ("lm", "seq"), ["q_proj", "v_proj"], "embed_tokens", "norm",
              None),
    "phi3": ("Phi3", lambda: tf.Phi3Config(**{**DEC, "num_key_value_heads": 2}), ("lm",), ["qkv_proj"],
             "embed_tokens", "norm", None),
    "opt": ("OPT", lambda: tf.OPTConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        ffn_dim=24, word_embed_proj_dim=16, max_position_embeddings=64),
            ("lm", "qa"), ["q_proj", "v_proj"], "embed_tokens", "final_layer_norm", None),
    "t5": ("T5", lambda: tf.T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                                     decoder_start_token_id=0), ("s2s",), ["q", "v"], None, "final_layer_norm",
           None),
    "bart": ("Bart", lambda: tf.BartConfig(vocab_size=V, d_model=16, encoder_layers=2, decoder_layers=2,
                                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                                           decoder_ffn_dim=24, max_position_embeddings=64),
             ("s2s", "qa"), ["q_proj", "v_proj"], None, "layernorm_embedding", None),
    # a scaled word embedding (embed_scale = sqrt(hidden)) tied to lm_head
    "gemma": ("Gemma", lambda: tf.GemmaConfig(head_dim=8, **DEC), ("lm", "seq"), ["q_proj", "v_proj"], "embed_tokens",
              "norm", None),
    # BERT's module names on model types outside the toggle table
    "camembert": ("Camembert", lambda: tf.CamembertConfig(**{**BERTISH, "max_position_embeddings": 70}), ("seq",),
                  ["query", "value"], "word_embeddings", "embeddings.LayerNorm", "dense"),
    "albert": ("Albert", lambda: tf.AlbertConfig(embedding_size=8, **BERTISH), ("seq",), ["query", "value"],
               "word_embeddings", "embeddings.LayerNorm", None),
    # images and speech: heads found from the model, not by name; no token embedding
    "vit": ("ViT", lambda: tf.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=24, image_size=8, patch_size=4), ("img",),
            ["q_proj", "v_proj"], None, "layernorm", None),
    "wav2vec2": ("Wav2Vec2", lambda: tf.Wav2Vec2Config(
        vocab_size=12, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2), ("ctc",), ["q_proj", "v_proj", "projection"], None, "layer_norm", None),
    "whisper": ("Whisper", lambda: tf.WhisperConfig(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=8,
        max_target_positions=16, decoder_start_token_id=1), ("asr",), ["q_proj", "v_proj"], "embed_tokens",
                "layer_norm", None),
}
HEAD_NAMES = {"seq": {"GPT2": "score", "Llama": "score", "Qwen2": "score", "Mistral": "score"}, "qa": "qa_outputs"}
SPECS = ("names", "regex", "all-linear", "toggles", "embedding", "layers", "patterns", "bias-all", "bias-lora_only",
         "modules_to_save", "head-name", "only-head")


def _head_name(family: str, head: str) -> str:
    prefix = FAMILIES[family][0]
    if head == "qa":
        return "qa_outputs"
    if head in ("lm", "s2s", "ctc"):
        return "lm_head"
    if head == "asr":
        return "proj_out"
    return "score" if prefix in HEAD_NAMES["seq"] and head == "seq" else "classifier"


def spec_kwargs(family: str, head: str, spec: str) -> dict | None:
    """The LoraConfig fields of a cell (lorakit's names), or None where the spec does not apply."""
    prefix, _, _, names, embedding, save, nested = FAMILIES[family]
    model_type = _model_type(family)
    if spec == "names":
        return {"target_modules": names}
    if spec == "regex":
        return {"target_modules": r".*\.(" + "|".join(names) + ")"}
    if spec == "all-linear":
        return {"target_modules": "all-linear"}
    if spec == "toggles":
        return {"target_modules": ["query", "mlp"]} if model_type in TOGGLES else None
    if spec == "embedding":
        return {"target_modules": [*names, embedding]} if embedding else None
    if spec == "layers":
        return {"target_modules": names, "layers_to_transform": [1]}
    if spec == "patterns":
        return {"target_modules": "all-linear", "rank_pattern": {names[0]: 4}, "alpha_pattern": {names[-1]: 32}}
    if spec.startswith("bias-"):
        return {"target_modules": names, "bias": spec[5:]}
    if spec == "modules_to_save":
        return {"target_modules": names, "modules_to_save": [save]}
    if spec == "head-name":  # a target name that also matches inside (or is) the task head
        return {"target_modules": [*names, nested or _head_name(family, head)]}
    if spec == "only-head":  # every target inside the head: PEFT rejects it where the head trains in full
        return {"target_modules": [_head_name(family, head)]} if head not in ("lm", "s2s", "asr") else None
    raise ValueError(spec)


def _model_type(family: str) -> str:
    return FAMILIES[family][1]().model_type


_BASES: dict[tuple[str, str], torch.nn.Module] = {}


def base_model(family: str, head: str) -> torch.nn.Module:
    """A fresh copy of the family's seeded tiny model with this head (built once per module)."""
    if (family, head) not in _BASES:
        prefix, make_config = FAMILIES[family][:2]
        cls = getattr(tf, prefix + ("LMHeadModel" if prefix == "GPT2" and head == "lm" else HEAD_CLASSES[head]))
        config = make_config()
        config.pad_token_id = 0
        config.num_labels = 2 if head == "qa" else 3
        torch.manual_seed(0)
        _BASES[family, head] = cls(config).eval()
    return copy.deepcopy(_BASES[family, head])


OUTCOMES: collections.Counter = collections.Counter()  # what the cells run so far found, for the size report
CELLS = [(f, h, s) for f, (_, _, heads, *_) in FAMILIES.items() for h in heads for s in SPECS
         if spec_kwargs(f, h, s) is not None]


def peft_config(family: str, head: str, spec: str, kwargs: dict):
    targets = kwargs["target_modules"]
    if spec == "toggles":  # lorakit's own: PEFT gets the paths they resolve to
        targets = find_targets(base_model(family, head), tuple(targets))
    return peft.LoraConfig(task_type=TASK_TYPES[head], r=kwargs.get("r", 8), lora_alpha=kwargs.get("alpha", 8),
                           target_modules=targets, layers_to_transform=kwargs.get("layers_to_transform"),
                           rank_pattern=kwargs.get("rank_pattern", {}), alpha_pattern=kwargs.get("alpha_pattern", {}),
                           bias=kwargs.get("bias", "none"), modules_to_save=kwargs.get("modules_to_save"))


def trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def batch_for(head: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if head == "img":
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    if head == "ctc":
        return {"input_values": torch.randn(2, 400, generator=g)}
    if head == "asr":
        return {"input_features": torch.randn(2, 8, 16, generator=g), "decoder_input_ids": torch.tensor([[1, 5, 6]] * 2)}
    ids = torch.randint(3, V, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if head == "s2s":
        batch["decoder_input_ids"] = torch.randint(3, V, (2, 5), generator=g)
    return batch


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    if getattr(out, "start_logits", None) is not None:
        return torch.cat([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def peft_crashes(err: Exception) -> bool:
    """PEFT's own bug, not a rejection: for a token-classification or QA model (and DistilBERT's pre_classifier) it
    LoRA-adapts the head first and then fails to wrap that layer as a module to save (TypeError). lorakit adapts
    the same spec without the head, trains the head in full, and PEFT loads that adapter: the cell checks so."""
    return isinstance(err, TypeError) and "modules_to_save cannot be applied" in str(err)


@pytest.mark.parametrize("family, head, spec", CELLS, ids=["-".join(c) for c in CELLS])
def test_cell(family, head, spec, tmp_path):
    kwargs = spec_kwargs(family, head, spec)
    ours_config = LoraConfig(**kwargs)
    warnings.simplefilter("ignore")
    batch = batch_for(head)
    try:
        theirs = peft.get_peft_model(base_model(family, head), peft_config(family, head, spec, kwargs))
    except Exception as err:  # PEFT rejects the cell (or crashes on it, see peft_crashes)
        if not peft_crashes(err) or spec == "only-head":  # lorakit must reject it too, with a clear ValueError
            with pytest.raises(ValueError, match="target"):
                add_lora(base_model(family, head), ours_config)
            OUTCOMES["rejected by both"] += 1
            return
        theirs = None
    ours = add_lora(base_model(family, head), ours_config)
    if theirs is not None:
        expected = {peft_name(n): c for n, c in trainable(theirs).items()}
        assert trainable(ours) == expected
        assert sum(trainable(ours).values()) == theirs.get_nb_trainable_parameters()[0]
    # lorakit's adapter in PEFT
    perturb_trainable(ours)
    save_adapter(ours, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(base_model(family, head), tmp_path / "ours").eval()
    assert (outputs(loaded, batch) - outputs(ours.eval(), batch)).abs().max() <= 1e-5
    if theirs is None:
        OUTCOMES["PEFT crashes, lorakit's adapter loads in PEFT"] += 1
        return
    # PEFT's adapter in lorakit
    perturb_trainable(theirs, seed=4)
    theirs.save_pretrained(tmp_path / "theirs", save_embedding_layers=False)  # "auto" fails on Wav2Vec2-CTC
    again = load_adapter(base_model(family, head), tmp_path / "theirs").eval()
    assert (outputs(again, batch) - outputs(theirs.eval(), batch)).abs().max() <= 1e-5
    OUTCOMES["equal both ways"] += 1


def test_matrix_size():
    """Families x heads x specs: at least ten families, every head kind, every spec somewhere."""
    families = {f for f, _, _ in CELLS}
    heads = {(f, h) for f, h, _ in CELLS}
    print(f"\nPEFT parity matrix: {len(families)} families, {len(heads)} (family, head) models, {len(SPECS)} target "
          f"specs, {len(CELLS)} cells; run here: {sum(OUTCOMES.values())} ({dict(OUTCOMES)})")
    assert len(families) >= 10
    assert {h for _, h in heads} == set(HEAD_CLASSES)
    assert {s for _, _, s in CELLS} == set(SPECS)
