"""`lorakit search`: hyperparameter search over `lorakit train` options (grid, random or TPE), on Optuna.

    lorakit search --model minilm --task sst2 --data-dir ../shared/data/sst2 --max-train-samples 1000 \\
        --epochs 1 --max-length 64 --space lora_r=1,2,4,8 --space lora_alpha=1,16,64 --workers 2 --output runs/search

Each trial is one `lorakit train` run in its own process: the base settings (--config, then the train flags), then
the trial's values, written to <output>/trials/<number>/ (train.log holds the trial's output). The study lives in an
Optuna storage, sqlite:///<output>/study.db by default, so the same command again continues it: a grid enqueues only
the combinations the study does not hold yet (finished and failed ones are kept), random / tpe run until the study
holds --n-trials trials. Trials cut short by Ctrl-C are retried at once; those of a killed process or machine after
their heartbeat is GRACE_S seconds old.

The space: `--space NAME=V1,V2,...` (repeatable) or `--space-file FILE`, over TrainConfig fields and target
toggles; the syntax is in lorakit.experiments.search_space.

Parallel trials: --workers N runs N trial processes at once; on CPU each gets cores // N torch threads (--threads
overrides), with CUDA each gets one device (CUDA_VISIBLE_DEVICES, round robin over the visible ones). A trial's
metrics do not depend on --workers, except through the thread count: parallel float sums in another order change
losses in the 7th digit (accuracies rarely); give --threads for bitwise-identical trials across --workers.

Several machines share one study through a database every machine reaches (PostgreSQL: `pip install psycopg2-binary`;
MySQL: mysql+pymysql://...). Run the same command on each machine, e.g.

    lorakit search --storage postgresql://user:password@db-host/lorakit --study-name sst2-r-alpha \\
        --model minilm --task sst2 --data-dir ../shared/data/sst2 --space lora_r=1,2,4,8 --workers 4 \\
        --output runs/search

Processes claim enqueued trials atomically in the database (a grid point enqueued twice by processes starting at
the same moment is run once: the later copy is marked a duplicate and skipped), and each writes results.csv,
summary.md, best.yaml and the plots of the whole study when it finishes (run it again, or on the last machine to
finish, for the final ones); training curves need log.jsonl, so each machine plots the trials it ran. The local
equivalent, tested: several `lorakit search` processes on one machine with the same --output.

Pruning (--prune): after each evaluation (each epoch end, and every --eval-steps) the trial reports its best main
metric so far and Optuna's MedianPruner stops it when that is below the median of earlier trials at the same step.

Outputs in <output>/: results.csv (a row per trial), best.yaml (`lorakit train --config best.yaml`), summary.md,
heatmap.png (metric over lora_r x lora_alpha), pareto.png (metric vs trainable parameters), curves.png (training loss
of the best trials).

The command line (the parser, SearchSettings from the flags, the command) is in lorakit.cli.search.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from lorakit.training.runlock import pid_alive
from lorakit.experiments.jobs import LOG, RESULT, collect, cpu_count, engine_kwargs, launch, make_pruner, now
from lorakit.experiments.search_report import flat_metrics, shown_params, superseded_trials
from lorakit.experiments.search_settings import SearchSettings
from lorakit.experiments.search_space import Range, grid_points, trial_config

HEARTBEAT_S = 20  # a running trial's heartbeat is written this often
GRACE_S = 180  # a running trial whose heartbeat is older is failed and retried (its process or machine died)
POLL_S = 0.5


# --- the search -------------------------------------------------------------------------------------------------

@dataclass
class _Running:
    trial: optuna.Trial
    trial_id: int
    process: subprocess.Popen | None  # None: a trial of a dead process whose result.json is adopted
    directory: Path
    launched: str


def open_study(s: SearchSettings) -> tuple[optuna.storages.RDBStorage, optuna.Study]:
    s.output.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # we record the heartbeats ourselves
    sampler = optuna.samplers.TPESampler(seed=s.seed) if s.sampler == "tpe" else optuna.samplers.RandomSampler(s.seed)
    for attempt in range(5):  # processes starting together race to create the tables and the study: retry
        try:
            storage = optuna.storages.RDBStorage(
                s.storage_url, engine_kwargs=engine_kwargs(s.storage_url), heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
            study = optuna.create_study(study_name=s.study_name, storage=storage, sampler=sampler,
                                        pruner=make_pruner(s.prune), direction=s.direction, load_if_exists=True)
            return storage, study
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


class Search:
    """One process's part of a study: claims trials, runs up to `workers` of them at once, tells the results."""

    def __init__(self, settings: SearchSettings):
        self.s = settings
        self.storage, self.study = open_study(settings)
        self.study_id = self.storage.get_study_id_from_name(settings.study_name)
        self.slots = self._slots()
        self.running: dict[int, _Running] = {}  # slot -> trial
        self.ran = 0
        self.killed: list[int] = []  # trials whose process a signal killed: rerun by the next search run

    def _slots(self) -> list[tuple[int, str | None]]:
        """(torch threads, CUDA_VISIBLE_DEVICES) per worker slot: cores split evenly; one GPU each, round robin."""
        threads = self.s.threads or max(1, cpu_count() // self.s.workers)
        device = str(self.s.base.get("device") or "auto")
        gpus = []
        if device in ("auto", "cuda"):
            import torch

            count = torch.cuda.device_count()
            gpus = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(count)))).split(",") if count else []
        return [(threads, gpus[i % len(gpus)] if gpus else None) for i in range(self.s.workers)]

    def enqueue_grid(self) -> int:
        """Enqueue the combinations the study does not hold yet; returns how many were added."""
        trials = self.study.get_trials(deepcopy=False)
        held = {_params_key(t.system_attrs.get("fixed_params", {})) for t in trials
                if t.user_attrs.get("orphaned") != t.number}  # a point whose process died (not retried) runs again
        orphaned = {_params_key(t.system_attrs.get("fixed_params", {})) for t in trials} - held
        new = [p for p in grid_points(self.s.space) if _params_key(p) not in held]
        for point in new:  # skip_if_exists would see the orphaned trial; two processes' copies: _duplicate_of
            self.study.enqueue_trial(json.loads(json.dumps(point)), skip_if_exists=_params_key(point) not in orphaned)
        return len(new)

    def recover_orphans(self) -> None:
        """Running trials of a dead search process on this host: a finished one (its result.json is there) is
        told to the study, an unfinished one failed and retried, at once rather than after GRACE_S."""
        host = socket.gethostname()
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = frozen.user_attrs.get("owner")
            if owner is None:  # killed between claiming and recording its owner (milliseconds): give it 30 s
                started = frozen.datetime_start
                if started is None or (datetime.now() - started).total_seconds() < 30:
                    continue
            elif owner["host"] != host or pid_alive(owner["pid"]):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number)
            trial = optuna.Trial(self.study, trial_id)
            directory = Path(frozen.user_attrs.get("output", self.s.output / "trials" / str(frozen.number)))
            if (directory / RESULT).is_file():
                print(f"trial {frozen.number}: its search process died after it finished; adopting its result")
                self._finish(_Running(trial, trial_id, None, directory, now()))
            else:
                print(f"trial {frozen.number}: its search process died; running it again")
                self._fail_and_retry(trial)

    def _fail_and_retry(self, trial: optuna.Trial) -> None:
        """Fail a trial cut short (not by its own error) and enqueue a retry; `orphaned` marks it so that a kill
        between the two steps still lets the next run enqueue its point again (enqueue_grid)."""
        trial.set_user_attr("orphaned", trial.number)  # its own number: the retry copies user attributes
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(self.study, frozen)

    def run(self) -> None:
        self.recover_orphans()
        if self.s.sampler == "grid":
            added = self.enqueue_grid()
            print(f"lorakit search: grid of {len(grid_points(self.s.space))} combinations, {added} new")
        optuna.storages.fail_stale_trials(self.study)
        beat = time.monotonic()
        try:
            while True:
                for slot in range(len(self.slots)):
                    while slot not in self.running and self._start_next(slot):
                        pass
                if not self.running:
                    break
                time.sleep(POLL_S)
                for slot, job in list(self.running.items()):
                    if job.process.poll() is not None:
                        del self.running[slot]
                        self._finish(job)
                if time.monotonic() - beat > HEARTBEAT_S:
                    for job in self.running.values():
                        self.storage.record_heartbeat(job.trial_id)
                    optuna.storages.fail_stale_trials(self.study)
                    beat = time.monotonic()
        except KeyboardInterrupt:
            self._interrupt()
            raise

    def _claim(self) -> optuna.Trial | None:
        """The next trial for this process, or None when the study needs no more."""
        if self.s.sampler != "grid":
            trials = self.study.get_trials(deepcopy=False)
            replaced = superseded_trials(trials)
            held = [t for t in trials if t.state != TrialState.WAITING and t.number not in replaced]
            return self.study.ask() if len(held) < self.s.n_trials else None  # ask takes retries first
        for waiting in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, waiting.number)
            try:
                if self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):  # atomic: WAITING only
                    return optuna.Trial(self.study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def _params(self, trial: optuna.Trial, trial_id: int) -> dict:
        if self.s.sampler == "grid":
            return dict(self.storage.get_trial(trial_id).system_attrs["fixed_params"])
        return {name: values.suggest(trial, name) if isinstance(values, Range)
                else trial.suggest_categorical(name, list(values)) for name, values in self.s.space.items()}

    def _duplicate_of(self, trial: optuna.Trial, params: dict) -> int | None:
        """An earlier live trial of the same grid point (two processes enqueued it at the same moment)."""
        key = _params_key(params)
        for other in self.study.get_trials(deepcopy=False):
            live = other.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            if other.number < trial.number and live and \
                    _params_key(other.system_attrs.get("fixed_params", {})) == key:
                return other.number
        return None

    def _start_next(self, slot: int) -> bool:
        """Claim a trial and start it in `slot`; False when there is none. A trial whose config is invalid fails
        at once (and the slot stays free)."""
        trial = self._claim()
        if trial is None:
            return False
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        trial.set_user_attr("owner", {"pid": os.getpid(), "host": socket.gethostname()})
        self.storage.record_heartbeat(trial_id)
        params = self._params(trial, trial_id)
        trial.set_user_attr("params", params)
        if self.s.sampler == "grid" and (original := self._duplicate_of(trial, params)) is not None:
            trial.set_user_attr("duplicate_of", original)
            self.study.tell(trial, state=TrialState.FAIL)
            return True
        directory = self.s.output / "trials" / str(trial.number)
        try:
            cfg = trial_config(self.s.base, params, directory)
        except ValueError as err:
            trial.set_user_attr("error", f"ValueError: {err}")
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} failed: {shown_params(params)}: {err}")
            return True
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("output", str(directory))
        threads, cuda = self.slots[slot]
        prune = {"storage": self.s.storage_url, "study": self.s.study_name, "trial_id": trial_id} \
            if self.s.prune else None
        process = launch(cfg, directory, threads, cuda if cfg.device in ("auto", "cuda") else None, prune)
        self.running[slot] = _Running(trial, trial_id, process, directory, now())
        print(f"trial {trial.number} started: {shown_params(params)} ({threads} threads{', GPU ' + cuda if cuda else ''}; "
              f"log {directory / LOG})")
        return True

    def _finish(self, job: _Running) -> None:
        returncode = job.process.returncode if job.process is not None else 0
        if returncode < 0 and not (job.directory / RESULT).is_file():
            return self._killed(job, -returncode)
        result = collect(job.directory, returncode)
        trial, status = job.trial, result["status"]
        start, end = result.get("start", job.launched), result.get("end", now())
        trial.set_user_attr("start", start)
        trial.set_user_attr("end", end)
        trial.set_user_attr("seconds", round((datetime.fromisoformat(end) - datetime.fromisoformat(start))
                                             .total_seconds(), 2))
        if result.get("error"):
            trial.set_user_attr("error", result["error"])
        self.ran += 1
        if status == "complete":
            metrics = flat_metrics(result["metrics"])
            trial.set_user_attr("metrics", metrics)
            name = self.s.metric or f"{next(iter(result['metrics']['eval']))}_{result['metrics']['main_metric']}"
            trial.set_user_attr("objective_name", name)
            if name not in metrics:
                trial.set_user_attr("error", f"--metric {name}: not among the metrics ({', '.join(metrics)})")
                self.study.tell(trial, state=TrialState.FAIL)
                print(f"trial {trial.number} failed: unknown metric {name}")
                return
            self.study.tell(trial, metrics[name])
            print(f"trial {trial.number} complete: {name} {metrics[name]:.4f} in {trial.user_attrs['seconds']:.0f} s")
        elif status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number} pruned: {result['error']}")
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} failed: {result['error']}")

    def _killed(self, job: _Running, signum: int) -> None:
        """A trial process killed by a signal (the OOM killer, kill -9): failed and marked `orphaned` like a trial
        of a dead search, so the next search run enqueues its point again (enqueue_grid); not rerun now, where
        the same kill would likely come again. The search exits non-zero while its point is missing."""
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        error = f"the training process was killed by {name} (out of memory?); the next search run reruns it"
        job.trial.set_user_attr("error", error)
        job.trial.set_user_attr("orphaned", job.trial.number)
        self.study.tell(job.trial, state=TrialState.FAIL)
        self.killed.append(job.trial.number)
        self.ran += 1
        print(f"trial {job.trial.number} killed: {error} (see {job.directory / LOG})")

    def _interrupt(self) -> None:
        """Ctrl-C: stop the running trials, fail them and enqueue a retry of each for the next run."""
        for job in self.running.values():
            job.process.terminate()
            job.process.wait()
            self._fail_and_retry(job.trial)  # left out of the results: the retry replaces it
        self.running.clear()


def missing_points(study: optuna.Study, s: SearchSettings) -> list[dict]:
    """The grid points without an outcome in the study: no trial complete, pruned, running (in some process) or
    failed by its own error; a point whose trial was killed, or that waits, is missing ([] for random / tpe)."""
    if s.sampler != "grid":
        return []
    trials = study.get_trials(deepcopy=False)
    dropped = superseded_trials(trials)
    done = {_params_key(t.system_attrs.get("fixed_params", {})) for t in trials if t.number not in dropped
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)}
    return [p for p in grid_points(s.space) if _params_key(json.loads(json.dumps(p))) not in done]


def run_search(s: SearchSettings) -> tuple[optuna.Study, int]:
    """Run this process's share of the study; returns the study and the number of trials this process ran."""
    search = Search(s)
    search.run()
    return search.study, search.ran

