"""One training run in its own process (so its peak memory and torch threads are its own): `lorakit search`'s
trials and `lorakit compare`'s methods.

    result = run_job(cfg, Path("runs/compare/lora"), threads=cpu_count())  # {status, metrics?, error?, start, end}
    process = launch(cfg, directory, threads, cuda_device="0")            # or start it, then collect() the result

The process is `python -P -m lorakit.experiments.jobs <directory>/job.json` (-P: the working directory is not put
on sys.path, so no file there is imported): it trains the job's config (reporting each evaluation
to the Optuna trial with --prune) and writes result.json; its output goes to train.log, both in <directory>.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.io.atomic import write_text_atomic
from lorakit.training.config import TrainConfig

if TYPE_CHECKING:  # imported where a trial prunes (search): `lorakit compare` runs without optuna
    import optuna

    from lorakit.training.checkpoint import TrainState

JOB, RESULT, LOG = "job.json", "result.json", "train.log"  # in each trial directory


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def launch(cfg: TrainConfig, directory: Path, threads: int, cuda_device: str | None = None,
           prune: dict | None = None) -> subprocess.Popen:
    """Start `python -m lorakit.experiments.jobs <directory>/job.json`: train(cfg) with `threads` torch threads (and only
    `cuda_device` visible), output to <directory>/train.log, the outcome to <directory>/result.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RESULT).unlink(missing_ok=True)
    job = {"config": cfg.to_dict(), "threads": threads, "prune": prune}
    write_text_atomic(directory / JOB, json.dumps(job, indent=2) + "\n")
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning; on a CPU shared with other jobs the
    # spinning made 2-thread steps 4-20x slower than 1-thread ones (measured on 2 busy cores), and costs little alone
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if cuda_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_device
    if env.get("PYTHONPATH"):  # an empty entry is the working directory: dropped, as -P drops the implicit one
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p)
    with open(directory / LOG, "w") as log:
        # -P: nothing is imported from the working directory (a concurrent.py there would run in every trial)
        return subprocess.Popen([sys.executable, "-P", "-m", "lorakit.experiments.jobs", str(directory / JOB)],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _die_with_parent() -> None:
    """In the job process (Linux): SIGKILL it when the launching process dies, so a killed search leaves no trial
    running unseen (the next search retries it: Search.recover_orphans)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def collect(directory: Path, returncode: int) -> dict:
    """The job's result.json: {status: complete | pruned | fail, metrics?, error?, start, end}."""
    path = directory / RESULT
    if path.is_file():
        return json.loads(path.read_text())
    lines = (directory / LOG).read_text(errors="replace").strip().splitlines() if (directory / LOG).is_file() else []
    return {"status": "fail", "error": f"the training process exited with status {returncode}"
                                       f"{': ' + lines[-1] if lines else ''} (see {directory / LOG})"}


def run_job(cfg: TrainConfig, directory: Path, threads: int) -> dict:
    """launch + wait + collect: one training run in a fresh process (so its peak memory is its own)."""
    process = launch(cfg, directory, threads)
    try:
        return collect(directory, process.wait())
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise


def job_main(job_file: str) -> None:
    """The trial process: train the job's config and write result.json beside the job file (never raises)."""
    import torch

    from lorakit.training.run import train

    job_path = Path(job_file)
    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])
    pruned = trial_pruned() if job["prune"] else ()  # `except ()` catches nothing
    result = {"start": now()}
    try:
        # new_run: the directory holds job.json and train.log, written by launch(), beside the run
        cfg = TrainConfig.from_dict({**job["config"], "new_run": True})
        metrics = train(cfg, on_evaluate=pruning_reporter(job["prune"]) if job["prune"] else None)
        result.update(status="complete", metrics=metrics)
    except pruned as err:
        result.update(status="pruned", error=str(err))
    except Exception as err:  # a failed trial is recorded with its error; the search goes on
        traceback.print_exc()
        result.update(status="fail", error=f"{type(err).__name__}: {err}")
    result["end"] = now()
    write_text_atomic(job_path.parent / RESULT, json.dumps(result, indent=2, default=str) + "\n")


def pruning_reporter(prune: dict) -> Callable[[TrainState], None]:
    """train()'s on_evaluate hook for a pruned search: reports the best main metric after each evaluation to the
    Optuna trial, and raises TrialPruned (which ends the run) when the pruner says stop."""
    import optuna

    storage = optuna.storages.RDBStorage(prune["storage"], engine_kwargs=engine_kwargs(prune["storage"]))
    study = optuna.load_study(study_name=prune["study"], storage=storage, pruner=make_pruner(True))
    trial = optuna.Trial(study, prune["trial_id"])

    def report(state: TrainState) -> None:
        trial.report(state.best_metric, state.step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {state.step}: best metric {state.best_metric:.4f} is below "
                                     "the median of earlier trials")

    return report


def now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


# the study's storage and pruner settings, for the trial process (search.open_study uses them too)
def engine_kwargs(url: str) -> dict | None:
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait out other writers


def trial_pruned() -> type[Exception]:
    import optuna

    return optuna.TrialPruned


def make_pruner(prune: bool) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()


if __name__ == "__main__":  # the trial process started by launch()
    job_main(sys.argv[1])
