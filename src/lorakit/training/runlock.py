"""One run per output directory: a lock file with the owner's pid and host.

    with run_lock("runs/x") as lock:   # UserError (exit 2) if a live process holds runs/x
        train(cfg, lock=lock)          # train uses the lock it is given; the file is removed on the way out

The lock is `<output>/.lock`, created with O_EXCL (one creator wins), holding {"pid", "host", "started"}. A lock
whose process is gone (same host, pid not alive) is taken over with a message; a lock of another host is
respected (its pid cannot be checked from here): delete the file by hand when that run is known to be dead.
A directory the lock created is removed again if the run leaves nothing in it (a run that failed at once).
A run takes its lock once: whoever starts it (`lorakit train`, before torch is imported, so that of two runs started
together the first one runs; else train() itself) holds it and passes it down. A second lock on a directory this
process holds is refused like any other; a lock file that names this process but is not held here was left by a
dead process whose pid this one reuses, and is taken over.

    check_run_output("runs/x", new_run=False)   # before anything is written: UserError unless runs/x is new,
                                                # empty, or a run of lorakit's (resumed or rerun in place)

`train` writes only into a directory that is missing, empty, or one of its runs (recognisable by its own files:
versions.json naming lorakit, or a start cut short that left only RUN_FILES). `new_run=True` (--new-run) starts
a run in another non-empty directory, provided none of the names a run writes (RUN_FILES) is taken there: the
user's files are never overwritten or deleted.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorakit.io.atomic import LOCK, check_output_dir
from lorakit.errors import UserError
from lorakit.training.launch import is_main_process

# every name a run writes in its output directory (training/checkpoint.py, methods.py, summary.py, the reporters)
RUN_FILES = (LOCK, "log.jsonl", "config.yaml", "versions.json", "metrics.json", "checkpoints", "adapter", "weights",
             "model", "generations_before.jsonl", "generations_after.jsonl", "tensorboard", "wandb")
_HELD: set[Path] = set()  # the directories whose lock this process holds


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_run_dir(path: Path) -> bool:
    """A run directory of lorakit's: its versions.json names lorakit, or (a run starting, or a start cut short) it
    holds nothing but the lock or log.jsonl, the other files a run writes first, and lorakit's temporaries."""
    try:
        if "lorakit" in json.loads((path / "versions.json").read_text(encoding="utf-8")):
            return True
    except (OSError, ValueError, TypeError):
        pass
    names = {entry.name for entry in path.iterdir()}
    hidden = {n for n in names if n.startswith(".") and ".tmp-" in n}
    return bool(names & {LOCK, "log.jsonl"}) and names - hidden <= {LOCK, "log.jsonl", "config.yaml", "versions.json"}


def check_run_output(output: str | os.PathLike, new_run: bool = False) -> Path:
    """`train --output`: a missing or empty directory, or one of lorakit's runs; with new_run, any directory where
    no name a run writes is taken. UserError (one line, exit 2) otherwise, before anything is written."""
    path = check_output_dir(output)
    if not path.is_dir() or not any(path.iterdir()) or is_run_dir(path):
        return path
    if not new_run:
        raise UserError(f"--output {path} is not empty and is not a lorakit run directory; choose a new or empty "
                        "directory, or pass --new-run to start a run there beside its files (none is replaced)")
    taken = sorted(name for name in RUN_FILES if (path / name).exists() or (path / name).is_symlink())
    if taken:
        raise UserError(f"--output {path}: --new-run would replace {', '.join(taken)}, which lorakit did not write "
                        "there; choose a new or empty directory")
    return path


class RunLock:
    def __init__(self, directory: str | os.PathLike, command: str = "train"):
        self.directory = Path(directory)
        self.file = self.directory / LOCK
        self.command = command
        self.created = False
        self.held = False

    def acquire(self) -> RunLock:
        check_output_dir(self.directory)
        self.key = self.directory.resolve()
        if self.key in _HELD:
            raise UserError(f"--output {self.directory} is in use by another run of this process; wait for it to "
                            "finish, or choose another --output")
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self.created = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            _HELD.add(self.key)
            return self
        raise UserError(f"--output {self.directory}: could not take its lock {self.file}; retry")

    def _take_over_if_stale(self, host: str) -> None:
        try:
            owner = json.loads(self.file.read_text())
        except FileNotFoundError:
            return  # released meanwhile: try again
        except ValueError:  # an empty or torn lock file: its writer died between create and write
            owner = {"pid": None, "host": host}
        pid, owner_host = owner.get("pid"), owner.get("host")
        # this process's pid, not in _HELD: a dead process's lock, whose pid this one got again
        if owner_host == host and (pid is None or pid == os.getpid() or not pid_alive(pid)):
            stale = self.file.with_name(f"{LOCK}.stale-{os.getpid()}")
            try:
                os.replace(self.file, stale)  # one taker wins the rename
            except FileNotFoundError:
                return
            stale.unlink()
            print(f"lorakit {self.command}: note: took over the lock of {self.directory} from process {pid}, "
                  "which is no longer running", file=sys.stderr)
            return
        raise UserError(f"--output {self.directory} is in use by lorakit {owner.get('command', 'train')} process "
                        f"{pid} on {owner_host} (started {owner.get('started')}); wait for it to finish, or choose "
                        f"another --output (if that process is gone, delete {self.file})")

    def release(self) -> None:
        if not self.held:
            return
        self.file.unlink(missing_ok=True)
        self.held = False
        _HELD.discard(self.key)
        if self.created and self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def run_lock(directory: str | os.PathLike, held: RunLock | None = None,
             command: str = "train") -> Iterator[RunLock | None]:
    """The lock of `directory` for the block: `held`, the caller's, when given (the caller releases it), else one
    taken here and released on the way out. None on a launcher's other processes: global rank 0 holds it for all.
    `lorakit merge` takes the lock of its --output and `lorakit export` that of its file's directory (command:
    what a refused second writer is told holds it)."""
    if held is not None:
        if not held.held or held.directory != Path(directory):
            raise ValueError(f"run_lock({str(directory)!r}): the lock given is that of {held.directory}, "
                             f"{'held' if held.held else 'not held'}")
        yield held
    elif not is_main_process():
        yield None
    else:
        with RunLock(directory, command) as lock:
            yield lock
