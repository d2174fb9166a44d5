"""How long a run will take, said once near its start.

    clock = RunClock(total_steps=300, first_step=0, evaluations=3, eval_examples=872, eval_seconds=None)
    note = clock.after_step(seconds=0.41, examples=32)   # None, then once (after ESTIMATE_AFTER steps) a line:
    # "lorakit train: estimated time 2 min 9 s: 300 steps at 0.41 s + 3 evaluations at ~1.5 s each"

The step time is the mean of the steps after the first (which pays one-time costs: allocation, compilation of
kernels). An evaluation's time is the measured one when the run has evaluated already (instruction tuning
evaluates the untrained model first), else the training time of as many examples divided by 3: a forward pass
without backward costs about a third of a training step (backward ~ 2x forward).
"""
from __future__ import annotations

ESTIMATE_AFTER = 4  # steps of this process before the estimate is printed
FORWARD_SHARE = 1 / 3  # evaluation time per example / training time per example


def evaluation_steps(total_steps: int, steps_per_epoch: int, eval_steps: int, first_step: int = 0) -> int:
    """How many evaluations the steps after first_step will run: each epoch end, every eval_steps, the last step."""
    return sum(1 for s in range(first_step + 1, total_steps + 1)
               if s % steps_per_epoch == 0 or s == total_steps or (eval_steps and s % eval_steps == 0))


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
    """Collects the first steps' times and returns the estimate line once."""

    def __init__(self, total_steps: int, first_step: int, evaluations: int, eval_examples: int,
                 eval_seconds: float | None = None):
        self.steps_left = total_steps - first_step
        self.evaluations, self.eval_examples, self.eval_seconds = evaluations, eval_examples, eval_seconds
        self.times: list[tuple[float, int]] = []  # (seconds, examples) per step
        self.said = False

    def after_step(self, seconds: float, examples: int) -> str | None:
        self.times.append((seconds, examples))
        if self.said or len(self.times) < min(ESTIMATE_AFTER, self.steps_left):
            return None
        self.said = True
        timed = self.times[1:] or self.times  # the first step pays one-time costs
        per_step = sum(t for t, _ in timed) / len(timed)
        per_example = sum(t for t, _ in timed) / max(1, sum(n for _, n in timed))
        per_eval = self.eval_seconds if self.eval_seconds is not None else \
            self.eval_examples * per_example * FORWARD_SHARE
        total = self.steps_left * per_step + self.evaluations * per_eval
        how = "measured" if self.eval_seconds is not None else "estimated"
        return (f"lorakit train: estimated time {duration(total)}: {self.steps_left} steps at {per_step:.2f} s + "
                f"{self.evaluations} evaluations of {self.eval_examples} examples at ~{duration(per_eval)} each "
                f"({how})")
