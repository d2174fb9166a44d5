"""PEFT as the oracle on the silent differences (tracker issue 29): each test builds the same model in lorakit and in
PEFT and compares what PEFT's user would see: outputs (to 1e-5), trainable names and counts, merge exactness, the
mode and trainability a loaded adapter comes back in, what a disabled adapter computes."""
from __future__ import annotations

import logging

import pytest
import torch
import transformers as tf

from helpers import inputs, logits, peft_name, perturb_trainable, tiny_classifier
from lorakit import LoraConfig, add_lora, disable_lora, load_adapter, lora_layers, merge_and_unload, save_adapter
from lorakit.layers.lora import LoRAEmbedding

peft = pytest.importorskip("peft")


def trainable(model) -> dict[str, int]:
    return {peft_name(n): p.numel() for n, p in model.named_parameters() if p.requires_grad}


def bert_adapter(path, dropout: float = 0.1):
    """A saved lorakit adapter on the tiny BERT classifier (dropout live in training), trainable tensors perturbed."""
    model = add_lora(tiny_classifier("bert"), LoraConfig(r=4, alpha=8, dropout=dropout, target_modules=["query"]))
    perturb_trainable(model)
    save_adapter(model, path)
    return model


# --- 5: a loaded adapter is for inference unless is_trainable=True ------------------------------------------------

def test_load_adapter_is_eval_and_frozen_like_peft(tmp_path):
    bert_adapter(tmp_path / "a")
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert").train(), tmp_path / "a")
    ours = load_adapter(tiny_classifier("bert").train(), tmp_path / "a")
    assert not theirs.training and not any(m.training for m in theirs.modules())
    assert not any(m.training for m in ours.modules())
    assert trainable(ours) == trainable(theirs) == {}
    batch = inputs()
    assert torch.equal(logits(ours, batch), logits(ours, batch))  # dropout off
    assert (logits(ours, batch) - logits(theirs, batch)).abs().max() <= 1e-5


def test_load_adapter_is_trainable_like_peft(tmp_path):
    bert_adapter(tmp_path / "a")
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert"), tmp_path / "a", is_trainable=True)
    ours = load_adapter(tiny_classifier("bert"), tmp_path / "a", is_trainable=True)
    assert trainable(ours) == trainable(theirs) and trainable(ours)
    assert sum(trainable(ours).values()) == theirs.get_nb_trainable_parameters()[0]


# --- 6: disable_lora also puts the base model's head back --------------------------------------------------------

def test_disable_lora_computes_the_base_head_like_peft(tmp_path):
    ours = bert_adapter(tmp_path / "a", dropout=0.0).eval()
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert").eval(), tmp_path / "a")
    batch = inputs()
    base = logits(tiny_classifier("bert").eval(), batch)
    with disable_lora(ours):
        disabled = logits(ours, batch)
    with theirs.disable_adapter():
        peft_disabled = logits(theirs, batch)
    assert (peft_disabled - base).abs().max() <= 1e-6
    assert (disabled - base).abs().max() <= 1e-6
    assert (logits(ours, batch) - logits(theirs, batch)).abs().max() <= 1e-5  # the trained head is back after


def test_disable_lora_with_two_adapters_computes_the_base_head(tmp_path):
    ours = bert_adapter(tmp_path / "a", dropout=0.0).eval()
    add_lora(ours, LoraConfig(r=2, target_modules=["value"]), name="b")
    batch = inputs()
    with disable_lora(ours):
        disabled = logits(ours, batch)
    assert (disabled - logits(tiny_classifier("bert").eval(), batch)).abs().max() <= 1e-6


# --- the same spec in both, compared both ways -------------------------------------------------------------------

V = 64
BERTISH = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
               max_position_embeddings=72)
DEC = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
           intermediate_size=24, head_dim=8, max_position_embeddings=64)
WHISPER = dict(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_mel_bins=8,
               max_source_positions=8, max_target_positions=16, decoder_start_token_id=1, pad_token_id=0)
VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24, image_size=8, patch_size=4)
W2V = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, conv_dim=(8, 8),
           conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
MODELS = {
    "vit": lambda: tf.ViTForImageClassification(tf.ViTConfig(num_labels=3, **VIT)),
    "convnext": lambda: tf.ConvNextForImageClassification(tf.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, image_size=8)),
    "wav2vec2-ctc": lambda: tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(vocab_size=12, **W2V)),
    "whisper": lambda: tf.WhisperForConditionalGeneration(tf.WhisperConfig(**WHISPER)),
    "llava": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=8, patch_size=4),
        text_config=tf.LlamaConfig(**{**DEC, "vocab_size": V + 8}), image_token_index=V + 1)),
    "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(tie_word_embeddings=False, **DEC)),
    "gemma-tied": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(tie_word_embeddings=True, **DEC)),
    # one scaled table shared by the encoder, the decoder and lm_head
    "m2m100": lambda: tf.M2M100ForConditionalGeneration(tf.M2M100Config(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32,
        scale_embedding=True, pad_token_id=1, decoder_start_token_id=2)),
    "camembert": lambda: tf.CamembertModel(tf.CamembertConfig(**BERTISH)),
    "albert": lambda: tf.AlbertModel(tf.AlbertConfig(embedding_size=8, **BERTISH)),
    "longformer": lambda: tf.LongformerModel(tf.LongformerConfig(attention_window=4, **BERTISH)),
    "wav2vec2": lambda: tf.Wav2Vec2Model(tf.Wav2Vec2Config(**W2V)),
}


