"""Scoring an instruction-tuned causal LM: held-out loss / perplexity / token accuracy, and greedy generations.

    loader = DataLoader(features, batch_size=8, collate_fn=PaddingCollator.from_tokenizer(tokenizer))
    evaluate_causal_lm(model, loader)      # {"token_accuracy": 0.41, "loss": 2.31, "perplexity": 10.1, "tokens": ...}
    generate_samples(model, tokenizer, ["Name three colors."], max_new_tokens=64)   # ["Red, green and blue."]

Loss is the mean negative log-likelihood per labelled (response) token over the whole split, not the mean of
batch means, so it does not depend on batching; perplexity = exp(loss). token_accuracy is the share of labelled
tokens that are the model's argmax prediction. Generations are greedy by default, one prompt at a time (no
padding, so a prompt's output does not depend on the others), formatted as in training (instruct.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import transformers as tf

from lorakit.tasks.base import TaskError
from lorakit.tasks.batching import LABEL_PAD_ID
from lorakit.tasks.instruct import INPUT, INSTRUCTION, MESSAGES, OUTPUT, prompt_ids, wants_chat_template


@torch.no_grad()
def evaluate_causal_lm(model, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Response-token loss, perplexity and next-token accuracy of `model` over batches with "labels".

    Keys: token_accuracy, loss, perplexity, tokens (the number of scored tokens).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = [0.0, 0, 0]  # summed loss, scored tokens, correct predictions
    for batch in loader:
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        labels = batch.pop("labels")  # (B, T), -100 on prompt and padding tokens
        sums = [a + b for a, b in zip(sums, score_tokens(model(**batch).logits.float(), labels))]
    model.train(was_training)
    return lm_metrics(*sums)


def score_tokens(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """One batch's summed response-token cross-entropy, scored tokens and correct next-token predictions.
    logits (B, T, V) at position t predict token t + 1: logits[:, :-1] pair with labels[:, 1:]; -100 is not scored."""
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    scored = shifted_labels != LABEL_PAD_ID  # (B, T - 1)
    loss = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
                           ignore_index=LABEL_PAD_ID, reduction="sum").item()
    return loss, int(scored.sum()), int(((shifted_logits.argmax(dim=-1) == shifted_labels) & scored).sum())


def lm_metrics(total_loss: float, tokens: int, correct: int) -> dict[str, float]:
    """token_accuracy, loss (mean over scored tokens), perplexity and tokens from score_tokens' sums."""
    if tokens == 0:
        raise TaskError("no labelled token to score: the evaluation rows hold no response tokens")
    loss = total_loss / tokens
    return {"token_accuracy": correct / tokens, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "tokens": float(tokens)}


def stop_ids(model, tokenizer) -> list[int]:
    """EOS of the tokenizer plus the model's own stop tokens (some chat models end a turn with another token)."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return list(dict.fromkeys([tokenizer.eos_token_id, *configured]))


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: Sequence[str | Mapping], max_new_tokens: int = 128,
                     chat_template: bool | None = None, temperature: float = 0.0, top_p: float = 1.0,
                     streamer=None, desc: str | None = None, synced_gpus: bool = False) -> list[str]:
    """Completions of `prompts` (greedy at temperature 0; else sampled from torch's global generator, with
    nucleus top_p), decoded without special tokens and stripped of surrounding white space (newlines inside are
    kept).

    A prompt is an instruction (str) or a normalized row (Alpaca fields or "messages"); a row's last assistant
    turn is what gets generated (its reference text is ignored; a conversation ending with a user turn gets a
    reply to it). chat_template: as in tokenize_instruct. streamer: a transformers TextStreamer that prints the
    tokens as they come. desc: show a progress bar over the prompts (on a terminal) with this label. synced_gpus:
    transformers' flag for a sharded model (FSDP): every rank runs the same prompts, one forward pass per token
    until all have stopped.
    """
    if max_new_tokens <= 0:
        raise TaskError(f"max_new_tokens must be positive, got {max_new_tokens!r}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise TaskError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature!r} and {top_p!r}")
    use_template = wants_chat_template(tokenizer, chat_template)
    stop = stop_ids(model, tokenizer)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False}
    config = tf.GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, eos_token_id=stop, **sampling,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for prompt in progress_bar(prompts, desc):
        row = {INSTRUCTION: prompt, INPUT: "", OUTPUT: ""} if isinstance(prompt, str) else dict(prompt)
        if row.get(MESSAGES) is not None and row[MESSAGES][-1]["role"] != "assistant":
            row[MESSAGES] = [*row[MESSAGES], {"role": "assistant", "content": ""}]  # the turn to generate
        ids = torch.tensor([prompt_ids(row, tokenizer, use_template)], device=device)  # (1, L)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                   streamer=streamer, synced_gpus=synced_gpus)
        outputs.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return outputs


def progress_bar(items: Sequence, desc: str | None, total: int | None = None):
    """tqdm over items on a terminal (rank 0, with a desc), cleared when done; the items themselves otherwise."""
    import os
    import sys

    from tqdm.auto import tqdm

    if desc is None or not sys.stderr.isatty() or int(os.environ.get("RANK", "0")) != 0:
        return items
    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
