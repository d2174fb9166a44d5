"""The `lorakit` command."""
from lorakit.cli.main import main

__all__ = ["main"]
