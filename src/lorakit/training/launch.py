"""What a launcher (torchrun, accelerate launch) tells a process through its environment: the world size, its
global and local rank, and so whether it is the main process (the one that writes files). Light on purpose: the
command line reads it before torch is imported."""
from __future__ import annotations

import os


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Global rank 0, or no launcher: the process that writes files and holds the run lock."""
    return env_rank() == 0
