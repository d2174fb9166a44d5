"""Combining adapters into a new one, as PEFT's add_weighted_adapter does."""
