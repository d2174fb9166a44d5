"""`lorakit search`'s command line: its parser (the train flags, then the search group), the SearchSettings of
the parsed flags, and the command, which runs this process's share of the study and writes the reports.

The search itself (the study, claiming and running trials) is in lorakit.experiments.search, whose docstring
describes the command.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from lorakit.io.atomic import check_output_dir
from lorakit.cli.flags import given_train_values, command_parser
from lorakit.experiments.search_space import DEFAULT_STUDY, SAMPLERS, check_space, parse_space
from lorakit.training.config import TrainConfig

if TYPE_CHECKING:  # optuna (search, search_report) is imported when the command runs, not for `lorakit --help`
    from lorakit.experiments.search_settings import SearchSettings

SEARCH_DESCRIPTION = """\
Run many `lorakit train` trials over a space of training options, on Optuna. Every train flag below is the base of
each trial; the trial's values override it. The study is stored (default <output>/study.db), so the same command
again skips finished trials and runs only new ones.

examples:
  lorakit search --model minilm --task sst2 --data-dir ../shared/data/sst2 --max-train-samples 1000 \\
      --epochs 1 --max-length 64 --space lora_r=1,2,4,8,16,32 --space lora_alpha=1,4,8,16,32,64 \\
      --workers 2 --output runs/search
  lorakit search --config base.yaml --space-file space.yaml --output runs/search2
  lorakit search --config base.yaml --sampler tpe --n-trials 30 --space lr=1e-4..1e-2:log \\
      --space lora_r=4,8,16 --space lora_dropout=0,0.1 --output runs/tpe
  lorakit search ... --lora-query --lora-value --space lora_key=on,off --space lora_mlp=on,off

several machines: give every machine the same command with --storage postgresql://user:pw@host/db (and a
--study-name); see the lorakit.experiments.search module docstring.

