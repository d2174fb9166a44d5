"""lorakit search: the space, trial configs, claiming, and real (tiny) searches: resume, extend, parallel workers,
several processes sharing one study, determinism across worker counts."""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from helpers import csv_argv
from lorakit.experiments import jobs
from lorakit.experiments import search
from lorakit.cli import search as search_cli
from lorakit.cli.main import main
from lorakit.experiments import search_report
from lorakit.experiments.search_settings import SearchSettings
from lorakit.experiments.search_space import Range, grid_points, toggled_targets, trial_config
from lorakit.experiments.search_space import parse_space
from lorakit.training.config import TrainConfig

# --- the space and the trial configs (no training) ---------------------------------------------------------------

def test_parse_space_flags_and_file(tmp_path):
    space = parse_space(["lora_r=1,2,4", "lora-alpha=16", "lr=1e-4..1e-2:log", "lora_key=on,off",
                         "target_modules=all-linear,query+value", "lora_dropout=0..0.2"])
    assert space["lora_r"] == (1, 2, 4)
    assert space["lora_alpha"] == (16,)
    assert space["lr"] == Range(1e-4, 1e-2, log=True)
    assert space["lora_key"] == (True, False)
    assert space["target_modules"] == ("all-linear", "query+value")
    assert space["lora_dropout"] == Range(0, 0.2)
    file = tmp_path / "space.yaml"
    file.write_text("space:\n  lora_r: [8, 16]\n  lr: {low: 1e-4, high: 1e-3, log: true}\n  method: lora\n")
    space = parse_space(["lora_r=2"], file)  # flags override the file
    assert space == {"lora_r": (2,), "lr": Range(1e-4, 1e-3, True), "method": ("lora",)}


@pytest.mark.parametrize("flags, message", [
    (["lora_r"], "expected NAME=V1"),
    (["nonsense=1,2"], "not a training option"),
    (["output=a,b"], "not a training option"),
    ([], "empty"),
    (["lr=1e-2..1e-4"], "LOW must be below HIGH"),
])
def test_parse_space_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_space(flags)


def test_grid_points_every_combination():
    points = grid_points({"lora_r": (1, 2), "lora_alpha": (1, 16, 64)})
    assert len(points) == 6
    assert points[0] == {"lora_r": 1, "lora_alpha": 1} and points[-1] == {"lora_r": 2, "lora_alpha": 64}
    with pytest.raises(ValueError, match="random or tpe"):
        grid_points({"lr": Range(1e-4, 1e-2)})


def test_toggles_and_trial_config(tmp_path):
    assert toggled_targets(None, {"key": False}) == ("query", "value", "projection", "mlp")  # from all-linear
    assert toggled_targets(("query", "value"), {"key": True, "head": True}) == ("query", "key", "value", "head")
    with pytest.raises(ValueError, match="every target"):
        toggled_targets(("query",), {"query": False})
    base = {"model": "minilm", "task": "sst2", "epochs": 1}
    cfg = trial_config(base, {"lora_r": 4, "lora_alpha": 8}, tmp_path / "t0")
    assert (cfg.lora_r, cfg.lora_alpha, cfg.epochs, cfg.output) == (4, 8, 1, str(tmp_path / "t0"))
    assert trial_config(base, {"method": "full"}, tmp_path).lr == 5e-5  # lr still defaults per method
    assert trial_config({**base, "lr": 1e-2}, {"method": "full"}, tmp_path).lr == 1e-2
    assert trial_config(base, {"target_modules": "query+value"}, tmp_path).target_modules == ("query", "value")
    assert trial_config({**base, "target_modules": ("query", "value")}, {"lora_mlp": True},
                        tmp_path).target_modules == ("query", "value", "mlp")
    with pytest.raises(ValueError):
        trial_config(base, {"lora_dropout": 1.5}, tmp_path)


def test_settings_checks(tmp_path):
    with pytest.raises(ValueError, match="--n-trials"):
        SearchSettings(base={}, space={"lora_r": (1,)}, output=tmp_path, sampler="tpe")
    with pytest.raises(ValueError, match="--workers"):
        SearchSettings(base={}, space={"lora_r": (1,)}, output=tmp_path, workers=0)


