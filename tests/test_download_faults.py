"""The downloader against the fault-injecting file server on loopback: the fault matrix.

Each test asserts the outcome a caller sees AND what the server had to send (requests,
body bytes, Range headers), because resuming is only worth something if it saves bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import time
from pathlib import Path

import pytest
import trio

from trio_fwagent.download import DownloadError, Progress, RetryPolicy, download
from trio_fwagent.download import writer as writer_module
from trio_fwagent.download.sidecar import Sidecar, save_sidecar
from trio_fwagent.testing.fileserver import Faults, FaultyFileServer

MiB = 1 << 20
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)


def content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_plain_download_is_verified_renamed_and_private(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(3 * MiB)
    url = fault_server.add_file("/fw.bin", data)
    reports: list[Progress] = []
    result = await download(
        url, tmp_path / "fw.bin", sha256=sha(data).upper(), on_progress=reports.append
    )
    assert (tmp_path / "fw.bin").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "fw.bin").stat().st_mode) == 0o600
    assert leftovers(tmp_path) == ["fw.bin"]  # no .part, no sidecar
    assert (result.size, result.sha256, result.resumes, result.restarts) == (
        len(data),
        sha(data),
        0,
        0,
    )
    assert result.bytes_received == len(data)
    assert reports[-1].done == reports[-1].total == len(data)
    assert fault_server.stats_for("/fw.bin").body_bytes == len(data)


async def test_drop_every_8_mib_from_a_range_server_resumes_at_little_cost(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(64 * MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(drop_every=8 * MiB))
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    stats = fault_server.stats_for("/fw.bin")
    assert result.resumes == 7 and result.restarts == 0
    assert stats.body_bytes < 1.05 * len(data)
    assert stats.ranges[1:] == [f"bytes={n * 8 * MiB}-" for n in range(1, 8)]
    assert all(v is not None and v.startswith('"') for v in stats.if_ranges[1:])  # strong ETag


async def test_rangeless_server_completes_by_restarting_on_the_same_response(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    # thin-edge's file server: no Range, no validators.
    data = content(64 * MiB)
    faults = Faults(ranges=False, etag=False, last_modified=False, drop_at=8 * MiB)
    url = fault_server.add_file("/fw.bin", data, faults)
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    stats = fault_server.stats_for("/fw.bin")
    assert result.restarts == 1 and result.resumes == 0
    assert stats.requests == 2  # the 200 to the ranged request was used, not re-requested
    assert stats.ranges == [None, f"bytes={8 * MiB}-"]
    assert stats.statuses == [200, 200]
    assert stats.body_bytes == 8 * MiB + len(data)
    assert (tmp_path / "fw.bin").read_bytes() == data


async def test_stall_is_abandoned_after_the_stall_timeout_and_resumed(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(4 * MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(stall_at=MiB, stall_for=30.0))
    result = await download(
        url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST, stall_timeout=0.3
    )
    stats = fault_server.stats_for("/fw.bin")
    assert result.resumes == 1
    assert stats.requests == 2
    assert stats.ranges[1] == f"bytes={MiB}-"
    assert stats.body_bytes == len(data)


async def test_5xx_and_429_are_retried(fault_server: FaultyFileServer, tmp_path: Path) -> None:
    data = content(MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(statuses=[503, 429], retry_after="0"))
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    assert fault_server.stats_for("/fw.bin").statuses == [503, 429, 200]
    assert result.size == len(data)


async def test_retry_after_seconds_is_honoured(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(1000)
    url = fault_server.add_file("/fw.bin", data, Faults(statuses=[503], retry_after="1"))
    started = trio.current_time()
    await download(url, tmp_path / "fw.bin", retry=FAST)
    assert trio.current_time() - started >= 1.0  # FAST alone would wait at most 0.01 s
    assert fault_server.stats_for("/fw.bin").requests == 2


async def test_404_fails_fast_and_permanently(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    url = fault_server.url("/missing.bin")
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=FAST)
    assert info.value.reason == f"HTTP 404 Not Found from {url}"
    assert str(info.value) == info.value.reason
    assert (info.value.permanent, info.value.status_code) == (True, 404)
    assert fault_server.stats_for("/missing.bin").requests == 1


@pytest.mark.parametrize("status", [401, 403, 410, 400])
async def test_client_errors_fail_fast(
    fault_server: FaultyFileServer, tmp_path: Path, status: int
) -> None:
    url = fault_server.add_file("/fw.bin", b"x", Faults(statuses=[status]))
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=FAST)
    assert info.value.permanent and info.value.status_code == status
    assert info.value.reason.startswith(f"HTTP {status} ")
    assert fault_server.stats_for("/fw.bin").requests == 1


async def test_retries_are_bounded_by_max_attempts(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    url = fault_server.add_file("/fw.bin", b"x", Faults(statuses=[503] * 10))
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01)
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=policy)
    assert not info.value.permanent
    assert info.value.status_code == 503
    assert info.value.reason.startswith(f"HTTP 503 Service Unavailable from {url}")
    assert "gave up after 3 attempts" in info.value.reason
    assert fault_server.stats_for("/fw.bin").requests == 3


async def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        policy = RetryPolicy(max_attempts=2, base_delay=0.01)
        with pytest.raises(DownloadError) as info:
            await download(f"http://127.0.0.1:{port}/fw.bin", tmp_path / "fw.bin", retry=policy)
    assert not info.value.permanent
    assert info.value.reason.startswith(f"cannot connect to http://127.0.0.1:{port}/fw.bin")


async def test_corrupted_bytes_fail_with_both_digests_and_remove_the_partial(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(2 * MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(corrupt_at=12345))
    corrupted = bytearray(data)
    corrupted[12345] ^= 0xFF
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    assert info.value.permanent
    assert info.value.reason == (
        f"SHA-256 mismatch: expected {sha(data)}, got {sha(bytes(corrupted))}"
    )
    assert leftovers(tmp_path) == []
    assert fault_server.stats_for("/fw.bin").body_bytes == len(data)


async def test_file_changed_mid_download_restarts_via_if_range(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    old, new = content(4 * MiB, seed=1), content(4 * MiB, seed=2)
    url = fault_server.add_file("/fw.bin", old, Faults(swap_at=MiB, swap_to=new))
    result = await download(url, tmp_path / "fw.bin", sha256=sha(new), retry=FAST)
    stats = fault_server.stats_for("/fw.bin")
    assert (tmp_path / "fw.bin").read_bytes() == new
    assert result.restarts == 1
    assert stats.if_ranges[1] == f'"{len(old):x}-0"'  # the old version's ETag
    assert stats.statuses == [200, 200]  # If-Range did not match: whole new file
    assert stats.body_bytes == MiB + len(new)


async def test_changed_length_without_validators_refetches(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    old, new = content(4 * MiB, seed=1), content(5 * MiB, seed=2)
    faults = Faults(etag=False, last_modified=False, swap_at=MiB, swap_to=new)
    url = fault_server.add_file("/fw.bin", old, faults)
    result = await download(url, tmp_path / "fw.bin", sha256=sha(new), retry=FAST)
    stats = fault_server.stats_for("/fw.bin")
    assert (tmp_path / "fw.bin").read_bytes() == new
    assert result.restarts == 1
    # 206 for the rest of a 5 MiB file while 4 MiB was expected: not used, asked again.
    assert stats.statuses == [200, 206, 200]
    assert stats.ranges == [None, f"bytes={MiB}-", None]


async def test_truncated_body_is_never_accepted(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(declare_length=len(data) + 1000))
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01)
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=policy)
    assert not info.value.permanent
    assert not (tmp_path / "fw.bin").exists()
    stats = fault_server.stats_for("/fw.bin")
    # Each 200 was cut short; resuming at the real end got 416 against the declared length,
    # and the second cut-short 200 brought nothing new: the third failure in a row.
    assert stats.statuses == [200, 416, 200]
    assert stats.body_bytes == 2 * len(data)


async def test_not_enough_free_space_fails_before_writing(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    url = fault_server.add_file("/fw.bin", content(MiB), Faults(declare_length=1 << 50))
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=FAST)
    assert info.value.permanent
    assert info.value.reason.startswith(f"not enough free space in {tmp_path}: 1024.0 TiB needed")
    assert fault_server.stats_for("/fw.bin").requests == 1
    assert (tmp_path / "fw.bin.part").stat().st_size == 0


async def test_disk_full_during_download_is_a_clear_permanent_error(
    fault_server: FaultyFileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_os_write", full)
    url = fault_server.add_file("/fw.bin", content(4 * MiB))
    with pytest.raises(DownloadError) as info:  # not an ExceptionGroup, not a traceback
        await download(url, tmp_path / "fw.bin", retry=FAST)
    assert info.value.permanent
    assert (
        info.value.reason == f"cannot write {tmp_path / 'fw.bin.part'}: no space left on the device"
    )
    assert fault_server.stats_for("/fw.bin").requests == 1


async def test_cancelled_download_keeps_its_partial_file_and_resumes(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(8 * MiB)
    faults = Faults(throttle=8 * MiB)
    url = fault_server.add_file("/fw.bin", data, faults)
    with trio.move_on_after(0.6):
        await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    assert leftovers(tmp_path) == ["fw.bin.part", "fw.bin.part.json"]
    kept = (tmp_path / "fw.bin.part").stat().st_size
    assert 0 < kept < len(data)
    faults.throttle = None
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data), retry=FAST)
    stats = fault_server.stats_for("/fw.bin")
    assert result.resumes == 1 and result.restarts == 0
    assert stats.ranges[-1] == f"bytes={kept}-"
    assert stats.bodies[-1] == len(data) - kept  # only the rest was sent
    assert (tmp_path / "fw.bin").read_bytes() == data


async def test_a_partial_file_that_cannot_be_opened_is_a_plain_download_error(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    """Not an ExceptionGroup: the agent tells DownloadErrors (a reason for the cloud)
    from crashes (a traceback) by their type."""
    url = fault_server.add_file("/fw.bin", content(MiB))
    (tmp_path / "fw.bin.part").mkdir()  # where the partial file should go
    with pytest.raises(DownloadError) as info:
        await download(url, tmp_path / "fw.bin", retry=FAST)
    assert info.value.permanent and "cannot create" in info.value.reason
    assert fault_server.requests == 0


async def test_cancel_during_the_rehash_of_a_partial_file_ends_it_at_once(
    fault_server: FaultyFileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-hashing a large partial from slow storage must not hold up a SIGTERM."""
    data = content(16 * MiB)
    url = fault_server.add_file("/fw.bin", data)
    (tmp_path / "fw.bin.part").write_bytes(data[: 12 * MiB])
    sidecar = Sidecar(
        url=url, sha256=sha(data), etag=None, last_modified=None, length=len(data), offset=0
    )
    save_sidecar(tmp_path / "fw.bin.part.json", sidecar)
    monkeypatch.setattr(writer_module, "_REHASH_BLOCK", 64 * 1024)
    reads = 0
    first_read = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow_read(fd: int, n: int) -> bytes:  # 192 blocks of a slow eMMC: ~10 s
        nonlocal reads
        reads += 1
        if reads == 1:
            token.run_sync_soon(first_read.set)
        time.sleep(0.05)
        return os.read(fd, n)

    monkeypatch.setattr(writer_module, "_os_read", slow_read)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(download, url, tmp_path / "fw.bin")
            await first_read.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert reads <= 3  # stopped within a block or two, not after all 192
    assert fault_server.requests == 0
    # The partial file and its sidecar are kept for the next run, which completes.
    monkeypatch.setattr(writer_module, "_os_read", os.read)
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data))
    assert result.bytes_received == 4 * MiB and leftovers(tmp_path) == ["fw.bin"]


