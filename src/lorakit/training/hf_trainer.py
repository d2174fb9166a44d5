"""lorakit models under Hugging Face's `transformers.Trainer` (and TRL's trainers, which subclass it).

    from lorakit import LoraConfig, add_lora
    from lorakit.training.hf_trainer import SaveAdapterCallback, prepare_for_trainer
    model = prepare_for_trainer(add_lora(model, LoraConfig(r=8, alpha=16, target_modules="all-linear")))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[SaveAdapterCallback()])
    trainer.train()   # every checkpoint-N/ gets adapter/ (adapter_config.json + adapter_model.safetensors)
    # reload: load_adapter(fresh_base, "out/checkpoint-N/adapter") or peft.PeftModel.from_pretrained(base, ...)

add_lora freezes everything but the LoRA weights (and modules_to_save), so Trainer's optimizer, which takes the
parameters that require grad, trains exactly those. Trainer's own checkpoint (model.safetensors of the whole
wrapped model) still works; the adapter directory is the small, portable part.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lorakit.io.peft_format import save_adapter

ADAPTER_DIR = "adapter"


def prepare_for_trainer(model: nn.Module) -> nn.Module:
    """Make the embedding output require grad, so LoRA weights inside checkpointed blocks get gradients even under
    reentrant gradient checkpointing (`gradient_checkpointing_kwargs={"use_reentrant": True}`), whose checkpointed
    blocks see no gradient path when all their inputs are frozen. transformers 5 does this itself when Trainer
    enables checkpointing on a text model; transformers 4 only for PEFT models, hence this call. Harmless otherwise.
    Returns the model."""
    model.enable_input_require_grads()
    return model


def checkpoint_dir(args: TrainingArguments, state: TrainerState) -> Path:
    """The directory Trainer has just written for this step (its PREFIX_CHECKPOINT_DIR naming)."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


class SaveAdapterCallback(TrainerCallback):
    """After each Trainer checkpoint, write the adapter in PEFT's format into checkpoint-N/adapter/."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None,
                **_callback_kwargs) -> TrainerControl:
        if state.is_world_process_zero and model is not None:
            save_adapter(_unwrapped(model), checkpoint_dir(args, state) / ADAPTER_DIR)
        return control


def _unwrapped(model: nn.Module) -> nn.Module:
    """The lorakit model inside DistributedDataParallel (Trainer under torchrun hands the wrapped one)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
