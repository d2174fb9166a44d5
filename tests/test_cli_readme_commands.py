"""Every `lorakit` line of README's bash blocks parses with the real parser, one test per line."""
from __future__ import annotations

from pathlib import Path

import pytest


def readme_commands() -> list[str]:
    """The `lorakit ...` lines of README's bash blocks (continuations joined, comments cut; lines with '...' left
    out: they abbreviate)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("lorakit ") and "..." not in line:
                commands.append(line)
    return commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    import shlex

    from lorakit.cli.main import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits (code 2) on an unknown flag
    assert callable(args.func)
