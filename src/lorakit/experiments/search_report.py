"""The results of a `lorakit search` study, from the whole study (the trials of every process and machine).

    paths = write_reports(study, settings)     # results.csv, best.yaml, summary.md, heatmap / pareto / curves .png
    rows = trial_rows(study, settings.space)   # a row per trial: params, objective, metrics, time, error

Retried trials and duplicate grid points are left out (superseded_trials); best.yaml is the best trial's config, for
`lorakit train --config best.yaml`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import yaml
from optuna.trial import TrialState

from lorakit.experiments import report
from lorakit.experiments.search_space import Range
from lorakit.training.config import TrainConfig

if TYPE_CHECKING:
    from lorakit.experiments.search_settings import SearchSettings

PLOTS = {"heatmap": "heatmap.png", "pareto": "pareto.png", "curves": "curves.png"}


def superseded_trials(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Trial numbers that do not count: retried ones (a retry took their place) and duplicate grid points."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    dropped = {t.number for t in trials if "duplicate_of" in t.user_attrs or t.user_attrs.get("orphaned") == t.number}
    return retried | dropped  # orphaned: its process died; a retry or a re-enqueued copy runs the point again


def shown_params(params: dict) -> str:
    return " ".join(f"{k}={report.fmt(v)}" for k, v in params.items())


def axis_scales(space: dict) -> dict[str, str]:
    """{searched name: "log" | "linear" (a Range) or "grid" (a list of values)}, for the heatmap's axes."""
    return {name: ("log" if values.log else "linear") if isinstance(values, Range) else "grid"
            for name, values in space.items()}


def flat_metrics(metrics: dict) -> dict:
    """metrics.json as one flat row: <split>_<metric> for every evaluation metric, then the run's figures."""
    row = {f"{split}_{name}": value for split, values in metrics["eval"].items() for name, value in values.items()}
    for key in ("best_step", "steps", "trainable_params", "total_params", "trainable_percent", "train_seconds",
                "train_examples_per_s", "peak_memory_mb"):
        row[key] = metrics[key]
    return row


def trial_rows(study: optuna.Study, space: dict) -> list[dict]:
    """One row per trial (retried and duplicate ones left out): number, status, the space's params, objective,
    the metrics, time, memory, timestamps, error, output directory."""
    trials = study.get_trials(deepcopy=False)
    replaced = superseded_trials(trials)
    rows = []
    for t in trials:
        if t.number in replaced or t.state == TrialState.WAITING:
            continue
        params = t.user_attrs.get("params") or t.system_attrs.get("fixed_params") or t.params
        config = t.user_attrs.get("config", {})
        row = {"trial": t.number, "status": t.state.name.lower()}
        row.update({name: params.get(name) for name in space})
        row["objective"] = t.value
        row.update(t.user_attrs.get("metrics", {}))
        for name in ("lora_r", "lora_alpha", "lr", "method"):  # for the heatmap and the summary, when not searched
            row.setdefault(name, config.get(name))
        row.update({key: t.user_attrs.get(key) for key in ("seconds", "start", "end", "error", "output")})
        rows.append(row)
    return rows


def objective_name(study: optuna.Study, metric: str | None) -> str:
    names = [t.user_attrs["objective_name"] for t in study.get_trials(deepcopy=False)
             if "objective_name" in t.user_attrs]
    return metric or (names[0] if names else "objective")


TIE_BREAK = "ties on the objective go to the lower validation loss, then to fewer trainable parameters"


def _main_loss(values: dict) -> float:
    """The first split's loss among flat metrics (<split>_loss; the main split comes first); inf if none."""
    losses = [v for k, v in values.items() if k.endswith("_loss") and isinstance(v, (int, float))]
    return float(losses[0]) if losses else math.inf


