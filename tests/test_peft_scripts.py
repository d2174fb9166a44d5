"""The PEFT-script corpus (tests/peft_scripts/*.py): each script, written as PEFT's docs write them, runs twice, with
`peft` and with only its import lines changed to `lorakit.peft`; what it prints (the trainable-parameters line, and a
JSON dict of numbers and lists as its last line) must agree: numbers to 1e-5, everything else exactly."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent / "peft_scripts").glob("*.py"))
IMPORT_LINE = re.compile(r"^(from peft import |import peft$|import peft\s)", re.M)


def to_lorakit(source: str) -> str:
    """The one-line switch: `from peft import ...` -> `from lorakit.peft import ...`, `import peft` ->
    `import lorakit.peft as peft`; nothing else in the script changes."""
    source = re.sub(r"^from peft import ", "from lorakit.peft import ", source, flags=re.M)
    return re.sub(r"^import peft$", "import lorakit.peft as peft", source, flags=re.M)


def run(source: str, path: Path) -> list[str]:
    """Run a script's source in this process (a fresh namespace), return its printed lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    return out.getvalue().splitlines()


def assert_same(ours, theirs, where: str = "") -> None:
    if isinstance(theirs, float) or isinstance(ours, float):
        assert math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-5), f"{where}: lorakit.peft {ours} != peft {theirs}"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(ours) == sorted(theirs), f"{where}: keys {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, f"{where}: lorakit.peft {ours!r} != peft {theirs!r}"


def test_the_corpus_is_there():
    assert len(SCRIPTS) >= 6
    for path in SCRIPTS:
        assert IMPORT_LINE.search(path.read_text()), f"{path.name} does not import peft"
        assert "lorakit" not in path.read_text(), f"{path.name} names lorakit: the switch must be the import line alone"


# a bitsandbytes base costs ~12 s on two CPU cores: in the slow suite
CASES = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if "BitsAndBytesConfig" in p.read_text() else [])
         for p in SCRIPTS]


@pytest.mark.parametrize("path", CASES)
def test_a_peft_script_runs_the_same_on_lorakit_peft(path, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the scripts' tempfile.mkdtemp() directories
    source = path.read_text()
    if "BitsAndBytesConfig" in source:
        pytest.importorskip("bitsandbytes")
    theirs, ours = run(source, path), run(to_lorakit(source), path)
    counts = [line for line in theirs if line.startswith("trainable params:")]
    assert counts == [line for line in ours if line.startswith("trainable params:")]
    assert_same(json.loads(ours[-1]), json.loads(theirs[-1]), path.stem)
