"""How lorakit writes and reads its own files: nothing is ever half-written, and a bad file is named.

    write_text_atomic(path, text)           # temp file + fsync + rename: the old text or the new, never a mix
    with atomic_dir("runs/x/adapter") as tmp:   # fill tmp; it replaces runs/x/adapter in one rename
        ...
    remove_dir(path)                        # rename to a hidden trash name first, then delete
    recover(directory)                      # at start: put back an interrupted replacement, drop temporaries
    read_json(path), read_safetensors(path) # a damaged file is a UserError naming it
    read_user_text(path, "--config")        # UTF-8, or text with a byte-order mark (UTF-16 from Windows editors)

Every temporary name is hidden and says what it is: `.NAME.tmp-XXXX` (being written), `.NAME.old` (the previous
version, moved aside while the new one is renamed in), `.NAME.trash-XXXX` (being deleted). A kill at any moment
leaves NAME complete (old or new version) or, inside the two renames of a replacement, `.NAME.old` complete:
`recover` renames it back. Files are fsynced before the rename and directories after it, so a power cut
behaves like a kill.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from lorakit.errors import UserError

LOCK = ".lock"  # a directory's lock file (training/runlock.py), carried over when atomic_dir replaces it
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp-[^.]+|trash-[^.]+|old)$")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` and the directories themselves."""
    for root, _, files in os.walk(path):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def is_no_space(err: BaseException) -> bool:
    """A full disk (or quota): OSError ENOSPC / EDQUOT, or a library's error that says so (SafetensorError)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def no_space_error(path: Path, needed: int, so_far: bool = False) -> UserError:
    """One line for a write that a full disk stopped: the path, the space it needed (or had used when it
    stopped), the space free; nothing half-written is left (the temporary is deleted)."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path(".")).free
    except OSError:
        free = 0
    need = f"{'more than ' if so_far else ''}{needed / 1e6:.1f} MB"
    return UserError(f"no space left on the device to write {path}: it needs {need}, {free / 1e6:.1f} MB are free; "
                     "free some space (or choose another --output) and run the command again")


def initial_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or directory (0777) gets under the process's umask, as open() and mkdir() give
    (mkstemp and mkdtemp create them 0600 / 0700, which would stay after the rename)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask sets it, for a moment, for every thread)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, initial_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(err):
            raise no_space_error(path, len(data)) from None
        raise
    _fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary directory next to `path`; on success it replaces `path`.

    The old version is renamed to `.NAME.old` before the new one is renamed in, and deleted after: a kill between
    the renames leaves `.NAME.old`, which `recover` renames back. The old version's lock file (`.lock`, held by the
    writing command: training/runlock.py) moves into the new one before the swap, so the directory stays locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_one(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, initial_mode(directory=True))
        try:
            yield tmp
            fsync_tree(tmp)
        except Exception as err:
            if is_no_space(err):
                raise no_space_error(path, _size(tmp), so_far=True) from None
            raise
        old = path.parent / f".{path.name}.old"
        if path.exists():
            if (path / LOCK).is_file():
                os.replace(path / LOCK, tmp / LOCK)
            os.replace(path, old)
            os.replace(tmp, path)
            _fsync_path(path.parent)
            remove_dir(old)
        else:
            os.replace(tmp, path)
            _fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a directory so that no one ever sees it half-deleted: rename it to a hidden trash name, then delete."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.trash-", dir=path.parent))
    os.rmdir(trash)  # mkdtemp reserved a unique name; the directory itself takes it
    os.replace(path, trash)
    _fsync_path(path.parent)
    shutil.rmtree(trash)


def recover_one(path: Path) -> None:
    """Finish what a kill interrupted for `path`: `.NAME.old` back in place if NAME is missing, else deleted."""
    old = path.parent / f".{path.name}.old"
    if old.exists():
        if path.exists():
            remove_dir(old)
        else:
            os.replace(old, path)


def recover(directory: str | os.PathLike) -> list[str]:
    """Recover interrupted replacements in `directory` and delete its temporaries; returns what was done."""
    directory = Path(directory)
    done = []
    if not directory.is_dir():
        return done
    for entry in sorted(directory.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if match is None:
            continue
        target = directory / match["name"]
        # `..adapter.tmp-X.old` is a temporary of a temporary (save_adapter inside save_artifact's atomic_dir):
        # restoring it would bring back a temporary, so it is deleted like the others
        if entry.name.endswith(".old") and not target.exists() and _TEMPORARY.match(target.name) is None:
            os.replace(entry, target)
            done.append(f"restored {target} from {entry.name}")
        elif entry.is_dir():
            shutil.rmtree(entry)
            done.append(f"deleted {entry}")
        else:
            entry.unlink()
            done.append(f"deleted {entry}")
    return done


# --- checks before anything is written ----------------------------------------------------------------------

def check_output_dir(path: str | os.PathLike, flag: str = "--output") -> Path:
    """`path` can be a directory lorakit writes: it is one (or can be made) and is writable. UserError if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a directory; choose a directory path")
    _check_writable(path, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path (e.g. {path / 'metrics.json'})")
    _check_writable(path.parent if str(path.parent) else Path("."), flag, of=path)
    return path


def _check_writable(path: Path, flag: str, of: Path | None = None) -> None:
    existing = path
    while not existing.exists():  # the nearest existing ancestor is where the directories would be created
        existing = existing.parent
    what = of or path
    if not existing.is_dir():
        raise UserError(f"{flag} {what}: {existing} is a file, so nothing can be created under it; "
                        "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {what}: {existing} is not writable; choose a writable path")


# --- reading ------------------------------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE starts like UTF-16 LE


def read_user_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file a user wrote (a --config YAML): UTF-8, or UTF-8 / UTF-16 / UTF-32 with their byte-order mark;
    anything else is a UserError naming the file and the encoding expected."""
    path = Path(path)
    data = path.read_bytes()
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not {encoding.upper().replace('-SIG', '')} text (byte {err.start}: "
                        f"{err.reason}); save it as UTF-8") from None


def read_json(path: str | os.PathLike, what: str = "file"):
    """json.loads of a file, or a UserError naming the file, the line and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                        "restore it or write it again") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} {path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg}); "
                        "restore it or write it again") from None


def read_safetensors(path: str | os.PathLike, what: str = "weights file"):
    """safetensors.torch.load_file, or a UserError naming a truncated / damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; the directory is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{what} {path} is damaged or truncated ({str(err).splitlines()[0][:200]}); "
                        "restore it, or write it again (retrain / resume from another checkpoint)") from None


def check_replaceable(path: str | os.PathLike, ours, what: str, flag: str, overwrite: bool = False) -> Path:
    """The one rule for writing a directory over `path`: lorakit replaces nothing but an empty directory or its own
    kind of directory (`ours(path)` is True), unless the caller passes overwrite=True. A file is never replaced."""
    path = Path(path)
    check_output_dir(path, flag)
    # a lock file (and temporaries) alone: what a writer killed before its first rename leaves; counts as empty
    left = [p for p in path.iterdir() if p.name != LOCK and not _TEMPORARY.match(p.name)] if path.is_dir() else []
    if not path.exists() or overwrite or not left or ours(path):
        return path
    raise UserError(f"{flag} {path} exists and is not {what}; lorakit replaces only an empty directory or "
                    f"{what}: choose a new directory (or pass overwrite=True to replace it)")