def test_claims_are_exclusive_and_duplicates_skipped(tmp_path):
    """Two Search objects on one study (as two processes would be): each grid point is claimed once, and a point
    enqueued twice (two processes enqueueing at the same moment) runs once."""
    settings = SearchSettings(base={}, space={"lora_r": (1, 2)}, output=tmp_path)
    first, second = search.Search(settings), search.Search(settings)
    assert first.enqueue_grid() == 2 and second.enqueue_grid() == 0
    second.study.enqueue_trial({"lora_r": 1})  # the race: a copy of trial 0's point
    claimed = [first._claim(), second._claim(), first._claim()]
    assert [t.number for t in claimed] == [0, 1, 2]
    assert second._claim() is None
    assert first._duplicate_of(claimed[2], {"lora_r": 1}) == 0
    assert first._duplicate_of(claimed[1], {"lora_r": 2}) is None


def test_cli_parser_help_and_base_values():
    parser = argparse.ArgumentParser(prog="lorakit")
    sub = parser.add_subparsers(dest="command")
    search_cli.add_search_parser(sub)
    text = sub.choices["search"].format_help()
    for flag in ("--space", "--space-file", "--sampler", "--n-trials", "--workers", "--storage", "--prune",
                 "--config", "--model", "--data-dir", "--max-train-samples", "--epochs", "--lora-r", "--method"):
        assert flag in text
    args = parser.parse_args(["search", "--model", "minilm", "--epochs", "1", "--lora-query", "--lora-value",
                              "--space", "lora_r=1,2", "--output", "runs/s"])
    settings = search_cli.settings_from_args(args)
    assert settings.base == {"model": "minilm", "epochs": 1, "output": "runs/s", "target_modules": ("query", "value")}
    assert settings.space == {"lora_r": (1, 2)} and settings.output == Path("runs/s")


# --- real searches on a tiny BERT (MiniLM's tokenizer) and 500 SST-2 sentences (conftest's tiny_run) -------------

def _rows(output: Path) -> list[dict]:
    return list(csv.DictReader((output / "results.csv").open()))


def _overlap(a: dict, b: dict) -> bool:
    start = max(datetime.fromisoformat(a["start"]), datetime.fromisoformat(b["start"]))
    return start < min(datetime.fromisoformat(a["end"]), datetime.fromisoformat(b["end"]))


CLI = textwrap.dedent("""
    import argparse, sys
    from lorakit.cli.search import add_search_parser
    parser = argparse.ArgumentParser(prog="lorakit")
    add_search_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(sys.argv[1:])
    sys.exit(args.func(args))
""")


