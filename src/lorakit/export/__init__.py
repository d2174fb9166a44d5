"""Adapters out into other tools: GGUF for llama.cpp / Ollama."""
