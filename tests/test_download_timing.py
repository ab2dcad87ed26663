"""Retry timing of the download loop on trio's MockClock with autojump.

These use httpx.MockTransport (no sockets) so virtual time can run: a pure unit of the
retry loop's waiting, not of HTTP; the real-network retry tests are in
test_download_faults.py.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from trio_fwagent.download import DownloadError, RetryPolicy, download

BODY = b"firmware" * 1000


@pytest.fixture
def lazy_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 5 ms of real idleness.

    The downloader hands file work to threads; with a zero threshold the run loop would
    spin (and fight the worker threads for the GIL) while they work.
    """
    return trio.testing.MockClock(autojump_threshold=0.005)


class Body(httpx.AsyncByteStream):
    """A response body that can be streamed once, as from a socket."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BODY


def flaky(first: list[httpx.Response]) -> httpx.AsyncClient:
    """A client whose server answers ``first`` responses in order, then the file."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if first:
            return first.pop(0)
        return httpx.Response(200, headers={"Content-Length": str(len(BODY))}, stream=Body())

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_retry_after_seconds_is_waited_in_full(
    lazy_autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    client = flaky([httpx.Response(503, headers={"Retry-After": "120"})])
    started = trio.current_time()
    async with client:
        result = await download("http://mock/fw.bin", tmp_path / "fw.bin", client=client)
    waited = trio.current_time() - started
    assert 120.0 <= waited < 121.0  # base_delay 0.5: jitter alone would be < 0.5 s
    assert result.size == len(BODY)


async def test_retry_after_http_date_is_waited(
    lazy_autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    client = flaky([httpx.Response(429, headers={"Retry-After": when})])
    started = trio.current_time()
    async with client:
        await download("http://mock/fw.bin", tmp_path / "fw.bin", client=client)
    assert 295.0 <= trio.current_time() - started < 302.0


async def test_backoff_grows_but_stays_capped(
    lazy_autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    client = flaky([httpx.Response(500) for _ in range(8)])
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    started = trio.current_time()
    async with client:
        await download("http://mock/fw.bin", tmp_path / "fw.bin", client=client, retry=policy)
    # 8 waits with caps 1, 2, 4, 4, 4, 4, 4, 4: full jitter stays below the sum of caps.
    assert trio.current_time() - started <= 27.0


async def test_retry_after_beyond_give_up_after_fails_without_waiting(
    lazy_autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    client = flaky([httpx.Response(503, headers={"Retry-After": "3600"})])
    policy = RetryPolicy(give_up_after=600.0)
    started = trio.current_time()
    async with client:
        with pytest.raises(DownloadError) as info:
            await download("http://mock/fw.bin", tmp_path / "fw.bin", client=client, retry=policy)
    assert trio.current_time() - started < 1.0
    assert not info.value.permanent and info.value.status_code == 503
    assert "gave up after 1 attempt in" in info.value.reason


async def test_give_up_after_bounds_a_long_outage(
    lazy_autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    client = flaky([httpx.Response(502) for _ in range(1000)])
    policy = RetryPolicy(max_attempts=None, base_delay=1.0, max_delay=10.0, give_up_after=120.0)
    started = trio.current_time()
    async with client:
        with pytest.raises(DownloadError) as info:
            await download("http://mock/fw.bin", tmp_path / "fw.bin", client=client, retry=policy)
    assert trio.current_time() - started <= 120.0
    assert info.value.reason.startswith("HTTP 502 Bad Gateway from http://mock/fw.bin")
