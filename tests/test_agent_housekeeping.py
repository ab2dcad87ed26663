"""SharedDownloads.sweep: leftover partial downloads do not pile up in the data dir."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trio_fwagent.agent import SharedDownloads
from trio_fwagent.download import RetryPolicy


def _downloads(directory: Path, *, keep: bool = False) -> SharedDownloads:
    directory.mkdir(exist_ok=True)
    return SharedDownloads(directory, retry=RetryPolicy(), stall_timeout=1.0, keep=keep)


def _touch(directory: Path, name: str, age: float = 0.0) -> Path:
    path = directory / name
    path.write_bytes(b"x")
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def test_sweep_removes_leftovers_but_keeps_what_will_resume(tmp_path: Path) -> None:
    downloads = _downloads(tmp_path / "dl")
    wanted = [_touch(downloads.directory, n) for n in ("a.bin.part", "a.bin.part.json")]
    gone = [_touch(downloads.directory, n) for n in ("b.bin.part", "b.bin.part.json", "c.bin")]
    assert downloads.sweep({"a.bin"}) == 3
    assert all(p.exists() for p in wanted)
    assert not any(p.exists() for p in gone)


def test_sweep_keeps_complete_images_with_keep_downloads(tmp_path: Path) -> None:
    downloads = _downloads(tmp_path / "dl", keep=True)
    image = _touch(downloads.directory, "c.bin")
    partial = _touch(downloads.directory, "d.bin.part")
    assert downloads.sweep(()) == 1
    assert image.exists() and not partial.exists()


def test_sweep_spares_recent_files_when_asked(tmp_path: Path) -> None:
    downloads = _downloads(tmp_path / "dl")
    recent = _touch(downloads.directory, "e.bin.part")
    old = _touch(downloads.directory, "f.bin.part", age=3 * 24 * 3600)
    assert downloads.sweep((), older_than=24 * 3600) == 1
    assert recent.exists() and not old.exists()


def test_sweep_of_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    downloads = SharedDownloads(tmp_path / "none", retry=RetryPolicy(), stall_timeout=1.0)
    assert downloads.sweep(()) == 0