def rank_key(row: dict, maximize: bool) -> tuple[float, float, float]:
    """Sort key of a trial row (best first): the objective, then the lower loss, then fewer trainable parameters."""
    objective = row["objective"]
    return (-objective if maximize else objective, _main_loss(row), row.get("trainable_params") or math.inf)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial by rank_key (optuna's own best_trial takes the first of tied trials)."""
    trials = study.get_trials(deepcopy=False)
    replaced = superseded_trials(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.number not in replaced]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return min(complete, key=lambda t: rank_key({"objective": t.value, **t.user_attrs.get("metrics", {})}, maximize),
               default=None)


def best_yaml(trial: optuna.trial.FrozenTrial, name: str, study_name: str) -> str:
    """The best trial's config as a `lorakit train --config` file (output and resume left to the new run)."""
    config = {k: v for k, v in trial.user_attrs["config"].items() if k not in ("output", "resume")}
    header = (f"# best trial ({trial.number}) of lorakit search study {study_name!r}: {name} {trial.value:.4f}\n"
              f"# searched: {shown_params(trial.user_attrs['params'])}\n"
              "# run it: lorakit train --config best.yaml --output runs/best\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def summary_markdown(rows: list[dict], space: dict, name: str, s: SearchSettings, plots: dict) -> str:
    done = [r for r in rows if r["status"] == "complete"]
    done.sort(key=lambda r: rank_key(r, s.direction == "maximize"))
    counts = {status: sum(r["status"] == status for r in rows) for status in ("complete", "pruned", "fail", "running")}
    base = TrainConfig.from_dict({**s.base, "output": None})
    lines = [f"# lorakit search: {s.study_name}", "",
             f"{len(rows)} trials ({', '.join(f'{n} {k}' for k, n in counts.items() if n)}), sampler {s.sampler}, "
             f"objective {name} ({s.direction}).", "",
             f"Base: model {base.model}, task {base.task}, method {base.method}, "
             f"{base.max_train_samples or 'all'} train / {base.max_eval_samples or 'all'} eval examples, "
             f"max_length {base.max_length}, epochs {base.epochs}, batch size {base.batch_size}, seed {base.seed}.", ""]
    if done:
        best = done[0]
        lines += [f"**Best: trial {best['trial']}, {name} {best['objective']:.4f}** with "
                  f"{shown_params({k: best[k] for k in space})} ({best.get('trainable_params', 0):,} trainable parameters): "
                  "`lorakit train --config best.yaml`", "", f"Trials are ranked by {name}; {TIE_BREAK}.", ""]
    columns = {"trial": "trial", **{k: k for k in space}, "objective": name, "trainable_params": "trainable params",
               "train_seconds": "train s", "peak_memory_mb": "peak MB", "status": "status"}
    shown = done[:30]
    lines += [f"## Trials by {name}" + (f" (best 30 of {len(done)})" if len(done) > 30 else ""), "",
              report.markdown_table(shown, columns), ""]
    failed = [r for r in rows if r["status"] in ("fail", "pruned")]
    if failed:
        lines += ["## Failed and pruned trials", "",
                  report.markdown_table(failed, {"trial": "trial", **{k: k for k in space}, "status": "status",
                                                 "error": "error"}), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{key}]({path.name})" for key, path in plots.items()] + [""]
    return "\n".join(lines)


def write_reports(study: optuna.Study, s: SearchSettings, curves: int = 5) -> dict[str, Path]:
    """results.csv, best.yaml, summary.md and the plots, from the whole study. Returns {name: path}."""
    rows = trial_rows(study, s.space)
    name = objective_name(study, s.metric)
    out = {"results": report.write_csv(rows, s.output / "results.csv")}
    best = best_trial(study)
    if best is not None:
        (s.output / "best.yaml").write_text(best_yaml(best, name, s.study_name))
        out["best"] = s.output / "best.yaml"
    maximize = s.direction == "maximize"
    done = [r for r in rows if r["status"] == "complete"]
    done.sort(key=lambda r: rank_key(r, maximize))
    plots = {
        "heatmap": report.plot_heatmap(done, "objective", s.output / PLOTS["heatmap"], label=name,
                                       scales=axis_scales(s.space), maximize=maximize),
        "pareto": report.plot_pareto(done, "objective", s.output / PLOTS["pareto"], label=name, maximize=maximize),
        "curves": report.plot_curves({f"trial {r['trial']}: {shown_params({k: r[k] for k in s.space})} "
                                      f"({r['objective']:.3f})": Path(r["output"]) / "log.jsonl"
                                      for r in done[:curves] if r.get("output")}, s.output / PLOTS["curves"],
                                     title=f"training loss of the {min(curves, len(done))} best trials"),
    }
    plots = {key: path for key, path in plots.items() if path is not None}
    (s.output / "summary.md").write_text(summary_markdown(rows, s.space, name, s, plots))
    out.update(summary=s.output / "summary.md", **plots)
    return out
