"""Adapter files as untrusted input (issue 28): load_adapter takes only the tensors the config declares, floating
point and finite, and a failed load leaves the model exactly as it was; add_weighted_adapter refuses NaN weights.
The property-based fuzz of adapter directories is test_io_fuzz_adapters.py."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import inputs, logits, model_fingerprint, saved_adapter, tiny_model, write_adapter_dir
from lorakit import LoraConfig, add_lora, add_weighted_adapter, delete_adapter, load_adapter, set_adapter
from lorakit.errors import UserError

NORM = "base_model.model.model.norm.weight"
LLAMA_LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llama_adapter(llama):
    return saved_adapter(llama, LLAMA_LORA)


def with_adapter(llama, name="first"):
    model = add_lora(copy.deepcopy(llama), LoraConfig(r=2, alpha=4, target_modules=["q_proj", "o_proj"]), name)
    return model


def refused(model, directory, name="default") -> str:
    """load_adapter's error line, after checking the model is exactly as it was."""
    before = model_fingerprint(model)
    with pytest.raises(ValueError) as err:
        load_adapter(model, directory, name)
    message = str(err.value)
    assert message and "\n" not in message
    assert model_fingerprint(model) == before
    return message


@pytest.mark.parametrize("holds_adapter", [False, True])
def test_an_extra_key_naming_a_base_parameter_is_refused_and_the_model_untouched(llama, llama_adapter, tmp_path,
                                                                                 holds_adapter):
    """The serve incident: `model.norm.weight = 0` in an adapter file zeroed the shared base model."""
    config, tensors = llama_adapter
    model = with_adapter(llama) if holds_adapter else copy.deepcopy(llama)
    expected = logits(model, inputs())
    directory = write_adapter_dir(tmp_path / "a", config, {**tensors, NORM: torch.zeros(32)})
    message = refused(model, directory, "evil")
    assert NORM in message and "modules_to_save" in message and "lora_A" in message
    assert torch.equal(logits(model, inputs()), expected)


def test_a_declared_module_to_save_and_trained_biases_load(tmp_path):
    """What the config declares does load: the task head (modules_to_save) and, with bias="all", every bias; with
    bias="none" a bias key is refused."""
    base = tiny_model("bert")
    config, tensors = saved_adapter(base, LoraConfig(r=2, alpha=4, target_modules=["query"], bias="all"))
    assert any(k.endswith("classifier.weight") for k in tensors) and any(".output.dense.bias" in k for k in tensors)
    model = load_adapter(copy.deepcopy(base), write_adapter_dir(tmp_path / "all", config, tensors))
    assert torch.equal(model.classifier.weight, tensors["base_model.model.classifier.weight"])
    bias = "base_model.model.bert.encoder.layer.0.output.dense.bias"
    message = refused(copy.deepcopy(base), write_adapter_dir(tmp_path / "none", {**config, "bias": "none"}, tensors))
    assert "bias='none'" in message and ".bias" in message
    assert bias in tensors


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64])
def test_tensors_that_are_not_floating_point_are_refused(llama, llama_adapter, tmp_path, dtype):
    config, tensors = llama_adapter
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    message = refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "a", config,
                                                              {**tensors, key: tensors[key].to(dtype)}))
    assert key in message and str(dtype).removeprefix("torch.") in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_floating_point_dtypes_load(llama, llama_adapter, tmp_path, dtype):
    config, tensors = llama_adapter
    model = load_adapter(copy.deepcopy(llama), write_adapter_dir(
        tmp_path / "a", config, {k: v.to(dtype) for k, v in tensors.items()}))
    assert model.model.layers[0].self_attn.q_proj.lora_A.weight.dtype == torch.float32


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("holds_adapter", [False, True])
def test_nan_and_inf_are_refused(llama, llama_adapter, tmp_path, value, holds_adapter):
    config, tensors = llama_adapter
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    bad = tensors[key].clone()
    bad[1, 2] = value
    model = with_adapter(llama) if holds_adapter else copy.deepcopy(llama)
    message = refused(model, write_adapter_dir(tmp_path / "a", config, {**tensors, key: bad}), "new")
    assert key in message and "NaN" in message


