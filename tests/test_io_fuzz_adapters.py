"""A property-based fuzz of adapter directories (issue 28): a valid lorakit adapter, then one to three mutations
(extra keys naming base parameters, other dtypes, NaN / Inf, other shapes, dropped or renamed keys, truncated or
garbage safetensors, configs that are null / [] / of the wrong types, symlinks), loaded onto a tiny model with and
without an adapter already.

Property: load_adapter either succeeds, and then only tensors the config declares changed (its LoRA tensors, its
modules_to_save, the biases its `bias` trains), or it raises a ValueError (UserError) or FileNotFoundError with a
one-line message, and then the model is exactly as before (tensors, modules, requires_grad, the `lorakit` record).
Derandomized and without an example database, so CI runs the same 330 directories every time (about 20 s).
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from helpers import model_fingerprint, saved_adapter, tiny_model, write_adapter_dir
from lorakit import LoraConfig, add_lora, load_adapter
from lorakit.adapters.api import using
from lorakit.io.untrusted import adapter_params

FUZZ = settings(max_examples=110, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float64]
FIELDS = ["r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias", "rank_pattern",
          "alpha_pattern", "use_dora", "use_rslora", "peft_type", "init_lora_weights", "peft_version",
          "layers_to_transform", "exclude_modules", "lora_bias", "base_model_name_or_path"]
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 12), st.floats(allow_nan=True),
                       st.text(max_size=6), st.lists(st.text(max_size=6), max_size=3),
                       st.sampled_from(["all", "lora_only", "all-linear", "q_proj", "model.norm", "lm_head",
                                        "classifier", "LORA", "LORAKIT_INT8", "0.21.0", "pissa", [], {},
                                        {"q_proj": 10 ** 9}, {"q_proj": 2}, {"(": 1}, ["model.norm"], [0, 1]]))
BAD_CONFIGS = ["[]", "null", "{}", '"LORA"', "1", "{bad json", b"\xff\xfe", "", '{"r": NaN}']


class Case:
    """A base model (fresh or holding an adapter), its pristine copy and a valid adapter for it."""

    def __init__(self, model, config: LoraConfig, holds_adapter: bool):
        self.adapter_config, self.tensors = saved_adapter(model, config)
        if holds_adapter:
            add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["k_proj", "q_proj"]), "first")
        self.model = model
        self.param_names = [n for n, _ in model.named_parameters()]


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    llama_lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"])
    return {"llama": Case(tiny_model("llama"), llama_lora, False),
            "llama+adapter": Case(tiny_model("llama"), llama_lora, True),
            "bert": Case(tiny_model("bert"), LoraConfig(r=2, alpha=4, target_modules=["query", "value"],
                                                        bias="lora_only"), False)}


def _tensor_mutation(data, tensors: dict, case: Case) -> None:
    kind = data.draw(st.sampled_from(["base_key", "dtype", "nonfinite", "shape", "drop", "rename"]))
    key = data.draw(st.sampled_from(sorted(tensors)))
    if kind == "base_key":
        name = data.draw(st.sampled_from(case.param_names))
        prefix = data.draw(st.sampled_from(["base_model.model.", ""]))
        param = case.model.get_parameter(name).detach()
        value = data.draw(st.sampled_from(["same", "zeros", "shifted", "wrong_shape"]))
        tensors[prefix + name] = {"zeros": torch.zeros_like(param), "same": param.clone(), "shifted": param + 1,
                                  "wrong_shape": torch.zeros(3)}[value]
    elif kind == "dtype":
        tensors[key] = tensors[key].to(data.draw(st.sampled_from(DTYPES)))
    elif kind == "nonfinite" and tensors[key].numel():
        bad = tensors[key].float().clone().reshape(-1)
        bad[data.draw(st.integers(0, bad.numel() - 1))] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        tensors[key] = bad.reshape(tensors[key].shape).to(tensors[key].dtype)
    elif kind == "shape":
        t = tensors[key]
        op = data.draw(st.sampled_from(["transpose", "drop_row", "add_dim", "scalar", "empty"]))
        tensors[key] = {"transpose": lambda: t.T.contiguous() if t.dim() == 2 else t[None], "drop_row": lambda: t[1:],
                        "add_dim": lambda: t[None], "scalar": lambda: t.reshape(-1)[0].clone(),
                        "empty": lambda: t[:0]}[op]()
    elif kind == "drop":
        del tensors[key]
    elif kind == "rename":
        new = data.draw(st.sampled_from([key.replace("lora_A", "lora_C"), key + ".x", key.replace("layers.0", "layers.7"),
                                         key.replace("base_model.model.", ""), key.replace(".weight", ".bias")]))
        tensors[new] = tensors.pop(key)


def _config_mutation(data, config: dict) -> dict | str | bytes:
    if data.draw(st.integers(0, 7)) == 7:
        return data.draw(st.sampled_from(BAD_CONFIGS))
    field = data.draw(st.sampled_from(FIELDS))
    changed = {**config, field: data.draw(ODD_VALUES)}
    if data.draw(st.booleans()):
        del changed[field]
    return changed


def _write(data, directory: Path, config, tensors: dict, scratch: Path) -> None:
    """The adapter directory, its weights file perhaps truncated, garbage, or a symlink."""
    weights = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()})
    how = data.draw(st.sampled_from(["plain"] * 8 + ["link", "truncated", "garbage", "header", "dangling",
                                                     "link_to_dir", "config_link"]))
    if how == "truncated":
        weights = weights[: data.draw(st.integers(0, len(weights) - 1))]
    elif how == "garbage":
        weights = data.draw(st.binary(max_size=64))
    elif how == "header":
        header = data.draw(st.sampled_from([b"[]", b"{}", b'{"a": 1}', b'{"x": {"dtype": "F32", "shape": [9, 9], '
                                            b'"data_offsets": [0, 999]}}', b"\xff\xff", b"null"]))
        weights = len(header).to_bytes(8, "little") + header + b"\0" * data.draw(st.integers(0, 16))
    write_adapter_dir(directory, config, weights)
    weights_file = directory / "adapter_model.safetensors"
    if how in ("link", "dangling", "link_to_dir"):
        target = {"link": scratch / "real.safetensors", "dangling": scratch / "missing",
                  "link_to_dir": scratch}[how]
        if how == "link":
            shutil.move(weights_file, target)
        weights_file.unlink(missing_ok=True)
        os.symlink(target, weights_file)
    elif how == "config_link":
        (directory / "adapter_config.json").unlink()
        os.symlink(weights_file, directory / "adapter_config.json")


def _changed(before: list) -> list:
    return [p for p, value in before if not torch.equal(p.detach(), value)]


def check_property(data, case: Case) -> None:
    config, tensors = copy.deepcopy(case.adapter_config), dict(case.tensors)
    for _ in range(data.draw(st.sampled_from([1, 1, 0, 2, 1, 3]))):
        if data.draw(st.integers(0, 2)):
            _tensor_mutation(data, tensors, case)
        else:
            config = _config_mutation(data, config if isinstance(config, dict) else case.adapter_config)
    model = copy.deepcopy(case.model)
    fingerprint, values = model_fingerprint(model), [(p, p.detach().clone()) for p in model.parameters()]
    with tempfile.TemporaryDirectory() as tmp:
        _write(data, Path(tmp) / "adapter", config, tensors, Path(tmp))
        try:
            load_adapter(model, Path(tmp) / "adapter", "fuzzed")
        except (ValueError, FileNotFoundError) as err:  # UserError is a ValueError
            message = str(err)
            assert message.strip() and "\n" not in message, message
            assert model_fingerprint(model) == fingerprint
            return
    with using(model, "fuzzed"):
        declared = {id(p) for p in adapter_params(model, remove_duplicate=False).values()}
    undeclared = [p.shape for p in _changed(values) if id(p) not in declared]
    assert not undeclared, f"the load changed base tensors its config does not declare: {undeclared}"


@FUZZ
@given(data=st.data())
def test_fuzzed_adapters_on_a_fresh_model(cases, data):
    check_property(data, cases["llama"])


@FUZZ
@given(data=st.data())
def test_fuzzed_adapters_beside_an_adapter(cases, data):
    check_property(data, cases["llama+adapter"])


@FUZZ
@given(data=st.data())
def test_fuzzed_adapters_of_a_classifier_with_trained_biases(cases, data):
    check_property(data, cases["bert"])
