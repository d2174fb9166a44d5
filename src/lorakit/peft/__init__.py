"""PEFT's LoRA API under PEFT's names, on lorakit's machinery: port a PEFT script by changing its import line.

    from lorakit.peft import LoraConfig, TaskType, get_peft_model, PeftModel   # was: from peft import ...
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16))
    model.print_trainable_parameters()
    model.save_pretrained("out")                 # PEFT's files; peft.PeftModel.from_pretrained reads them

A thin facade: no LoRA of its own, no import of peft. Where PEFT and lorakit's own API differ on purpose, this
package does as PEFT does (docs/adapters-and-peft.md, "Switching from PEFT").
"""
from __future__ import annotations

from lorakit.peft.auto import (AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForFeatureExtraction,
                               AutoPeftModelForQuestionAnswering, AutoPeftModelForSeq2SeqLM,
                               AutoPeftModelForSequenceClassification, AutoPeftModelForTokenClassification)
from lorakit.peft.config import LoraConfig, PeftConfig, PeftType, TaskType
from lorakit.peft.functions import (get_peft_model_state_dict, inject_adapter_in_model,
                                    prepare_model_for_kbit_training, set_peft_model_state_dict)
from lorakit.peft.model import LoraModel, PeftModel
from lorakit.peft.tasks import (PeftModelForCausalLM, PeftModelForFeatureExtraction, PeftModelForQuestionAnswering,
                                PeftModelForSeq2SeqLM, PeftModelForSequenceClassification,
                                PeftModelForTokenClassification, get_peft_model)

__all__ = [
    "AutoPeftModel", "AutoPeftModelForCausalLM", "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering", "AutoPeftModelForSeq2SeqLM", "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification", "LoraConfig", "LoraModel", "PeftConfig", "PeftModel",
    "PeftModelForCausalLM", "PeftModelForFeatureExtraction", "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification", "PeftModelForTokenClassification", "PeftType",
    "TaskType", "get_peft_model", "get_peft_model_state_dict", "inject_adapter_in_model",
    "prepare_model_for_kbit_training", "set_peft_model_state_dict",
]
