"""`lorakit serve`: one base model and many LoRA adapters behind an OpenAI-compatible HTTP API (FastAPI + uvicorn,
the `serve` extra). config.py needs neither; app.py is the HTTP side, batcher.py the queue in front of the model,
generate.py / classify.py the batched model work, registry.py the model and its adapters by name."""
