"""The one error type for user mistakes.

    raise UserError(f"--output {path} is a file; give a directory")

A UserError (a ValueError, so `except ValueError` keeps working) is a bad input: a flag, a config value, a file's
content, a path. Its message is one line that names the value and the fix. The command line prints it as
`lorakit <command>: error: <message>` and exits with status 2 (lorakit.cli.main.main); the Python API raises it.
The tasks' TaskError is one (for data files); FileNotFoundError for a missing path is treated the same way by the
command line.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad input: one line naming the value and the fix. The CLI exits with status 2."""


class RunInterrupted(Exception):
    """SIGTERM / SIGINT during `train`: the current step finished and a checkpoint was written."""

    def __init__(self, signal_name: str, step: int, output: str, checkpoint: str):
        self.signal_name, self.step, self.output, self.checkpoint = signal_name, step, output, checkpoint
        super().__init__(f"{signal_name} at step {step}: checkpoint {checkpoint} written; continue with "
                         f"`lorakit train --output {output} --resume auto` (same settings)")

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it: 130 SIGINT, 143 SIGTERM."""
        return 130 if self.signal_name == "SIGINT" else 143
