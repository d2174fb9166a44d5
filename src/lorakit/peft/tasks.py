"""get_peft_model and PEFT's task classes: PeftModelForCausalLM, ...ForSequenceClassification, chosen by task_type.

    model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8))   # a PeftModelForCausalLM

As in PEFT, the classification and QA classes train their task head in full (lorakit does so for any model of such
a class); the classes differ only in name and in what isinstance says.
"""
from __future__ import annotations

from torch import nn

from lorakit.peft.config import LoraConfig, TaskType
from lorakit.peft.model import BaseSignature, PeftModel


class PeftModelForCausalLM(PeftModel):
    """PEFT's model for TaskType.CAUSAL_LM."""

    task_type = TaskType.CAUSAL_LM.value


class PeftModelForSequenceClassification(PeftModel):
    """PEFT's model for TaskType.SEQ_CLS (the classifier / score head trains in full)."""

    task_type = TaskType.SEQ_CLS.value


class PeftModelForTokenClassification(PeftModel):
    """PEFT's model for TaskType.TOKEN_CLS (the classifier head trains in full)."""

    task_type = TaskType.TOKEN_CLS.value


class PeftModelForSeq2SeqLM(PeftModel):
    """PEFT's model for TaskType.SEQ_2_SEQ_LM."""

    task_type = TaskType.SEQ_2_SEQ_LM.value


class PeftModelForQuestionAnswering(PeftModel):
    """PEFT's model for TaskType.QUESTION_ANS (qa_outputs trains in full)."""

    task_type = TaskType.QUESTION_ANS.value

    def forward(self, *args, start_positions=None, end_positions=None, adapter_names=None, **kwargs):
        """PeftModel's forward; Trainer reads the label names start_positions and end_positions from it."""
        for name, value in (("start_positions", start_positions), ("end_positions", end_positions)):
            if value is not None:
                kwargs[name] = value
        return PeftModel.forward(self, *args, adapter_names=adapter_names, **kwargs)

    forward = BaseSignature(forward)


class PeftModelForFeatureExtraction(PeftModel):
    """PEFT's model for TaskType.FEATURE_EXTRACTION."""

    task_type = TaskType.FEATURE_EXTRACTION.value




def get_peft_model(model: nn.Module, peft_config: LoraConfig, adapter_name: str = "default",
                   mixed: bool = False, autocast_adapter_dtype: bool = True, revision: str | None = None,
                   low_cpu_mem_usage: bool = False) -> PeftModel:
    """PEFT's get_peft_model: LoRA into `model` (in place), wrapped in the PeftModel class of its task_type."""
    if mixed:
        raise ValueError("get_peft_model(mixed=True): lorakit mixes adapters per batch row with adapter_names= instead")
    task = getattr(peft_config.task_type, "value", peft_config.task_type)
    if revision is not None:
        peft_config.revision = revision
    return PeftModel.task_classes.get(task, PeftModel)(model, peft_config, adapter_name)
