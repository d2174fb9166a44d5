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
Nothing is pickled and torch.load is never called. Directories are written under a temporary name and renamed
into place, so a crash mid-write leaves the previous version intact. Under torchrun only rank 0 writes
(`is_main_process`); the other ranks compute the same things and skip the writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

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


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def versions() -> dict[str, str]:
    import datasets
    import transformers

    from . import __version__

    return {"lorakit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "python": platform.python_version()}


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary directory next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # move the old version aside first, so a crash never leaves neither
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy trainable.safetensors from a checkpoint into the model's trainable parameters (names must match)."""
    tensors = load_file(str(Path(path) / TRAINABLE))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model's trainable parameters (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); resume with the settings of the run that wrote it "
                         f"(its config is in {Path(path) / 'state.json'})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


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
            lines = log_path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line).get("step", 0) <= resume_step]
        self._log = open(log_path, "w")
        self._log.writelines(line + "\n" for line in kept)
        self._log.flush()

    def open_reporters(self, names: tuple[str, ...], config: dict) -> None:
        """wandb / tensorboard, imported only when asked for."""
        if self.main:
            self.reporters = [REPORTERS[name](self.path, config) for name in names]

    def log(self, record: dict) -> None:
        if not self.main:
            return
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
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
            self._log.close()
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
        if not self.main:
            return path
        with atomic_dir(path) as tmp:
            save_file(trainable_state(model), str(tmp / TRAINABLE))
            tensors, groups = _split_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file(_torch_rng_state(), str(tmp / "rng.safetensors"))
            meta = {"state": dataclasses.asdict(state), "optimizer_param_groups": groups,
                    "scheduler": scheduler.state_dict(), "rng": _host_rng_state(), "config": config,
                    "versions": versions()}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for old in self.checkpoints()[:-limit]:
            shutil.rmtree(old)
        return path

    def save_best(self, model: nn.Module, state: TrainState, metrics: dict) -> None:
        """checkpoints/best: the trainable weights of the best evaluation so far."""
        if not self.main:
            return
        with atomic_dir(self.path / CHECKPOINTS / BEST) as tmp:
            save_file(trainable_state(model), str(tmp / TRAINABLE))
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
    meta = json.loads((path / "state.json").read_text())
    load_trainable(model, path)
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(tensors, meta["optimizer_param_groups"]))
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(load_file(str(path / "rng.safetensors")), meta["rng"])
    return TrainState(**meta["state"])


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """torch's optimizer state_dict as flat tensors (for safetensors) + JSON-able param_groups."""
    tensors = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
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
