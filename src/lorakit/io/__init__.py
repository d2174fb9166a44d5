"""Adapters on disk: PEFT's format both ways, the LoftQ base for reloading, atomic writes."""
