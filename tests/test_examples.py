"""Every notebook in examples/ runs top to bottom (reduced size: LORAKIT_EXAMPLE_SMALL=1)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    """Each example runs; one that writes into its output folder runs again into the same folder (a newcomer
    reruns a notebook), which reuses what the first run finished."""
    env = {**os.environ, "LORAKIT_EXAMPLE_SMALL": "1", "HF_HUB_OFFLINE": "1", "LORAKIT_EXAMPLE_OUT": str(tmp_path)}
    runs = 2 if "LORAKIT_EXAMPLE_OUT" in script.read_text() else 1
    for run in range(runs):
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"run {run + 1}:\n" + proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_header_states_size_and_time(script):
    """A newcomer knows what an example costs before running it: its first markdown cell says so."""
    header = script.read_text().split("# %%\n")[0]
    assert "Size and time:" in header and ("minute" in header or " s " in header)
