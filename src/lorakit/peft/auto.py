"""PEFT's AutoPeftModel classes: the base model named in adapter_config.json, loaded with the transformers Auto
class, then the adapter.

    model = AutoPeftModelForCausalLM.from_pretrained("out/adapter")   # a directory or a hub id
"""
from __future__ import annotations

import os

import transformers

from lorakit.peft.hub import adapter_dir, read_config
from lorakit.peft.model import PeftModel
from lorakit.peft import tasks


class AutoPeftModel:
    """from_pretrained(adapter) -> the PeftModel of the adapter's task on its base model."""

    _target_class = transformers.AutoModel
    _target_peft_class = PeftModel

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is built by {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, revision: str | None = None, **kwargs) -> PeftModel:
        hub = {k: kwargs.pop(k) for k in ("subfolder", "cache_dir", "token") if k in kwargs}
        path = adapter_dir(pretrained_model_name_or_path, revision=revision, **hub)
        config = read_config(path)
        base_path = config.get("base_model_name_or_path")
        if not base_path:
            raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path to load the base model from")
        base = cls._target_class.from_pretrained(base_path, revision=config.get("revision"), **kwargs)
        return cls._target_peft_class.from_pretrained(base, path, adapter_name=adapter_name, is_trainable=is_trainable)


def _auto(task: str, target_class: type, peft_class: type) -> type:
    """The AutoPeftModel class of one task: from_pretrained loads the base with target_class."""
    return type(f"AutoPeftModelFor{task}", (AutoPeftModel,), {
        "_target_class": target_class, "_target_peft_class": peft_class, "__module__": __name__,
        "__doc__": f"AutoPeftModel for {task}: the base by {target_class.__name__}, then {peft_class.__name__}."})


AutoPeftModelForCausalLM = _auto("CausalLM", transformers.AutoModelForCausalLM, tasks.PeftModelForCausalLM)
AutoPeftModelForSequenceClassification = _auto("SequenceClassification", transformers.AutoModelForSequenceClassification,
                                               tasks.PeftModelForSequenceClassification)
AutoPeftModelForTokenClassification = _auto("TokenClassification", transformers.AutoModelForTokenClassification,
                                            tasks.PeftModelForTokenClassification)
AutoPeftModelForSeq2SeqLM = _auto("Seq2SeqLM", transformers.AutoModelForSeq2SeqLM, tasks.PeftModelForSeq2SeqLM)
AutoPeftModelForQuestionAnswering = _auto("QuestionAnswering", transformers.AutoModelForQuestionAnswering,
                                          tasks.PeftModelForQuestionAnswering)
AutoPeftModelForFeatureExtraction = _auto("FeatureExtraction", transformers.AutoModel,
                                          tasks.PeftModelForFeatureExtraction)
