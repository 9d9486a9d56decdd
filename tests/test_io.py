from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hypersparse.io import atomic_write_json, load_checkpoint, save_checkpoint, to_jsonable


def test_crash_mid_write_leaves_old_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint({"w": torch.ones(3)}, path)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left behind


def test_truncated_checkpoint_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="ck.pt is unreadable or corrupt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_never_execute_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(path)


def test_json_helpers(tmp_path: Path) -> None:
    assert to_jsonable({"a": torch.tensor(1.5), "b": (1, float("nan")), "c": torch.ones(2)}) == {
        "a": 1.5,
        "b": [1, None],
        "c": [1.0, 1.0],
    }
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").read_text().strip().startswith("{")
    with pytest.raises(TypeError, match="cannot convert object"):
        to_jsonable(object())
