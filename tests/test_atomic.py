"""The one atomic file writer: a reader sees the old file or the new one, never a mix or a leftover."""

from __future__ import annotations

import os
import stat
import threading

import pytest
import torch

from deeplog_siem import atomic
from deeplog_siem.atomic import atomic_write, write_bytes, write_text


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_file_is_replaced_whole(tmp_path):
    target = tmp_path / "deep" / "er" / "f.bin"  # folders are created
    write_bytes(target, b"x" * 10_000)
    with atomic_write(target) as f:
        f.write(b"short")
        # Until the block ends the old content is what a reader sees.
        assert target.read_bytes() == b"x" * 10_000
    assert target.read_bytes() == b"short"
    assert write_text(target, "é\n").read_text(encoding="utf-8") == "é\n"
    assert _leftovers(target.parent) == []


def test_exception_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"half of a new fi")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_exception_before_first_write_creates_nothing(tmp_path):
    target = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt), atomic_write(target):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_two_writers_get_different_temporary_names(tmp_path):
    target = tmp_path / "CURRENT"
    seen: list[list[str]] = []
    both_open = threading.Barrier(2, timeout=10)

    def writer(text: str) -> None:
        with atomic_write(target) as f:
            f.write(text.encode())
            both_open.wait()  # both temporary files exist now
            seen.append(_leftovers(tmp_path))
            both_open.wait()  # neither is renamed before both looked

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a\n", "b\n")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 2
    assert all(n.startswith(".CURRENT.") for n in seen[0])
    assert target.read_text() in {"a\n", "b\n"}
    assert _leftovers(tmp_path) == []


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_bytes(target, b"weights")
    assert events[:2] == ["fsync file", "rename"]
    assert "fsync dir" in events[2:]  # the rename itself is made durable


def test_torch_save_goes_through_it(tmp_path):
    target = tmp_path / "t.pt"
    with atomic_write(target) as f:
        torch.save({"w": torch.arange(5)}, f)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(5))


def test_file_gets_the_mode_an_ordinary_write_gives(tmp_path):
    # mkstemp's owner-only mode would lock out an operator or a sidecar reading the model files.
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    written = write_bytes(tmp_path / "CURRENT", b"v1\n")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    write_bytes(written, b"v2\n")  # and again when it replaces a file
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
