"""Run-time adapter loading confined to --adapter-root, in a way that cannot be raced: every path component is opened
relative to a directory handle of the root (O_NOFOLLOW, O_DIRECTORY for directories), and the adapter's files are
copied through those handles into a private temporary directory at check time; the model loads the copy.

    with confined_copy("runs/sql", "/srv/adapters") as private:   # PathEscape (403) / NotAnAdapter (400)
        served.add("sql", private)                                 # later, on the model thread: reads the copy only

A symlink anywhere under the root (a directory, or a file inside a real directory) is refused, a path with `..`
or an absolute path outside the root too. Errors never quote the content of a file: they say only that the path is
not an adapter directory under the root.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

CONFIG_NAME, WEIGHTS_NAME, RECORD = "adapter_config.json", "adapter_model.safetensors", "lorakit.json"
SUBDIR = "adapter"  # a `lorakit train` output keeps its adapter here
MAX_FILE_BYTES = 4 << 30  # one adapter file; larger is not an adapter
CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # NONBLOCK: a FIFO won't hang


class PathEscape(PermissionError):
    """The path leads outside the root (`..`, an absolute path elsewhere, a symlink): HTTP 403."""


class NotAnAdapter(ValueError):
    """Nothing loadable there: HTTP 400."""


def components(path: str, root: str) -> list[str]:
    """The path's parts relative to the root; PathEscape for `..`, an absolute path outside it, or a NUL."""
    if "\x00" in path:
        raise NotAnAdapter("lora_path must not contain a NUL character")
    if os.path.isabs(path):
        real = os.path.realpath(root)
        for base in (os.path.abspath(root), real):
            if path == base or path.startswith(base.rstrip("/") + "/"):
                path = path[len(base):]
                break
        else:
            raise PathEscape(f"lora_path {path!r} is outside the adapter root; give a directory under {root}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathEscape(f"lora_path {path!r} leaves the adapter root (`..`); give a directory under {root}")
    return parts


def open_dir(name: str, parent: int, shown: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as err:
        if err.errno == errno.ELOOP or is_link(name, parent):
            raise PathEscape(f"lora_path {shown!r} goes through a symlink; adapters load from real directories "
                             "under the adapter root only") from None
        raise NotAnAdapter(f"lora_path {shown!r} is not an adapter directory under the adapter root") from None


def is_link(name: str, parent: int) -> bool:
    """Only to word an error: the open itself already refused to follow it."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def copy_file(name: str, parent: int, shown: str, into: Path) -> bool:
    """Copy regular file `name` of directory `parent` into `into` through its fd; False when it is absent."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return False
    except OSError:
        raise PathEscape(f"lora_path {shown!r}: {name} is not a regular file (a symlink?); adapters load from real "
                         "files under the adapter root only") from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            raise NotAnAdapter(f"lora_path {shown!r}: {name} is not an adapter file")
        with open(into / name, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    return True


def check_json_object(file: Path, shown: str) -> None:
    if not file.is_file():
        return
    try:
        ok = isinstance(json.loads(file.read_bytes()), dict)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise NotAnAdapter(f"lora_path {shown!r}: {file.name} is not a JSON object; it is not an adapter")


def copy_adapter(fd: int, shown: str, into: Path) -> None:
    """adapter_config.json, adapter_model.safetensors and lorakit.json of directory `fd` (or of its adapter/)."""
    if not copy_file(CONFIG_NAME, fd, shown, into):
        sub = open_dir(SUBDIR, fd, shown)
        try:
            if not copy_file(CONFIG_NAME, sub, shown, into):
                raise NotAnAdapter(f"lora_path {shown!r} holds no LoRA adapter ({CONFIG_NAME}); lorakit serve "
                                   "serves adapters")
            return copy_rest(sub, shown, into)
        finally:
            os.close(sub)
    copy_rest(fd, shown, into)


def copy_rest(fd: int, shown: str, into: Path) -> None:
    if not copy_file(WEIGHTS_NAME, fd, shown, into):
        raise NotAnAdapter(f"lora_path {shown!r} has no {WEIGHTS_NAME}; adapters load from safetensors only "
                           "(no pickle files)")
    copy_file(RECORD, fd, shown, into)


def copy_from_root(path: str, root: str, into: Path) -> None:
    """The adapter files at `path` under `root` into `into`, read through handles that follow no symlink."""
    parts = components(path, root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))  # the root itself may be a link
    try:
        for part in parts:
            nxt = open_dir(part, fd, path)
            os.close(fd)
            fd = nxt
        copy_adapter(fd, path, into)
    finally:
        os.close(fd)
    check_json_object(into / CONFIG_NAME, path)
    check_json_object(into / RECORD, path)


@contextlib.contextmanager
def confined_copy(path: str, root: str | None):
    """A private directory holding a copy of the adapter at `path` under `root`; removed afterwards."""
    if root is None:
        raise PathEscape("loading adapters at run time is off: start the server with --adapter-root DIR")
    private = Path(tempfile.mkdtemp(prefix="lorakit-adapter-"))
    try:
        copy_from_root(path, root, private)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
