"""Putting LoRA layers into a model: PEFT's target rules, add_lora, merging and unloading."""
