"""The partial file and its sidecar: hashing, resuming, modes, and disk errors as clear failures."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from trio_fwagent.download import DownloadError
from trio_fwagent.download import writer as writer_module
from trio_fwagent.download.sidecar import Sidecar, load_sidecar, save_sidecar, sidecar_path
from trio_fwagent.download.writer import PartFile, Stopped, check_free_space


def test_write_hashes_everything_written(tmp_path: Path) -> None:
    part = PartFile.open(tmp_path / "fw.part", 0)
    try:
        part.write([b"abc", b"def"])
        part.write([b"g" * 100_000])
        digest = part.finish()
    finally:
        part.close()
    content = b"abcdef" + b"g" * 100_000
    assert (tmp_path / "fw.part").read_bytes() == content
    assert digest == hashlib.sha256(content).hexdigest()
    assert part.size == len(content)


def test_partial_file_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "fw.part"
    path.write_bytes(b"")
    path.chmod(0o644)  # an earlier, laxer file is tightened too
    PartFile.open(path, 0).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_keeps_and_rehashes_the_prefix_and_drops_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "fw.part"
    path.write_bytes(b"0123456789")
    part = PartFile.open(path, 6)
    try:
        assert part.size == 6
        part.write([b"XY"])
        digest = part.finish()
    finally:
        part.close()
    assert path.read_bytes() == b"012345XY"
    assert digest == hashlib.sha256(b"012345XY").hexdigest()


def test_reopen_stops_rehashing_when_told_and_closes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fw.part"
    path.write_bytes(b"x" * (8 * writer_module._REHASH_BLOCK))
    stop = threading.Event()
    reads = 0

    def read_then_stop(fd: int, n: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads == 3:
            stop.set()  # as a cancellation in the event loop would, mid-way
        return os.read(fd, n)

    monkeypatch.setattr(writer_module, "_os_read", read_then_stop)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Stopped):
        PartFile.open(path, path.stat().st_size, stop)
    assert reads == 3  # not the 8 blocks of the whole prefix
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_restart_truncates_and_resets_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "fw.part"
    part = PartFile.open(path, 0)
    try:
        part.write([b"old content"])
        part.restart()
        part.write([b"new"])
        digest = part.finish()
    finally:
        part.close()
    assert path.read_bytes() == b"new"
    assert digest == hashlib.sha256(b"new").hexdigest()


def test_disk_full_while_writing_is_a_permanent_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    part = PartFile.open(tmp_path / "fw.part", 0)
    monkeypatch.setattr(writer_module, "_os_write", full)
    try:
        with pytest.raises(DownloadError) as info:
            part.write([b"data"])
    finally:
        part.close()
    assert info.value.permanent
    assert info.value.reason == f"cannot write {tmp_path / 'fw.part'}: no space left on the device"


def test_missing_directory_is_a_permanent_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        PartFile.open(tmp_path / "missing" / "fw.part", 0)
    assert info.value.permanent
    assert "directory does not exist" in info.value.reason


def test_free_space_check(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1)
    with pytest.raises(DownloadError) as info:
        check_free_space(tmp_path, 1 << 60)
    assert info.value.permanent
    assert info.value.reason.startswith(f"not enough free space in {tmp_path}: ")


def test_sidecar_round_trip_is_0600_and_atomic(tmp_path: Path) -> None:
    path = sidecar_path(tmp_path / "fw.bin.part")
    assert path.name == "fw.bin.part.json"
    sidecar = Sidecar(
        url="http://x/fw.bin", sha256=None, etag='"e"', last_modified=None, length=10, offset=4
    )
    save_sidecar(path, sidecar)
    assert load_sidecar(path) == sidecar
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["fw.bin.part.json"]  # no temp file left


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"format": 99, "url": "u", "offset": 0}),
        json.dumps({"format": 1, "url": "u", "offset": -1}),
        json.dumps({"format": 1, "url": 5, "offset": 0}),
        json.dumps({"format": 1, "offset": 0}),
    ],
)
def test_corrupt_sidecar_reads_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fw.part.json"
    path.write_text(text)
    assert load_sidecar(path) is None


def test_missing_sidecar_reads_as_none(tmp_path: Path) -> None:
    assert load_sidecar(tmp_path / "nothing.json") is None


def test_sync_data_beside_writes_keeps_the_content(tmp_path: Path) -> None:
    path = tmp_path / "fw.part"
    part = PartFile.open(path, 0)
    try:
        part.write([b"a" * 5000])
        part.sync_data(5000)  # durable, and dropped from the page cache
        part.write([b"b" * 5000])
        part.sync_data(10000)
        digest = part.finish()
    finally:
        part.close()
    assert path.read_bytes() == b"a" * 5000 + b"b" * 5000
    assert digest == hashlib.sha256(b"a" * 5000 + b"b" * 5000).hexdigest()