def build(kind: str):
    torch.manual_seed(0)
    return MODELS[kind]().eval()


def batch_for(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if kind.startswith("wav2vec2"):
        return {"input_values": torch.randn(2, 400, generator=g)}
    if kind in ("vit", "convnext"):
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    if kind == "whisper":
        return {"input_features": torch.randn(2, 8, 16, generator=g), "decoder_input_ids": torch.tensor([[1, 5, 6]] * 2)}
    if kind == "m2m100":
        return {"input_ids": torch.randint(3, V, (2, 6), generator=g), "decoder_input_ids": torch.tensor([[2, 5, 6]] * 2)}
    return {"input_ids": torch.randint(3, V, (2, 8), generator=g), "attention_mask": torch.ones(2, 8, dtype=torch.long)}


def output(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def both_ways(kind: str, tmp_path, peft_kwargs: dict, ours: LoraConfig | None = None, task_type=None):
    """The PEFT config and lorakit's (the same fields unless `ours` is given) on the same model: equal trainable
    names and counts; lorakit's adapter in PEFT and PEFT's in lorakit give the saving model's outputs to 1e-5."""
    ours_config = ours or LoraConfig(r=4, alpha=8, target_modules=peft_kwargs["target_modules"])
    theirs = peft.get_peft_model(build(kind), peft.LoraConfig(r=4, lora_alpha=8, task_type=task_type, **peft_kwargs))
    model = add_lora(build(kind), ours_config)
    assert trainable(model) == trainable(theirs)
    assert sum(trainable(model).values()) == theirs.get_nb_trainable_parameters()[0]
    batch = batch_for(kind)
    perturb_trainable(model)
    save_adapter(model, tmp_path / "ours")
    loaded = peft.PeftModel.from_pretrained(build(kind), tmp_path / "ours")
    assert (output(loaded, batch) - output(model.eval(), batch)).abs().max() <= 1e-5
    perturb_trainable(theirs, seed=4)
    theirs.save_pretrained(tmp_path / "theirs", save_embedding_layers=False)  # PEFT fails on Wav2Vec2-CTC else
    again = load_adapter(build(kind), tmp_path / "theirs")
    assert (output(again, batch) - output(theirs.eval(), batch)).abs().max() <= 1e-5
    return model, again


# --- 2: a toggle name that names a module keeps PEFT's meaning ---------------------------------------------------

@pytest.mark.parametrize("kind, targets", [("camembert", ["query", "value"]), ("albert", ["query", "value"]),
                                           ("longformer", ["query", "value"]), ("wav2vec2", ["projection"])])
def test_toggle_names_that_name_modules_mean_those_modules(kind, targets, tmp_path):
    both_ways(kind, tmp_path, {"target_modules": targets})


def test_a_regex_round_trips_where_its_leaves_are_toggle_names(tmp_path):
    ours, _ = both_ways("camembert", tmp_path, {"target_modules": r".*\.(query|value)"})
    again = load_adapter(build("camembert"), tmp_path / "ours")  # lorakit reads its own compacted targets back
    assert (output(again, batch_for("camembert")) - output(ours, batch_for("camembert"))).abs().max() <= 1e-6


def merged_exactly(model, batch) -> None:
    """merge_and_unload leaves the model's outputs as they were (to 1e-5)."""
    before = output(model.eval(), batch)
    assert (output(merge_and_unload(model), batch) - before).abs().max() <= 1e-5


# --- 1: a scaled word embedding scales the adapter's term too ----------------------------------------------------

def test_scaled_word_embedding_matches_peft_and_merges_exactly(tmp_path):
    ours, again = both_ways("gemma", tmp_path, {"target_modules": ["q_proj", "embed_tokens"]})
    assert ours.model.embed_tokens.base_layer.embed_scale.item() == pytest.approx(4.0)
    merged_exactly(ours, batch_for("gemma"))
    merged_exactly(again, batch_for("gemma"))


# --- 8: every field of PEFT's LoraConfig is known ----------------------------------------------------------------

def test_every_field_of_peft_lora_config_is_known():
    import dataclasses

    from lorakit.io.peft_format import _FIELD_MAP, _IGNORED, _MUST_BE_OFF

    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert fields - set(_FIELD_MAP) - _IGNORED - _MUST_BE_OFF == set()


def test_a_plain_peft_adapter_loads_without_a_warning(tmp_path, caplog):
    theirs = peft.get_peft_model(build("camembert"), peft.LoraConfig(r=4, target_modules=["query"]))
    theirs.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lorakit"):
        load_adapter(build("camembert"), tmp_path)
    assert not [r for r in caplog.records if r.name.startswith("lorakit") and r.levelno >= logging.WARNING]


# --- 7: task_type from the model, None when unsure ---------------------------------------------------------------

@pytest.mark.parametrize("kind, task", [("whisper", None), ("llava", None), ("gemma", "CAUSAL_LM"),
                                        ("camembert", None)])
def test_task_type_is_decided_from_the_model(kind, task, tmp_path):
    import json

    both_ways(kind, tmp_path, {"target_modules": ["q_proj", "v_proj"] if kind != "camembert" else ["query"]})
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["task_type"] == task


@pytest.mark.parametrize("cls, task", [(tf.BertForSequenceClassification, "SEQ_CLS"),
                                       (tf.BertForTokenClassification, "TOKEN_CLS"),
                                       (tf.BertForQuestionAnswering, "QUESTION_ANS"), (tf.GPT2LMHeadModel, "CAUSAL_LM"),
                                       (tf.T5ForConditionalGeneration, "SEQ_2_SEQ_LM"), (tf.BertModel, None)])
def test_task_types_of_the_usual_heads(cls, task):
    from lorakit.io.peft_format import _task_type

    config = cls.config_class(vocab_size=V, num_hidden_layers=1, num_layers=1, n_layer=1)
    assert _task_type(cls(config)) == task


# --- 4: "all-linear" leaves out the output layer PEFT finds from the model ---------------------------------------

@pytest.mark.parametrize("kind, head, adapted", [("whisper", "proj_out", False), ("gemma", "lm_head", False),
                                                 ("vit", "classifier", True), ("convnext", "classifier", True),
                                                 ("wav2vec2-ctc", "lm_head", True)])
def test_all_linear_follows_peft(kind, head, adapted, tmp_path):
    ours, _ = both_ways(kind, tmp_path, {"target_modules": "all-linear"})
    assert any(name.startswith(head + ".lora_") for name in trainable(ours)) == adapted
    merged_exactly(ours, batch_for(kind))


# --- 3: PiSSA / OLoRA files saved PEFT's default way -------------------------------------------------------------

@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_residual_init_adapter_loads_as_peft_loads_it(init, tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init)
    theirs = peft.get_peft_model(build("gemma"), config)
    perturb_trainable(theirs, seed=5)
    theirs.save_pretrained(tmp_path / "theirs")  # A, B relative to the residual base, init_lora_weights=init
    batch = batch_for("gemma")
    reloaded = peft.PeftModel.from_pretrained(build("gemma"), tmp_path / "theirs")
    ours = load_adapter(build("gemma"), tmp_path / "theirs")
    assert (output(reloaded, batch) - output(theirs.eval(), batch)).abs().max() <= 1e-5
    assert (output(ours, batch) - output(theirs, batch)).abs().max() <= 1e-5
    save_adapter(ours, tmp_path / "ours")  # lorakit writes it as a plain rank-2r LoRA on the original base
    plain = peft.PeftModel.from_pretrained(build("gemma"), tmp_path / "ours")
    assert (output(plain, batch) - output(theirs, batch)).abs().max() <= 1e-5


def test_randomized_pissa_adapter_is_refused_in_one_line(tmp_path):
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa_niter_2")
    peft.get_peft_model(build("gemma"), config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="init_lora_weights='pissa_niter_2'.*path_initial_model_for_weight_conversion"):
        load_adapter(build("gemma"), tmp_path)


# --- 9: merging into a tied embedding unties it first ------------------------------------------------------------

@pytest.mark.parametrize("kind, embedding", [("gemma-tied", "embed_tokens"), ("whisper", "embed_tokens"),
                                             ("m2m100", "embed_tokens")])
def test_merging_a_tied_embedding_keeps_the_outputs(kind, embedding, tmp_path, caplog):
    model = add_lora(build(kind), LoraConfig(r=4, alpha=8, target_modules=[embedding, "q_proj"]))
    tables = [layer.base_layer.weight for _, layer in lora_layers(model) if isinstance(layer, LoRAEmbedding)]
    assert any(model.get_output_embeddings().weight is table for table in tables)  # tied
    perturb_trainable(model)
    batch = batch_for(kind)
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path)
    assert (output(theirs, batch) - output(model.eval(), batch)).abs().max() <= 1e-5
    with caplog.at_level(logging.INFO, logger="lorakit"):
        merged_exactly(model, batch)
    assert "untied" in caplog.text and model.config.tie_word_embeddings is False
