"""The downloader against a real nginx on loopback: real-world Range, ETag and If-Range.

Also checks that the download client really reads the socket in large pieces (the
reason it is fast), against plain httpx as the control.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import httpx
import trio

from tests.fixtures.http_servers import NginxServer
from trio_fwagent.download import Progress, create_client, download
from trio_fwagent.download.sidecar import Sidecar, save_sidecar

MiB = 1 << 20


async def start_partial(url: str, dest: Path) -> int:
    """Start a download, cancel it at its first progress report; return the bytes kept."""
    with trio.CancelScope() as scope:

        def stop(progress: Progress) -> None:
            if 0 < progress.done < (progress.total or 0):
                scope.cancel()

        await download(url, dest, on_progress=stop)
    assert scope.cancelled_caught, "the download finished before it could be interrupted"
    return (dest.parent / (dest.name + ".part")).stat().st_size


async def test_nginx_range_resume_with_etag(nginx: NginxServer, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(32 * MiB)
    (nginx.root / "fw.bin").write_bytes(data)
    dest = tmp_path / "fw.bin"
    kept = await start_partial(nginx.url("fw.bin"), dest)
    assert 0 < kept < len(data)

    result = await download(nginx.url("fw.bin"), dest, sha256=hashlib.sha256(data).hexdigest())
    assert (result.resumes, result.restarts) == (1, 0)
    assert dest.read_bytes() == data
    last = nginx.access_log()[-1]
    assert (last.status, last.range) == (206, f"bytes={kept}-")
    assert last.if_range is not None and last.if_range.startswith('"')  # nginx's strong ETag
    assert last.body_bytes == len(data) - kept


async def test_nginx_if_range_with_changed_file_restarts(
    nginx: NginxServer, tmp_path: Path
) -> None:
    old = random.Random(4).randbytes(32 * MiB)
    new = random.Random(5).randbytes(32 * MiB)  # same size: only the ETag's mtime differs
    path = nginx.root / "fw.bin"
    path.write_bytes(old)
    dest = tmp_path / "fw.bin"
    kept = await start_partial(nginx.url("fw.bin"), dest)

    path.write_bytes(new)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    result = await download(nginx.url("fw.bin"), dest, sha256=hashlib.sha256(new).hexdigest())
    assert (result.resumes, result.restarts) == (0, 1)
    assert dest.read_bytes() == new
    last = nginx.access_log()[-1]
    assert (last.status, last.range) == (200, f"bytes={kept}-")  # If-Range did not match
    assert last.body_bytes == len(new)


async def test_nginx_complete_partial_file_gets_416_and_completes(
    nginx: NginxServer, tmp_path: Path
) -> None:
    data = random.Random(6).randbytes(MiB)
    (nginx.root / "fw.bin").write_bytes(data)
    dest = tmp_path / "fw.bin"
    await download(nginx.url("fw.bin"), dest)
    # Pretend the process died between the last byte and the rename.
    dest.rename(tmp_path / "fw.bin.part")
    async with httpx.AsyncClient() as client:
        head = await client.head(nginx.url("fw.bin"))
    save_sidecar(
        tmp_path / "fw.bin.part.json",
        Sidecar(
            url=nginx.url("fw.bin"),
            sha256=None,
            etag=head.headers["etag"],
            last_modified=head.headers["last-modified"],
            length=len(data),
            offset=len(data),
        ),
    )
    result = await download(nginx.url("fw.bin"), dest)
    assert result.bytes_received == 0
    assert nginx.access_log()[-1].status == 416
    assert dest.read_bytes() == data


async def largest_read(client: httpx.AsyncClient, url: str) -> int:
    largest = 0
    async with client.stream("GET", url) as response:
        await trio.sleep(0.2)  # let the socket buffer fill beyond 64 KiB
        async for chunk in response.aiter_raw():
            largest = max(largest, len(chunk))
    return largest


async def test_download_client_reads_the_socket_in_large_pieces(nginx: NginxServer) -> None:
    (nginx.root / "big.bin").write_bytes(bytes(16 * MiB))
    url = nginx.url("big.bin")
    async with httpx.AsyncClient() as plain:
        assert await largest_read(plain, url) <= 64 * 1024  # httpcore's default
    async with create_client() as fast:
        assert await largest_read(fast, url) > 64 * 1024
