"""Decoding a batch of prompts at once: one KV cache over a left-padded batch, each row with its own adapter,
sampling settings and stop conditions, rows finishing independently and streaming their text as it comes.

    rows = [Row(prompt_ids, "sql", Sampling(max_tokens=32)), Row(other_ids, None, Sampling(16, temperature=0.7))]
    generate_rows(served, rows, stop_ids)     # fills row.tokens, row.text, row.finish_reason; calls row.on_text

Left padding keeps every row's last prompt token in the last column, so one step appends one column for all rows:

    ids   (B, L)   [pad pad p0 p1 p2]      mask (B, L) [0 0 1 1 1]      positions = cumsum(mask) - 1 (clamped at 0)
    step t: logits (B, V) of the last column -> next token per row -> ids (B, 1), mask grows by one column of 1s

A row whose sampling fails (non-finite probabilities) ends with finish_reason "error" and row.error set; the other
rows go on. A finished row is fed the pad token until the batch ends (its outputs are ignored). Greedy rows take argmax of the
logits, as transformers' generate does; sampled rows draw from softmax(logits / temperature) cut to the smallest
set of tokens whose probability reaches top_p (nucleus sampling, Holtzman et al. 2020), with their own seeded
torch.Generator, so a seeded request makes the same random draws whatever else is in its batch.
"""
from __future__ import annotations

import inspect
import secrets
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

FINISH_STOP, FINISH_LENGTH, FINISH_ERROR = "stop", "length", "error"  # error: that row alone failed


@dataclass(frozen=True)
class Sampling:
    """A request's decoding settings (OpenAI's names)."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # the text ends before the first of these


@dataclass
class Row:
    """One sequence being generated; on_text(piece) receives its text as it grows (the whole text, in order)."""

    prompt: list[int]
    adapter: str | None
    sampling: Sampling
    on_text: Callable[[str], None] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text passed to on_text so far
    finish_reason: str | None = None
    error: str | None = None  # why this row alone failed (its request answers an error; the batch goes on)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), attention mask (B, L)) with every prompt right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt):] = 1
    return ids, mask


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from softmax(logits / T) restricted to the nucleus: the most likely tokens whose cumulative
    probability first reaches top_p (the token that crosses it included). logits: (V,)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if not bool(torch.isfinite(probs).all()):
        raise FloatingPointError("the probabilities are not finite (NaN or infinite logits)")
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # probability mass above each token
    sorted_probs[before >= top_p] = 0.0  # outside the nucleus (the top token always stays: before = 0)
    pick = torch.multinomial(sorted_probs, 1, generator=generator)  # renormalized by multinomial
    return int(order[pick])


def choose(logits: torch.Tensor, rows: list[Row], generators: list[torch.Generator]) -> torch.Tensor:
    """The next token of every row: argmax for greedy rows, a nucleus sample for the others. logits: (B, V)."""
    picks = logits.argmax(-1)  # (B,)
    for i, row in enumerate(rows):
        if row.sampling.temperature > 0 and not row.done:
            try:
                picks[i] = sample_top_p(logits[i], row.sampling.temperature, row.sampling.top_p, generators[i])
            except (RuntimeError, ValueError, FloatingPointError) as err:  # this row fails, the others go on
                fail(row, f"sampling failed: {err}")
    return picks


def fail(row: Row, message: str) -> None:
    row.error, row.finish_reason = message, FINISH_ERROR


def advance(row: Row, token: int, tokenizer, stop_ids: set[int]) -> None:
    """Append `token` to the row, end it on a stop token, a stop string or its max_tokens, and pass on the text
    that can no longer change (not a possible start of a stop string, no half of a multi-byte character)."""
    stops = row.sampling.stop
    if token in stop_ids:
        row.finish_reason = FINISH_STOP
    else:
        row.tokens.append(token)
        row.text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        cut = min((row.text.find(s) for s in stops if s in row.text), default=-1)
        if cut >= 0:
            row.text, row.finish_reason = row.text[:cut], FINISH_STOP
        elif len(row.tokens) >= row.sampling.max_tokens:
            row.finish_reason = FINISH_LENGTH
    if row.done:
        ready = len(row.text)
    else:
        hold = max((len(s) - 1 for s in stops), default=0)
        ready = len(row.text) - hold
        if row.text.endswith("\ufffd"):  # a character whose bytes are not all generated yet
            ready = min(ready, len(row.text) - 1)
    if ready > row.sent and row.on_text is not None:
        row.on_text(row.text[row.sent:ready])
    row.sent = max(row.sent, ready)


def row_generator(sampling: Sampling) -> torch.Generator:
    return torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else secrets.randbits(63))


def cache_keyword(model) -> str:
    """The name of the KV-cache argument of the model's forward: `cache` in recent transformers (5.25 has it),
    `past_key_values` before (still accepted there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@torch.no_grad()
def generate_rows(served, rows: list[Row], stop_ids: list[int]) -> None:
    """Decode every row to its end, in one batch (served: serve.registry.Served; adapters per row)."""
    tokenizer, model = served.tokenizer, served.model
    for row in rows:  # afresh (a failed batch's rows run again alone); text already streamed is not sent again
        row.tokens, row.text, row.finish_reason, row.error = [], "", None, None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    ids, mask = left_pad([row.prompt for row in rows], pad_id)
    ids, mask = ids.to(served.device), mask.to(served.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): each row's positions start at 0 after its padding
    generators = [row_generator(row.sampling) for row in rows]
    stops = set(stop_ids)
    cache = {cache_keyword(model): DynamicCache(config=model.config)}  # filled in place: (B, heads, T, d) per layer
    with served.forward_context([row.adapter for row in rows]):
        while True:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **cache)
            picks = choose(out.logits[:, -1, :], rows, generators).tolist()  # (B,)
            for row, token in zip(rows, picks):
                if not row.done:
                    advance(row, token, tokenizer, stops)
            if all(row.done for row in rows):
                return
            ids = torch.tensor([[pad_id if row.done else token] for row, token in zip(rows, picks)],
                               device=served.device)  # (B, 1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)  # (B, L + t)
            positions = positions[:, -1:] + 1  # (B, 1)
