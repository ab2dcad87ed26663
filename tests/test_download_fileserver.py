"""The fault-injecting file server itself, checked with independent clients (httpx, requests)."""

from __future__ import annotations

import httpx
import requests
import trio

from trio_fwagent.testing.fileserver import Faults, FaultyFileServer

DATA = bytes(range(256)) * 40  # 10240 bytes


async def test_serves_ranges_validators_and_counts(fault_server: FaultyFileServer) -> None:
    url = fault_server.add_file("/f.bin", DATA)
    async with httpx.AsyncClient() as client:
        full = await client.get(url)
        etag = full.headers["etag"]
        part = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
        suffix = await client.get(url, headers={"Range": "bytes=-10"})
        stale = await client.get(url, headers={"Range": "bytes=100-", "If-Range": '"old"'})
        beyond = await client.get(url, headers={"Range": f"bytes={len(DATA)}-"})
        head = await client.head(url)
        missing = await client.get(fault_server.url("/nope"))
    assert (full.status_code, full.content) == (200, DATA)
    assert "last-modified" in full.headers and full.headers["accept-ranges"] == "bytes"
    assert (part.status_code, part.content) == (206, DATA[100:])
    assert part.headers["content-range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
    assert (suffix.status_code, suffix.content) == (206, DATA[-10:])
    assert (stale.status_code, stale.content) == (200, DATA)
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(DATA)}"
    assert head.headers["content-length"] == str(len(DATA)) and head.content == b""
    assert missing.status_code == 404
    stats = fault_server.stats_for("/f.bin")
    assert stats.requests == 6
    assert stats.body_bytes == 2 * len(DATA) + (len(DATA) - 100) + 10  # file bytes only
    assert stats.ranges[1] == "bytes=100-" and stats.if_ranges[1] == etag


async def test_rangeless_mode_behaves_like_thin_edge(fault_server: FaultyFileServer) -> None:
    url = fault_server.add_file(
        "/f.bin", DATA, Faults(ranges=False, etag=False, last_modified=False)
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(url, headers={"Range": "bytes=100-"})
    assert (response.status_code, response.content) == (200, DATA)
    for header in ("etag", "last-modified", "accept-ranges", "content-range"):
        assert header not in response.headers


async def test_drop_stall_and_statuses_fire_once(fault_server: FaultyFileServer) -> None:
    faults = Faults(drop_at=1000, statuses=[503], retry_after="3")
    url = fault_server.add_file("/f.bin", DATA, faults)
    async with httpx.AsyncClient() as client:
        busy = await client.get(url)
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "3")
        try:
            await client.get(url)
        except httpx.RemoteProtocolError:
            pass
        else:
            raise AssertionError("the connection was not dropped")
        whole = await client.get(url)
    assert whole.content == DATA
    assert faults.drop_at is None and faults.statuses == []
    assert fault_server.stats_for("/f.bin").body_bytes == 1000 + len(DATA)


async def test_throttle_limits_the_rate(fault_server: FaultyFileServer) -> None:
    url = fault_server.add_file("/f.bin", DATA, Faults(throttle=20_000))
    started = trio.current_time()
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.content == DATA
    assert trio.current_time() - started >= 0.45  # 10240 bytes at 20000 B/s


def test_runs_in_a_thread_for_synchronous_clients() -> None:
    server = FaultyFileServer()
    server.add_file("/f.bin", DATA)
    port, stop = server.start_in_thread()
    try:
        response = requests.get(f"http://127.0.0.1:{port}/f.bin", timeout=10)
    finally:
        stop()
    assert response.content == DATA
    assert server.stats_for("/f.bin").body_bytes == len(DATA)
