"""The run directory and checkpoints: atomic writes, rank-0-only output, and exact resumption.

    out = RunDir("runs/sst2-lora", resume=False)   # every file a run writes goes through it
    out.log({"step": 1, "loss": 0.69})             # one JSON line in log.jsonl (and wandb / tensorboard)
    path = out.save_checkpoint(model, optimizer, scheduler, state, cfg)   # runs/.../checkpoints/step-000200
    state = load_checkpoint(path, model, optimizer, scheduler)           # all of it back, RNG included

A checkpoint directory holds
    trainable.safetensors   the model's trainable parameters (LoRA A/B and the head; every weight for `full`)
    optimizer.safetensors   the optimizer's state tensors, keyed "<param index>.<name>" (exp_avg, exp_avg_sq, step)
    rng.safetensors         the torch CPU generator state (and one per CUDA device)
    state.json              TrainState (step, epoch, position in the epoch, best metric, patience), the optimizer's
                            param_groups, the scheduler state, Python's and NumPy's RNG states, the TrainConfig,
                            library versions
Nothing is pickled and torch.load is never called. Every file and directory is written under a temporary name,
fsynced and renamed into place (lorakit.io.atomic), so a kill mid-write leaves the previous version intact; old
checkpoints are renamed away before they are deleted; log.jsonl is only appended to, one whole line per write, and
on resume replaced in one rename by its lines up to the resumed step. The early-stop decision is part of TrainState,
so a resumed run that had stopped stays stopped. Under torchrun only rank 0 writes
(`is_main_process`); the other ranks compute the same things and skip the writes. Under FSDP (--fsdp) the
trainable parameters and their optimizer state are DTensors, each rank holding a shard: every rank gathers them
into full tensors (a collective) before rank 0 writes, so a checkpoint is the same file as without FSDP, and
loading one back keeps this rank's shard of each tensor (fsdp.shard_like).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.io.atomic import atomic_dir, read_json, read_safetensors, remove_dir, write_text_atomic
from lorakit.errors import UserError
from lorakit.training.fsdp import full_tensor, is_sharded, shard_like
from lorakit.training.launch import is_main_process

CHECKPOINTS = "checkpoints"
BEST = "best"
TRAINABLE = "trainable.safetensors"


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch: the data position
    last_metric: float | None = None  # the task's main metric at the latest evaluation
    best_metric: float | None = None  # best value of the task's main metric so far
    best_step: int | None = None
    evals_without_improvement: int = 0  # for early stopping
    train_seconds: float = 0.0  # time in training steps (evaluation excluded)
    examples_seen: int = 0
    stopped_early: str | None = None  # the early-stopping decision, once taken: a resumed run does not train on


def versions() -> dict[str, str]:
    import datasets
    import transformers

    from lorakit import __version__

    return {"lorakit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "python": platform.python_version()}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters as full CPU tensors (FSDP: gathered, so every rank calls)."""
    return {n: full_tensor(p.detach()).contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy trainable.safetensors from a checkpoint into the model's trainable parameters (names must match)."""
    tensors = read_safetensors(Path(path) / TRAINABLE, "checkpoint weights")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit this model's trainable parameters (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); resume with the settings of the run that wrote it "
                         f"(its config is in {Path(path) / 'state.json'})")
    wrong = [(n, tuple(tensors[n].shape), tuple(p.shape)) for n, p in params.items() if tensors[n].shape != p.shape]
    if wrong:
        name, saved, ours = wrong[0]
        raise UserError(f"checkpoint {path} holds {name} of shape {saved}, but this model's is {ours} "
                        f"({len(wrong)} tensor(s) differ): it was trained with other settings (--lora-r, "
                        f"--target-modules, --model or the task's labels); resume with the settings of the run that "
                        f"wrote it (its config is in {Path(path) / 'state.json'})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(shard_like(tensors[name], param))


class RunDir:
    """A run's output directory. Only rank 0 writes; log.jsonl gets one JSON object per line."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.main = is_main_process()
        self.reporters: list = []
        self._log = None
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        log_path = self.path / "log.jsonl"
        kept = []
        if resume_step is not None and log_path.exists():  # drop lines the resumed run will write again
            kept = [line for line in _whole_lines(log_path) if json.loads(line).get("step", 0) <= resume_step]
        write_text_atomic(log_path, "".join(line + "\n" for line in kept))  # never truncated in place
        self._log = os.open(log_path, os.O_WRONLY | os.O_APPEND)

    def open_reporters(self, names: tuple[str, ...], config: dict) -> None:
        """wandb / tensorboard, imported only when asked for."""
        if self.main:
            self.reporters = [REPORTERS[name](self.path, config) for name in names]

    def log(self, record: dict) -> None:
        if not self.main:
            return
        os.write(self._log, (json.dumps(record) + "\n").encode("utf-8"))  # one whole line per write
        scalars = _flatten(record)
        for reporter in self.reporters:
            reporter.log(scalars, record["step"])

    def write_text(self, name: str, text: str) -> None:
        if self.main:
            write_text_atomic(self.path / name, text)

    def write_json(self, name: str, data: dict) -> None:
        self.write_text(name, json.dumps(data, indent=2) + "\n")

    def close(self) -> None:
        if self._log is not None:
            os.close(self._log)
            self._log = None
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []

    def checkpoints(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        return sorted((self.path / CHECKPOINTS).glob("step-*"))

    def save_checkpoint(self, model: nn.Module, optimizer, scheduler, state: TrainState, config: dict,
                        limit: int) -> Path:
        """Write checkpoints/step-NNNNNN (atomically) and delete all but the newest `limit`."""
        path = self.path / CHECKPOINTS / f"step-{state.step:06d}"
        if not (self.main or is_sharded(model)):
            return path
        trainable = trainable_state(model)  # FSDP: gathered on every rank
        tensors, groups = _split_optimizer_state(optimizer.state_dict())
        if not self.main:
            return path
        with atomic_dir(path) as tmp:
            save_file(trainable, str(tmp / TRAINABLE))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file(_torch_rng_state(), str(tmp / "rng.safetensors"))
            meta = {"state": dataclasses.asdict(state), "optimizer_param_groups": groups,
                    "scheduler": scheduler.state_dict(), "rng": _host_rng_state(), "config": config,
                    "versions": versions()}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for old in self.checkpoints()[:-limit]:
            remove_dir(old)  # renamed away first: never a checkpoint without its weights
        return path

    def save_best(self, model: nn.Module, state: TrainState, metrics: dict) -> None:
        """checkpoints/best: the trainable weights of the best evaluation so far."""
        if not (self.main or is_sharded(model)):
            return
        trainable = trainable_state(model)  # FSDP: gathered on every rank
        if not self.main:
            return
        with atomic_dir(self.path / CHECKPOINTS / BEST) as tmp:
            save_file(trainable, str(tmp / TRAINABLE))
            (tmp / "state.json").write_text(json.dumps({"step": state.step, "metrics": metrics}, indent=1))


class _TensorBoard:
    def __init__(self, path: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--report-to tensorboard needs tensorboard: pip install tensorboard") from None
        self.writer = SummaryWriter(str(path / "tensorboard"))
        # the run's settings as a text summary (tag "config"): JSON indented as a Markdown code block
        self.writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "), 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, path: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise ValueError("--report-to wandb needs the wandb package: pip install wandb") from None
        self.run = wandb.init(project="lorakit", dir=str(path), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


REPORTERS = {"wandb": _Wandb, "tensorboard": _TensorBoard}
_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}


def check_reporters(names: tuple[str, ...]) -> None:
    """Fail before any work when a --report-to package is not installed."""
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ValueError(f"--report-to {name} needs the {_PACKAGES[name]} package: pip install {_PACKAGES[name]}")


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer, scheduler) -> TrainState:
    """Restore model-trainable weights, optimizer, scheduler and every RNG from a step checkpoint."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no state.json); "
                                "pass one of <output>/checkpoints/step-* or --resume auto")
    meta = read_json(path / "state.json", "checkpoint state")
    load_trainable(model, path)
    tensors = read_safetensors(path / "optimizer.safetensors", "checkpoint optimizer state")
    optimizer.load_state_dict(_join_optimizer_state(tensors, meta["optimizer_param_groups"]))
    for group in optimizer.param_groups:  # FSDP: exp_avg / exp_avg_sq back to this rank's shard of each
        for param in group["params"]:
            per_param = optimizer.state.get(param, {})
            for name, value in per_param.items():
                per_param[name] = shard_like(value, param)
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(read_safetensors(path / "rng.safetensors", "checkpoint RNG state"), meta["rng"])
    return TrainState(**meta["state"])


def _whole_lines(path: Path) -> list[str]:
    """The lines of a JSON Lines file that parse (a kill inside a write may have torn the last one)."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        lines.append(line)
    return lines


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """torch's optimizer state_dict as flat tensors (for safetensors) + JSON-able param_groups."""
    tensors = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            tensors[f"{index}.{name}"] = full_tensor(torch.as_tensor(value).detach()).contiguous().cpu()
    return tensors, state_dict["param_groups"]


def _join_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": groups}


def _torch_rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda:{i}"] = s
    return states


def _host_rng_state() -> dict:
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt_state), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_rng(tensors: dict[str, torch.Tensor], host: dict) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda:")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, mt_state, gauss = host["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = host["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested log record: {"eval": {"validation": {"accuracy": 0.9}}} -> eval/validation/accuracy"""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[prefix + key] = value
    return out
