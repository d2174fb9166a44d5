"""Resuming a run: which checkpoint, the settings that may and may not change, the best weights so far, and a
run that had stopped early staying stopped."""
from __future__ import annotations

import shutil
from pathlib import Path

from lorakit.io.atomic import atomic_dir, read_json
from lorakit.errors import UserError
from lorakit.training.checkpoint import BEST, CHECKPOINTS, TrainState
from lorakit.training.config import TrainConfig

SHAPING = ("method", "lora_r", "target_modules")  # settings the checkpoint's tensor names and shapes depend on


def still_stopped(state: TrainState, cfg: TrainConfig) -> str | None:
    """A resumed run that had stopped early stays stopped, unless the patience was raised since."""
    if state.stopped_early and cfg.early_stopping_patience and \
            state.evals_without_improvement >= cfg.early_stopping_patience:
        return state.stopped_early
    state.stopped_early = None
    return None


def resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    found = sorted((Path(cfg.output) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None  # "auto" with nothing to resume starts fresh


def adopt_best(checkpoint: Path, output: Path) -> None:
    """Resuming into another output directory: bring the best weights so far along."""
    source, target = checkpoint.parent / BEST, output / CHECKPOINTS / BEST
    if source.is_dir() and source.resolve() != target.resolve() and not target.exists():
        with atomic_dir(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)


def note_changed_settings(checkpoint: Path, cfg: TrainConfig) -> None:
    """Resuming with other settings is allowed (e.g. more epochs, a lower lr after a divergence); say which.
    Settings that change the trained tensors' shapes are not: a UserError names them."""
    if not (checkpoint / "state.json").is_file():
        raise FileNotFoundError(f"--resume {checkpoint} is not a checkpoint directory (no state.json); "
                                "pass one of <output>/checkpoints/step-* or --resume auto")
    saved = read_json(checkpoint / "state.json", "checkpoint state")["config"]
    given = cfg.to_dict()
    shaped = [k for k in SHAPING if k in saved and saved[k] != given[k]]
    if shaped:
        shown = ", ".join(f"--{k.replace('_', '-')} {given[k]!r} (the checkpoint's: {saved[k]!r})" for k in shaped)
        raise UserError(f"cannot resume {checkpoint} with {shown}: these settings change what the run trains; "
                        "resume with the checkpoint's values, or start a new --output")
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in given.items()
               if k not in ("output", "resume") and saved.get(k) != v]
    if changed:
        print(f"lorakit train: note: resuming with settings that differ from the checkpoint's: {', '.join(changed)}")
