"""LoraConfig, QuantConfig and TrainConfig refuse bad values with one message that names the value (UserError, a
ValueError)."""
from __future__ import annotations

import math

import pytest

from lorakit import LoraConfig
from lorakit.config import QuantConfig
from lorakit.errors import UserError
from lorakit.training.config import TrainConfig


LORA = [({"r": 0}, "r=0"), ({"r": 1.5}, "r must be an integer, got 1.5"), ({"r": "8"}, "r must be an integer"),
        ({"r": True}, "r must be an integer, got True"), ({"alpha": math.nan}, "alpha must be a finite number"),
        ({"alpha": -1.0}, "alpha=-1.0"), ({"alpha": "big"}, "alpha must be a number, got 'big'"),
        ({"dropout": 1.0}, "dropout=1.0"), ({"dropout": math.inf}, "dropout must be a finite number"),
        ({"target_modules": 5}, "target_modules must be a list or a string, got 5"),
        ({"target_modules": [1, 2]}, "target_modules must be"), ({"target_modules": ()}, "target_modules is empty"),
        ({"target_modules": "(["}, "'([' is not a valid regular expression"),
        ({"exclude_modules": "*"}, "exclude_modules regex '*'"), ({"init": "zeros"}, "init='zeros'"),
        ({"bias": "some"}, "bias='some'"), ({"rank_pattern": {"q": 0}}, "rank_pattern['q']"),
        ({"alpha_pattern": {"q": math.nan}}, "alpha_pattern['q']"), ({"rank_pattern": {"[": 2}}, "'[' is not a valid"),
        ({"layers_to_transform": ["a"]}, "layers_to_transform must be"), ({"use_rslora": "yes"}, "use_rslora must be"),
        ({"adapter_dtype": "int4"}, "adapter_dtype='int4'")]


@pytest.mark.parametrize("changes, expected", LORA, ids=[str(c) for c, _ in LORA])
def test_lora_config(changes, expected):
    with pytest.raises(ValueError) as err:
        LoraConfig(**changes)
    assert expected in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"target_modules": 5}, "target_modules must be"),
    ({"r": "8"}, "r must be an integer"),
    ({"target_modules": "(query"}, "not a valid regular expression"),
])
def test_lora_config_rejects_bad_values(changes, message):
    with pytest.raises(UserError, match=message):
        LoraConfig(**changes)


TRAIN_CONFIG = [({"method": "dora"}, "unknown method 'dora'"), ({"lr": math.nan}, "--lr must be a finite number"),
                ({"lr": "fast"}, "--lr must be a number or null, got 'fast'"),
                ({"batch_size": 1.5}, "--batch-size must be an integer, got 1.5"),
                ({"epochs": True}, "--epochs must be an integer, got True"),
                ({"max_length": "128"}, "--max-length must be an integer, got '128'"),
                ({"report_to": ["mlflow"]}, "unknown --report-to ['mlflow']"),
                ({"text_columns": 5}, "--text-columns must be"), ({"precision": "fp8"}, "unknown precision 'fp8'"),
                ({"quant_kind": "nf3", "method": "qlora"}, "kind='nf3'"), ({"seed": 1.5}, "--seed must be an integer"),
                ({"warmup_steps": "x"}, "--warmup-steps must be an integer or null"),
                ({"split_from_eval": math.inf}, "--split-from-eval must be a finite number"),
                ({"learning_rate": 1e-3}, "unknown field(s) ['learning_rate']")]


@pytest.mark.parametrize("values, expected", TRAIN_CONFIG, ids=[str(v) for v, _ in TRAIN_CONFIG])
def test_train_config(values, expected):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(values)
    assert expected in str(err.value)


def test_quant_config():
    with pytest.raises(ValueError, match="block_size=48"):
        QuantConfig(block_size=48)
