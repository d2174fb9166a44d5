"""One run per output directory: a lock file with the owner's pid and host.

    with RunLock("runs/x"):          # UserError (exit 2) if a live process holds runs/x
        ...                          # train; the lock file is removed on the way out

The lock is `<output>/.lock`, created with O_EXCL (one creator wins), holding {"pid", "host", "started"}. A lock
whose process is gone (same host, pid not alive) is taken over with a message; a lock of another host is
respected (its pid cannot be checked from here): delete the file by hand when that run is known to be dead.
A directory the lock created is removed again if the run leaves nothing in it (a run that failed at once).
Taking a lock this process already holds is a no-op (`lorakit train` locks before its heavy imports, then train()).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from lorakit.io.atomic import check_output_dir
from lorakit.errors import UserError
from lorakit.training.launch import is_main_process

LOCK = ".lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class _HeldHere(Exception):
    pass


class RunLock:
    def __init__(self, directory: str | os.PathLike, command: str = "train"):
        self.directory = Path(directory)
        self.file = self.directory / LOCK
        self.command = command
        self.created = False
        self.held = False

    def acquire(self) -> RunLock:
        check_output_dir(self.directory)
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self.created = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    self._take_over_if_stale(me["host"])
                except _HeldHere:
                    return self  # nested: the outer holder releases it
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
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
        if owner_host == host and pid == os.getpid():  # this process holds it already (the CLI, then train())
            raise _HeldHere
        if owner_host == host and (pid is None or not pid_alive(pid)):
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
        if self.created and self.directory.is_dir() and not any(self.directory.iterdir()):
            self.directory.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def early_train_lock(argv: list[str]) -> RunLock | None:
    """`lorakit train ... --output DIR`: take DIR's lock before the command line is parsed and the heavy modules
    are imported, so that of two runs started moments apart the first one runs. None for anything else (train
    locks again, a no-op then, once the settings are resolved)."""
    if not argv or argv[0] != "train" or "--output" not in argv[:-1] or "-h" in argv or "--help" in argv:
        return None
    if not is_main_process():  # torchrun: the global rank 0 alone holds the lock
        return None
    return RunLock(argv[argv.index("--output") + 1]).acquire()
