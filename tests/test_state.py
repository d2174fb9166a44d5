"""The model's record of its adapters: one AdapterState under one attribute (`model.lorakit`), kept consistent by
add_lora, set_adapter, delete_adapter, load_adapter and merge_and_unload."""
from __future__ import annotations

import copy

import pytest

from helpers import randomize_lora, tiny_model
from lorakit import (LoraConfig, active_adapters, adapter_config, adapter_names, add_lora, delete_adapter,
                     load_adapter, load_adapters, merge_and_unload, save_adapter, save_adapters, set_adapter)
from lorakit.state import STATE_ATTRIBUTE, AdapterState, adapter_state

A = LoraConfig(r=4, alpha=8, target_modules=["query", "value"])
B = LoraConfig(r=2, alpha=4, target_modules="all-linear")


def lorakit_attributes(model) -> list[str]:
    """The attributes lorakit put on the model object itself (not on its submodules)."""
    return sorted(k for k in vars(model) if k.startswith("lorakit"))


def consistent(model) -> AdapterState:
    state = adapter_state(model)
    assert isinstance(state, AdapterState) and state is getattr(model, STATE_ATTRIBUTE)
    assert lorakit_attributes(model) == [STATE_ATTRIBUTE]
    assert adapter_names(model) == list(state.configs) and active_adapters(model) == state.active
    assert state.active and set(state.active) <= set(state.configs)
    assert state.config is state.configs[state.active[0]]
    assert all(adapter_config(model, n) is state.configs[n] for n in state.configs)
    return state


def test_a_model_without_lora_has_no_state():
    model = tiny_model("bert")
    assert adapter_state(model) is None and lorakit_attributes(model) == []
    assert adapter_names(model) == [] and active_adapters(model) == ()


def test_add_lora_puts_one_state_on_the_model():
    model = add_lora(tiny_model("bert"), A)
    state = consistent(model)
    assert state.active == ("default",) and list(state.configs) == ["default"]
    assert state.config.r == 4 and "classifier" in state.config.modules_to_save  # the resolved config


def test_set_and_delete_adapter_keep_the_state_consistent():
    model = add_lora(add_lora(tiny_model("bert"), A, name="a"), B, name="b")
    state = consistent(model)
    assert state.active == ("a",) and state.config.r == 4  # the new adapter waits, as in PEFT
    set_adapter(model, "b")
    assert consistent(model).config.r == 2
    set_adapter(model, ["a", "b"])
    assert consistent(model).active == ("a", "b")
    delete_adapter(model, "a")
    assert consistent(model) is state and state.active == ("b",) and list(state.configs) == ["b"]
    delete_adapter(model, "b")
    assert adapter_state(model) is None and lorakit_attributes(model) == []


def test_setting_the_config_in_use_changes_only_that_adapter():
    model = add_lora(add_lora(tiny_model("bert"), A, name="a"), B, name="b")
    state = adapter_state(model)
    other = state.configs["b"]
    state.config = LoraConfig(r=4, alpha=8, target_modules=state.config.target_modules, modules_to_save=("pooler",))
    assert state.configs["a"].modules_to_save == ("pooler",) and state.configs["b"] is other
    consistent(model)


@pytest.mark.parametrize("many", [False, True])
def test_a_loaded_model_carries_exactly_one_state_attribute(many, tmp_path):
    model = add_lora(add_lora(tiny_model("bert"), A), B, name="other")
    randomize_lora(model, seed=3)
    if many:
        save_adapters(model, tmp_path / "ad")
        again = load_adapters(tiny_model("bert"), tmp_path / "ad")
    else:
        save_adapter(model, tmp_path / "ad")
        again = load_adapter(tiny_model("bert"), tmp_path / "ad")
    state = consistent(again)
    assert list(state.configs) == (["default", "other"] if many else ["default"])
    assert state.config == adapter_state(model).config


def test_merge_and_unload_removes_the_state():
    model = merge_and_unload(add_lora(tiny_model("gpt2"), LoraConfig(r=2, alpha=4, target_modules=["c_attn"])))
    assert adapter_state(model) is None and lorakit_attributes(model) == []


def test_a_copied_model_has_its_own_state():
    model = add_lora(add_lora(tiny_model("bert"), A, name="a"), B, name="b")
    twin = copy.deepcopy(model)
    set_adapter(twin, "b")
    assert adapter_state(model).active == ("a",) and consistent(twin).active == ("b",)
