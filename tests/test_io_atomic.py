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