async def test_complete_partial_file_needs_only_a_416(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(MiB)
    url = fault_server.add_file("/fw.bin", data)
    (tmp_path / "fw.bin.part").write_bytes(data)
    etag = f'"{len(data):x}-0"'
    sidecar = Sidecar(
        url=url, sha256=None, etag=etag, last_modified=None, length=len(data), offset=len(data)
    )
    save_sidecar(tmp_path / "fw.bin.part.json", sidecar)
    result = await download(url, tmp_path / "fw.bin")
    stats = fault_server.stats_for("/fw.bin")
    assert stats.statuses == [416] and stats.body_bytes == 0
    assert result.sha256 == sha(data) and result.bytes_received == 0
    assert leftovers(tmp_path) == ["fw.bin"]


async def test_complete_partial_file_with_matching_checksum_needs_no_request(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(MiB)
    url = fault_server.add_file("/fw.bin", data)
    (tmp_path / "fw.bin.part").write_bytes(data)
    sidecar = Sidecar(
        url=url, sha256=sha(data), etag=None, last_modified=None, length=len(data), offset=0
    )
    save_sidecar(tmp_path / "fw.bin.part.json", sidecar)
    await download(url, tmp_path / "fw.bin", sha256=sha(data))
    assert fault_server.requests == 0
    assert (tmp_path / "fw.bin").read_bytes() == data


async def test_partial_file_without_sidecar_is_not_trusted(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(MiB)
    url = fault_server.add_file("/fw.bin", data)
    (tmp_path / "fw.bin.part").write_bytes(b"garbage" * 1000)
    result = await download(url, tmp_path / "fw.bin", sha256=sha(data))
    assert fault_server.stats_for("/fw.bin").ranges == [None]
    assert result.resumes == 0
    assert (tmp_path / "fw.bin").read_bytes() == data


async def test_progress_is_rate_limited_and_ends_with_the_total(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = content(4 * MiB)
    url = fault_server.add_file("/fw.bin", data, Faults(throttle=8 * MiB))
    reports: list[Progress] = []
    started = trio.current_time()
    await download(url, tmp_path / "fw.bin", on_progress=reports.append, chunk_size=64 * 1024)
    elapsed = trio.current_time() - started
    assert len(reports) <= elapsed * 10 + 2  # ~10 a second, plus the last
    assert len(reports) >= 3
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[-1] == Progress(
        done=len(data), total=len(data), rate=reports[-1].rate, resumes=0, restarts=0, attempt=1
    )
    assert reports[-1].rate > 0