def test_int8_adapters_still_load_and_their_codes_are_checked(llama, tmp_path):
    config, tensors = saved_adapter(llama, LoraConfig(r=4, alpha=8, target_modules=["q_proj"], adapter_dtype="int8"))
    assert any(v.dtype == torch.int8 for v in tensors.values())
    load_adapter(copy.deepcopy(llama), write_adapter_dir(tmp_path / "ok", config, tensors))
    scale = next(k for k in tensors if k.endswith("_scale"))
    message = refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "orphan", config, {
        k: v for k, v in tensors.items() if k != scale.removesuffix("_scale")}))
    assert scale in message
    bad = tensors[scale].clone()
    bad[0] = math.nan
    assert scale in refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "nan", config, {**tensors, scale: bad}))


@pytest.mark.parametrize("holds_adapter", [False, True])
def test_a_failed_load_leaves_the_model_exactly_as_it_was(llama, llama_adapter, tmp_path, holds_adapter):
    """The last key is bad: the LoRA layers are injected and checked, then taken out again; the fingerprint
    compares every tensor, the module objects, requires_grad, training flags and the `lorakit` record."""
    config, tensors = llama_adapter
    key = "base_model.model.model.layers.1.mlp.down_proj.weight"
    model = with_adapter(llama) if holds_adapter else copy.deepcopy(llama)
    if holds_adapter:
        set_adapter(model, "first")
    refused(model, write_adapter_dir(tmp_path / "a", config, {**tensors, key: torch.zeros(32, 37)}), "second")
    # and the model still works as before: a good adapter loads, and deleting it gives back the same model
    before = model_fingerprint(model)
    load_adapter(model, write_adapter_dir(tmp_path / "good", config, tensors), "second")
    if holds_adapter:
        delete_adapter(model, "second")
        assert model_fingerprint(model)["tensors"] == before["tensors"]


def test_a_rank_the_weights_do_not_have_is_refused_before_any_layer_is_made(llama, llama_adapter, tmp_path):
    """r = 10^9 in the config would allocate 10^9 x 32 floats per layer: refused from the file's shapes first."""
    config, tensors = llama_adapter
    message = refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "a", {**config, "r": 10 ** 9}, tensors))
    assert "rank 4" in message and "rank 1000000000" in message


@pytest.mark.parametrize("text", ["null", "[]", '"LORA"', "5", "[1, 2]"])
def test_a_config_that_is_not_an_object_is_refused(llama, llama_adapter, tmp_path, text):
    _, tensors = llama_adapter
    message = refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "a", text, tensors))
    assert "adapter_config.json" in message and "JSON object" in message


@pytest.mark.parametrize("field, value", [("init_lora_weights", []), ("peft_version", 22), ("peft_type", ["LORA"]),
                                          ("r", "eight"), ("target_modules", 5), ("rank_pattern", {"q_proj": "x"})])
def test_config_fields_of_the_wrong_type_are_refused(llama, llama_adapter, tmp_path, field, value):
    config, tensors = llama_adapter
    message = refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "a", {**config, field: value}, tensors))
    assert field in message or repr(value) in message


def test_peft_copies_of_an_adapted_embedding_load_only_unchanged(llama, tmp_path):
    """PEFT's save_embedding_layers writes the base embedding beside an adapter that targets it: skipped when equal
    to the model's, refused when it would change the base model."""
    config, tensors = saved_adapter(llama, LoraConfig(r=2, alpha=4, target_modules=["embed_tokens", "q_proj"]))
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    same = {**tensors, key: llama.model.embed_tokens.weight.detach().clone()}
    load_adapter(copy.deepcopy(llama), write_adapter_dir(tmp_path / "same", config, same))
    assert key in refused(copy.deepcopy(llama), write_adapter_dir(tmp_path / "changed", config,
                                                                   {**same, key: same[key] + 1}))


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "x", None])
def test_add_weighted_adapter_refuses_weights_that_are_not_finite_numbers(llama, weight):
    model = with_adapter(llama, "a")
    add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj"]), "b")
    with pytest.raises(UserError) as err:
        add_weighted_adapter(model, ["a", "b"], [0.5, weight], "both", combination_type="linear")
    assert "weights[1]" in str(err.value) and "\n" not in str(err.value)
    assert "both" not in model.lorakit.configs


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_refused_residual_init_file_leaves_the_base_weights_as_they_were(llama, llama_adapter, tmp_path, init):
    """PiSSA / OLoRA files are loaded by rebuilding the residual base W0 - s·B0·A0 in place: a file refused after
    that point (an undeclared key) must give the base its weights back."""
    config, tensors = llama_adapter
    directory = write_adapter_dir(tmp_path / init, {**config, "init_lora_weights": init},
                                  {**tensors, NORM: torch.zeros(32)})
    assert NORM in refused(copy.deepcopy(llama), directory)
