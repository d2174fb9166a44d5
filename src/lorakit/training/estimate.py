"""How long a run will take, said once near its start.

    clock = RunClock(total_steps=300, first_step=0, evaluations=3, eval_examples=872, eval_tokens=22_000)
    note = clock.after_step(seconds=0.41, examples=32, tokens=420)   # None, then once (after ESTIMATE_AFTER
    # steps) a line: "lorakit train: estimated time 2 min 9 s: 300 steps at 0.41 s + 3 evaluations ..."

The total is the steps already run as measured (the first one included: it pays one-time costs, allocation and
compilation of kernels, which the run does pay), the steps left at the mean of the steps after the first, and the
evaluations. An evaluation's time is the measured one when the run has evaluated already (instruction tuning
evaluates the untrained model first); else the training time of as many tokens (as many examples when the tokens
are not known) divided by 3: a forward pass without backward costs about a third of a training step. Tokens, not
examples: evaluation rows are often longer than training rows (SST-2's dev sentences average 25 MiniLM tokens, its
training phrases 13). Checkpoints, the best weights and the final save are not counted (well under a second for
an adapter). On a loaded machine the step time moves with the load, and so does the estimate's error.
"""
from __future__ import annotations

ESTIMATE_AFTER = 4  # steps of this process before the estimate is printed
FORWARD_SHARE = 1 / 3  # evaluation time per token / training time per token


def evaluation_steps(total_steps: int, steps_per_epoch: int, eval_steps: int, first_step: int = 0) -> int:
    """How many evaluations the steps after first_step will run: each epoch end, every eval_steps, the last step."""
    return sum(1 for s in range(first_step + 1, total_steps + 1)
               if s % steps_per_epoch == 0 or s == total_steps or (eval_steps and s % eval_steps == 0))


def token_count(features) -> int | None:
    """Tokens of a tokenized split (a dataset with input_ids, or question answering's windows in `.inputs`);
    None when it holds no input_ids."""
    features = getattr(features, "inputs", features)
    try:
        return sum(len(ids) for ids in features["input_ids"])
    except (KeyError, TypeError, ValueError):
        return None


def duration(seconds: float) -> str:
    """0.4 s, 42 s, 3 min 5 s, 1 h 2 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class RunClock:
    """Collects the first steps' times and returns the estimate line once (`estimate`: its seconds)."""

    def __init__(self, total_steps: int, first_step: int, evaluations: int, eval_examples: int,
                 eval_seconds: float | None = None, eval_tokens: int | None = None):
        self.steps_left = total_steps - first_step
        self.evaluations, self.eval_examples, self.eval_seconds = evaluations, eval_examples, eval_seconds
        self.eval_tokens = eval_tokens
        self.times: list[tuple[float, int, int | None]] = []  # (seconds, examples, tokens) per step
        self.estimate: float | None = None

    def per_evaluation(self, timed: list[tuple[float, int, int | None]]) -> float:
        """An evaluation's seconds: measured, else from the training time per token (per example)."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        seconds = sum(t for t, _, _ in timed)
        if self.eval_tokens is not None and all(n is not None for _, _, n in timed):
            return self.eval_tokens * seconds / max(1, sum(n for _, _, n in timed)) * FORWARD_SHARE
        return self.eval_examples * seconds / max(1, sum(n for _, n, _ in timed)) * FORWARD_SHARE

    def after_step(self, seconds: float, examples: int, tokens: int | None = None) -> str | None:
        self.times.append((seconds, examples, tokens))
        if self.estimate is not None or len(self.times) < min(ESTIMATE_AFTER, self.steps_left):
            return None
        timed = self.times[1:] or self.times  # the first step pays one-time costs
        per_step = sum(t for t, _, _ in timed) / len(timed)
        per_eval = self.per_evaluation(timed)
        done = sum(t for t, _, _ in self.times)  # as measured, the first step's one-time costs included
        self.estimate = done + (self.steps_left - len(self.times)) * per_step + self.evaluations * per_eval
        how = "measured" if self.eval_seconds is not None else "estimated"
        return (f"lorakit train: estimated time {duration(self.estimate)}: {self.steps_left} steps at "
                f"{per_step:.2f} s + {self.evaluations} evaluations of {self.eval_examples} examples at "
                f"~{duration(per_eval)} each ({how})")
