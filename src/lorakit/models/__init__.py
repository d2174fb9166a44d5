"""Base models: where they come from (hub, local, packaged, GGUF) and what they can read."""