def _cli(base: dict, *flags: str) -> subprocess.Popen:
    """`lorakit search` in a process of its own (cli/main.py wires the same parser)."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in base.items()]
    return subprocess.Popen([sys.executable, "-c", CLI, "search", *argv, *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_grid_search_resumes_extends_and_runs_in_parallel(tiny_run, tmp_path):
    output = tmp_path / "search"
    settings = SearchSettings(base=tiny_run, space=parse_space(["lora_r=2,4"]), output=output, workers=2)
    study, ran = search.run_search(settings)
    paths = search_report.write_reports(study, settings)
    rows = _rows(output)
    assert ran == 2 and [r["status"] for r in rows] == ["complete", "complete"]
    assert {"trial", "lora_r", "objective", "validation_accuracy", "validation_loss", "trainable_params",
            "train_seconds", "peak_memory_mb", "seconds", "start", "end", "status", "error"} <= set(rows[0])
    assert _overlap(rows[0], rows[1]), "--workers 2 should run the two trials at the same time"
    assert int(rows[0]["trainable_params"]) < int(rows[1]["trainable_params"])  # r 2 < r 4
    for key in ("results", "best", "summary", "pareto", "curves", "heatmap"):
        assert paths[key].is_file(), key
    assert (output / "study.db").is_file() and (output / "trials" / "0" / "log.jsonl").is_file()
    best = TrainConfig.from_yaml((output / "best.yaml").read_text())  # a ready-to-run `lorakit train --config`
    assert best.lora_r in (2, 4) and best.output == "runs/sst2-lora" and best.model == tiny_run["model"]
    assert "| trial | lora_r |" in (output / "summary.md").read_text()

    # the same command again: nothing new to run
    study, ran = search.run_search(settings)
    assert ran == 0 and len(_rows(output)) == 2

    # the same grid with --workers 1, in two `lorakit search` processes sharing one new study: each point runs once,
    # with the same metrics as under --workers 2. Accuracy is identical; the loss may differ in the 7th digit, as
    # 2 torch threads (instead of 1) sum in another order (--threads N makes trials bitwise equal across --workers)
    shared = tmp_path / "shared"
    processes = [_cli(tiny_run, "--space=lora_r=2,4", "--output", str(shared), "--workers=1") for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    started = [line for text in outputs for line in text.splitlines() if " started: " in line]
    assert len(started) == 2, outputs  # a point enqueued by both processes at once runs once
    by_r = {r["lora_r"]: r for r in _rows(shared)}
    assert sorted(by_r) == ["2", "4"]
    for row in rows:
        assert by_r[row["lora_r"]]["validation_accuracy"] == row["validation_accuracy"]
        assert float(by_r[row["lora_r"]]["validation_loss"]) == pytest.approx(float(row["validation_loss"]), rel=1e-5)

    # the grid raised to 4 points: only the 2 new ones run
    bigger = SearchSettings(base=tiny_run, space=parse_space(["lora_r=2,4,8,16"]), output=output, workers=2)
    study, ran = search.run_search(bigger)
    search_report.write_reports(study, bigger)
    rows = _rows(output)
    assert ran == 2 and sorted(int(r["lora_r"]) for r in rows) == [2, 4, 8, 16]
    assert all(r["status"] == "complete" for r in rows)
    assert yaml.safe_load((output / "best.yaml").read_text())["lora_r"] in (2, 4, 8, 16)


def test_failed_trials_are_recorded_and_the_search_goes_on(tiny_run, tmp_path):
    """An invalid value fails its trial before any process starts, an error inside train() fails it in its
    process; both are recorded with their error and the search goes on."""
    settings = SearchSettings(base=tiny_run, output=tmp_path,
                              space=parse_space(["lora_dropout=1.5,0.0", f"model={tmp_path / 'no-such-model'}"]))
    study, ran = search.run_search(settings)
    search_report.write_reports(study, settings)
    rows = {r["lora_dropout"]: r for r in _rows(tmp_path)}
    assert ran == 1 and [r["status"] for r in rows.values()] == ["fail", "fail"]
    assert "dropout" in rows["1.5"]["error"] and "no-such-model" in rows["0.0"]["error"]
    assert "Failed and pruned trials" in (tmp_path / "summary.md").read_text()
    assert search_report.best_trial(study) is None and not (tmp_path / "best.yaml").exists()


def test_interrupted_and_stale_trials_are_retried(tmp_path, monkeypatch):
    """Ctrl-C fails the running trials and enqueues a retry of each; so does a heartbeat older than the grace
    period (a killed process or machine). The failed originals leave the results; their retries take their place."""
    monkeypatch.setattr(search, "GRACE_S", 1)
    monkeypatch.setattr(search, "HEARTBEAT_S", 1)
    settings = SearchSettings(base={}, space={"lora_r": (1, 2)}, output=tmp_path)
    first = search.Search(settings)
    first.enqueue_grid()
    trial = first._claim()
    first.running[0] = search._Running(trial, 1, subprocess.Popen(["sleep", "30"]), tmp_path, jobs.now())
    first._interrupt()
    stale = first._claim()  # trial 1: claimed, heartbeat recorded, then its process "dies"
    first.storage.record_heartbeat(first.storage.get_trial_id_from_study_id_trial_number(first.study_id, 1))
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(first.study)
    trials = first.study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert [t.system_attrs["fixed_params"] for t in trials[2:]] == [{"lora_r": 1}, {"lora_r": 2}]
    assert search_report.superseded_trials(trials) == {trial.number, stale.number}
    assert search_report.trial_rows(first.study, settings.space) == []  # retries still waiting: no rows yet
    assert search.Search(settings).enqueue_grid() == 0  # the grid points exist: nothing new


def test_pruning_reports_each_evaluation_and_stops_hopeless_trials(tmp_path):
    """--prune: the trial process's on_evaluate hook (train(cfg, on_evaluate=...)) reports the best metric so far;
    MedianPruner stops a trial below the median of earlier trials at the same step."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    for value in (0.9, 0.8):
        earlier = study.ask()
        earlier.report(value, 10)
        study.tell(earlier, value)
    storage = optuna.storages.RDBStorage(url)
    for best, pruned in ((0.95, False), (0.5, True)):
        trial = study.ask()
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("p"), trial.number)
        state = SimpleNamespace(best_metric=best, step=10)
        report = jobs.pruning_reporter({"storage": url, "study": "p", "trial_id": trial_id})
        if pruned:
            with pytest.raises(optuna.TrialPruned, match="pruned at step 10"):
                report(state)
        else:
            report(state)
        assert storage.get_trial(trial_id).intermediate_values == {10: best}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_random_and_tpe_run_until_the_study_holds_n_trials(tmp_path, sampler):
    space = parse_space(["lr=1e-4..1e-2:log", "lora_r=4,8", "lora_dropout=0..0.2"])
    settings = SearchSettings(base={}, space=space, output=tmp_path, sampler=sampler, n_trials=3)
    first = search.Search(settings)
    numbers = []
    while (trial := first._claim()) is not None:
        params = first._params(trial, None)
        assert 1e-4 <= params["lr"] <= 1e-2 and params["lora_r"] in (4, 8) and 0 <= params["lora_dropout"] <= 0.2
        first.study.tell(trial, params["lr"])
        numbers.append(trial.number)
    assert numbers == [0, 1, 2]
    assert search.Search(settings)._claim() is None  # the same command again: nothing to run
    more = search.Search(SearchSettings(base={}, space=space, output=tmp_path, sampler=sampler, n_trials=4))
    assert more._claim().number == 3 and more._claim() is None


