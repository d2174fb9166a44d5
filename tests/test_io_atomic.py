"""Adapters and run files on disk (io/atomic.py): writes are atomic, a kill leaves the old version or the new, never a
temporary restored; save_adapter never replaces what is not an adapter; a damaged file is named in one error."""
from __future__ import annotations

import pytest

from helpers import tiny_classifier, tree
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter
from lorakit.errors import UserError
from lorakit.io.atomic import atomic_dir, read_json


def test_save_adapter_never_replaces_a_file_or_a_user_directory(tmp_path):
    model = add_lora(tiny_classifier(), LoraConfig(r=2))
    data = tmp_path / "good.csv"
    data.write_text("text,label\na,0\n")
    with pytest.raises(UserError, match="is a file"):
        save_adapter(model, data)
    assert data.read_text() == "text,label\na,0\n"
    with pytest.raises(UserError, match="is a file"):
        save_adapter(model, data, overwrite=True)  # a file never
    user = tmp_path / "userdir"
    (user / "sub").mkdir(parents=True)
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="overwrite=True"):
        save_adapter(model, user)
    assert (user / "precious.txt").read_text() == "keep me" and (user / "sub").is_dir()
    adapter = save_adapter(model, tmp_path / "adapter")
    save_adapter(model, adapter)  # an adapter directory is replaced
    save_adapter(model, user, overwrite=True)  # the caller said so
    assert sorted(p.name for p in user.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("target", ["file", "user directory", "directory under a file"])
def test_save_adapter_refuses(tmp_path, target):
    model = add_lora(tiny_classifier(), LoraConfig(r=2))
    (tmp_path / "f.txt").write_text("x")
    path = {"file": tmp_path / "f.txt", "user directory": tmp_path, "directory under a file": tmp_path / "f.txt" / "a"}
    before = tree(tmp_path)
    with pytest.raises(UserError) as err:
        save_adapter(model, path[target])
    assert str(path[target]) in str(err.value) or "f.txt" in str(err.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage, expected", [("absent", "is not an adapter directory"),
                                              ("weights", "damaged or truncated"), ("config", "not valid JSON")])
def test_load_adapter_refuses(tmp_path, damage, expected):
    path = save_adapter(add_lora(tiny_classifier(), LoraConfig(r=2)), tmp_path / "a")
    if damage == "absent":
        (path / "adapter_model.safetensors").unlink()
    elif damage == "weights":
        (path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    else:
        (path / "adapter_config.json").write_text("{")
    with pytest.raises((ValueError, FileNotFoundError), match=expected):  # FileNotFoundError: a missing path
        load_adapter(tiny_classifier(), path)


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(UserError, match=r"x.json is not valid JSON \(line 2"):
        read_json(tmp_path / "x.json")


def test_atomic_dir_keeps_the_old_version_when_a_write_fails(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half-written")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temporary left behind
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_recover_never_restores_a_temporary_of_a_temporary(tmp_path):
    """A kill between the two renames of save_adapter's replace inside save_artifact's atomic_dir leaves
    `..adapter.tmp-X.old`: restoring it would bring back `.adapter.tmp-X`, a temporary nobody deletes."""
    from lorakit.io.atomic import recover

    (tmp_path / "..adapter.tmp-abc.old").mkdir()
    (tmp_path / ".adapter.old").mkdir()  # a real interrupted replacement: restored
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_files_and_directories_get_the_users_umask(tmp_path, umask, file_mode, dir_mode):
    """Issue 28 F: every file lorakit wrote was 0600 and every directory 0700 (mkstemp's and mkdtemp's modes kept
    after the rename), so a service account could not read a run's adapter."""
    import os
    import stat

    from lorakit.io.atomic import write_text_atomic

    saved = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.json", "{}\n")
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "adapter" / "w.bin").stat().st_mode) == file_mode


def test_a_full_disk_is_one_line_naming_the_path_and_the_space(tmp_path, monkeypatch):
    """Issue 28 D: a full disk during train / merge / save gave a raw SafetensorError traceback."""
    import errno
    import os

    from safetensors import SafetensorError

    from lorakit.io.atomic import write_text_atomic

    (tmp_path / "a.json").write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", full)
        with pytest.raises(UserError, match=rf"no space left on the device to write {tmp_path / 'a.json'}: it needs "
                                            r"0\.0 MB, [\d.]+ MB are free; free some space"):
            write_text_atomic(tmp_path / "a.json", "new " * 10 + "\n")
    with pytest.raises(UserError, match=rf"to write {tmp_path / 'adapter'}: it needs more than 0\.0 MB"):
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "half.safetensors").write_bytes(b"12")
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old\n"