outputs in --output: results.csv, best.yaml, summary.md, heatmap.png, pareto.png, curves.png, trials/<number>/ (each
trial's run directory and train.log).

exit status: 0; 1 when every trial failed, or a grid point has no result (its trial killed by a signal, e.g. the
OOM killer: the same command reruns it); 2 bad input; 128 + N stopped by signal N, as train: 130 Ctrl-C, 143
SIGTERM (the same command continues)."""


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "search",
                       "hyperparameter search over train options (grid, random, TPE; resumable, parallel)",
                       SEARCH_DESCRIPTION, train_flags=True)
    g = p.add_argument_group("search")
    g.add_argument("--space", action="append", default=[], metavar="NAME=VALUES",
                   help="a searched option and its values, repeatable: lora_r=1,2,4,8 | lora_key=on,off | "
                        "target_modules=all-linear,query+value | lr=1e-4..1e-2:log (a range: random / tpe only)")
    g.add_argument("--space-file", metavar="FILE",
                   help="YAML with a `space:` mapping (lora_r: [1, 2, 4], lr: {low: 1.0e-4, high: 1.0e-2, log: true})"
                        "; --space flags override its entries")
    g.add_argument("--sampler", choices=SAMPLERS, default="grid",
                   help="grid: every combination; random; tpe: Optuna's TPE (default: grid)")
    g.add_argument("--n-trials", type=int, metavar="N",
                   help="random / tpe: trials the study should hold (a second run adds up to N)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="trials run at once, each in its own process: CPU cores // N torch threads each, "
                        "one GPU each when CUDA is used (default: 1)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per trial (default: CPU cores // --workers). Float sums depend on the thread "
                        "count: the same --threads gives bitwise-identical trials whatever --workers")
    g.add_argument("--prune", action="store_true",
                   help="stop trials whose best main metric after an evaluation is below the median of earlier "
                        "trials at that step (MedianPruner; evaluations: each epoch end and every --eval-steps)")
    g.add_argument("--metric", metavar="NAME",
                   help="the column of results.csv to optimise, e.g. validation_f1 (default: the task's main metric "
                        "on its first evaluation split)")
    g.add_argument("--direction", choices=("maximize", "minimize"),
                   help="(default: minimize for a --metric ending in 'loss', else maximize)")
    g.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL shared by all workers, e.g. postgresql://user:pw@host/db "
                        "(default: sqlite:///<output>/study.db)")
    g.add_argument("--study-name", default=DEFAULT_STUDY, help=f"(default: {DEFAULT_STUDY})")
    g.add_argument("--search-seed", type=int, default=0, metavar="N", help="seed of the random / tpe sampler "
                                                                            "(default: 0)")
    g.add_argument("--output", default="runs/search", metavar="DIR",
                   help="search directory: study.db, results, plots, trials/<number> (default: runs/search)")
    p.add_argument("--resume", help=argparse.SUPPRESS)  # every trial starts fresh; the search itself resumes
    p.set_defaults(func=cmd_search)
    return p


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    from lorakit.experiments.search_settings import SearchSettings

    direction = args.direction or ("minimize" if args.metric and args.metric.endswith("loss") else "maximize")
    return SearchSettings(base=given_train_values(args), space=parse_space(args.space, args.space_file),
                          output=Path(args.output), sampler=args.sampler, n_trials=args.n_trials,
                          workers=args.workers, threads=args.threads, storage=args.storage,
                          study_name=args.study_name, prune=args.prune,
                          metric=args.metric, direction=direction, seed=args.search_seed)


class _Stopped(KeyboardInterrupt):
    """SIGTERM (`kill PID`): stops the search like Ctrl-C (running trials failed and retried later); exit 143."""

    signum = signal.SIGTERM


def _interrupt_on_sigterm(signum, frame):
    raise _Stopped


def _missing_line(study, settings: SearchSettings) -> str | None:
    """The error line while grid points have no outcome (a trial killed by a signal, the OOM killer's), else None."""
    from lorakit.experiments.search import missing_points

    missing = missing_points(study, settings)
    if not missing:
        return None
    killed = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("orphaned") == t.number
              and "killed by" in t.user_attrs.get("error", "")]
    return (f"lorakit search: error: {len(missing)} grid point(s) have no result yet"
            f"{f' (trial(s) {killed} killed by a signal)' if killed else ''}; run the same command again to run them")


def cmd_search(args: argparse.Namespace) -> int:
    from lorakit.experiments.search import open_study, run_search
    from lorakit.experiments.search_report import best_trial, objective_name, shown_params, trial_rows, write_reports

    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    settings = settings_from_args(args)
    check_output_dir(settings.output)
    TrainConfig.from_dict({**settings.base, "output": None})  # a bad base setting fails here, not in every trial
    check_space(settings.base, settings.space, settings.sampler)  # and a bad value before the study is written
    interrupted = None
    try:
        study, ran = run_search(settings)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (_Stopped): exit 128 + the signal, as train
        interrupted = getattr(stop, "signum", signal.SIGINT)
        _, study = open_study(settings)
        ran = None
    paths = write_reports(study, settings)
    rows = trial_rows(study, settings.space)
    if interrupted:
        print("lorakit search: interrupted; the same command continues the search (unfinished trials are retried)")
    else:
        print(f"lorakit search: {ran} trial(s) run now, {len(rows)} in the study")
    best = best_trial(study)
    if best is not None:
        print(f"best: trial {best.number}, {objective_name(study, settings.metric)} {best.value:.4f}, "
              f"{shown_params(best.user_attrs['params'])}")
    for key, path in paths.items():
        print(f"  {key:8s} {path}")
    if interrupted:
        return 128 + interrupted
    missing = _missing_line(study, settings)
    if missing:
        print(missing, file=sys.stderr)
        return 1
    if rows and not any(row["status"] in ("complete", "pruned") for row in rows):
        print(f"lorakit search: error: every trial failed ({len(rows)}); see the error column of "
              f"{paths.get('results', settings.output / 'results.csv')} and trials/<number>/train.log", file=sys.stderr)
        return 1
    return 0