def test_postgres_storage_without_a_driver_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    for driver in ("psycopg", "psycopg2"):  # `import psycopg2` now fails, installed or not
        monkeypatch.setitem(sys.modules, driver, None)
    argv = ["search", "--storage", "postgresql://user:secret@db-host/lorakit", "--space", "lora_r=1,2",
            "--output", str(tmp_path / "search")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no Python driver" in err and "psycopg2" in err and "pip install 'lorakit[postgres]'" in err
    assert "secret" not in err  # the password is not echoed
    assert not (tmp_path / "search").exists()
    assert main(argv[:2] + ["nosuchdb://x"] + argv[3:]) == 2
    assert "not a database URL" in capsys.readouterr().err


def test_a_bare_postgresql_url_takes_the_installed_psycopg2(tmp_path, monkeypatch):
    import sys
    import types

    from lorakit.experiments.search import SearchSettings

    monkeypatch.setitem(sys.modules, "psycopg", None)  # SQLAlchemy 2.1's default driver missing
    monkeypatch.setitem(sys.modules, "psycopg2", types.ModuleType("psycopg2"))  # what lorakit[postgres] installs
    settings = SearchSettings(base={}, space={"lora_r": (1,)}, output=tmp_path,
                              storage="postgresql://user:pw@db-host/lorakit")
    assert settings.storage_url == "postgresql+psycopg2://user:pw@db-host/lorakit"


def test_search_exits_1_when_every_trial_failed(tiny_inputs, tmp_path, capsys):
    status = main([*csv_argv(tiny_inputs, "search"), "--max-steps", "1", "--space",
                   f"model={tmp_path / 'none-1'},{tmp_path / 'none-2'}", "--output", str(tmp_path / "s")])
    assert status == 1
    assert "every trial failed (2)" in capsys.readouterr().err


@pytest.mark.parametrize("space, expected", [
    ("lora_r=0,-1", "--space lora_r=0: LoraConfig: r must be a positive integer"),
    ("lora_dropout=0.1,1.5", "--space lora_dropout=1.5: LoraConfig: dropout must be in [0, 1)")])
def test_a_bad_space_value_is_one_line_before_the_study_is_written(tiny_inputs, tmp_path, capsys, space, expected):
    """Issue 28 D: `--space lora_r=0,-1` was found only after the study was written, in every trial."""
    assert main([*csv_argv(tiny_inputs, "search"), "--space", space, "--output", str(tmp_path / "s")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_trial_processes_import_nothing_from_the_working_directory(tiny_inputs, tmp_path, monkeypatch):
    """Issue 28 A: trials started as `python -m lorakit.experiments.jobs` put the working directory first on
    sys.path, so a concurrent.py there ran in every trial."""
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "concurrent.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    (here / "json.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    monkeypatch.chdir(here)
    monkeypatch.setenv("PYTHONPATH", f"{jobs.__file__.rsplit('/lorakit/', 1)[0]}{':'}")  # '' = the cwd too
    cfg = TrainConfig(model=str(tiny_inputs / "model"), task="csv", train_file=str(tiny_inputs / "train.csv"),
                      eval_file=str(tiny_inputs / "dev.csv"), batch_size=8, max_steps=1, max_length=32,
                      output=str(tmp_path / "trial"))
    result = jobs.run_job(cfg, tmp_path / "trial", threads=1)
    assert sorted(p.name for p in here.iterdir()) == ["concurrent.py", "json.py"]
    assert result["status"] == "complete", (tmp_path / "trial" / jobs.LOG).read_text()[-2000:]


def _killed_at_once(cfg, directory, *args, **kwargs):
    """search.launch's stand-in: a trial process that the kernel kills at once (SIGKILL, as the OOM killer)."""
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["sh", "-c", "kill -9 $$"])


def test_a_trial_killed_by_a_signal_is_rerun_by_the_next_search_and_the_search_fails(tiny_inputs, tmp_path,
                                                                                    monkeypatch, capsys):
    """Issue 28 B: a trial whose process was killed (OOM killer, kill -9) was recorded as failed, never rerun, and
    the search exited 0."""
    monkeypatch.setattr(search, "launch", _killed_at_once)
    out = tmp_path / "s"
    argv = [*csv_argv(tiny_inputs, "search"), "--max-steps", "1", "--space", "lora_r=1,2", "--output", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 grid point(s) have no result yet (trial(s) [0, 1] killed by a signal)" in err
    settings = search_cli.settings_from_args(search_cli.add_search_parser(
        argparse.ArgumentParser().add_subparsers()).parse_args(argv[1:]))
    again = search.Search(settings)
    assert again.enqueue_grid() == 2  # the next search run runs both points again
    waiting = again.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.system_attrs["fixed_params"]["lora_r"] for t in waiting) == [1, 2]
    assert len(search.missing_points(again.study, settings)) == 2
    assert again.enqueue_grid() == 0  # enqueued once


def test_search_stopped_by_sigterm_exits_143_as_train(tiny_inputs, tmp_path, monkeypatch, capsys):
    """Issue 28 E: search exited 130 on SIGTERM, train 143; both are now 128 + the signal."""
    import os
    import signal

    monkeypatch.setattr(search.Search, "run", lambda self: os.kill(os.getpid(), signal.SIGTERM))
    saved = signal.getsignal(signal.SIGTERM)
    try:
        status = main([*csv_argv(tiny_inputs, "search"), "--max-steps", "1", "--space", "lora_r=1",
                       "--output", str(tmp_path / "s")])
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert status == 143
    assert "interrupted; the same command continues" in capsys.readouterr().out
