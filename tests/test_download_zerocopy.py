"""The zero-copy h11 receive buffer behaves exactly like h11's own, and is really used.

trio_fwagent.download.zerocopy swaps a buffer into h11 that hands whole socket reads on
as body data without copying. These tests protect two things: h11 produces the same
events, byte for byte, for any response split any way at any moment of the swap; and the
swap still happens with the httpcore/h11 installed (it silently falls back otherwise,
which is correct but undoes the measured speed-up).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import h11
import httpcore
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_fwagent.download.zerocopy import ZeroCopyPool, ZeroCopyReceiveBuffer
from trio_fwagent.testing.fileserver import FaultyFileServer

_REQUEST = h11.Request(method="GET", target="/", headers=[("Host", "x")])


def _swap(conn: h11.Connection) -> None:
    conn._receive_buffer = ZeroCopyReceiveBuffer.taking_over(conn._receive_buffer)


def _events(parts: list[bytes], *, zero_copy: bool, swap_after_headers: bool) -> list[Any]:
    """Feed ``parts`` to an h11 client; return its events with Data merged."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=100 * 1024)
    if zero_copy and not swap_after_headers:
        _swap(conn)
    conn.send(_REQUEST)
    conn.send(h11.EndOfMessage())
    pending = list(parts)
    cycles = 1
    out: list[Any] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            out.append(("error", str(exc)))
            break
        if event is h11.NEED_DATA:
            conn.receive_data(pending.pop(0) if pending else b"")
            if not pending and conn.their_state is h11.CLOSED:
                break
            continue
        if event is h11.PAUSED:
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE and cycles < 2:
                conn.start_next_cycle()
                cycles += 1
                conn.send(_REQUEST)
                conn.send(h11.EndOfMessage())
                continue
            out.append(("paused", bytes(conn.trailing_data[0])))
            break
        if isinstance(event, h11.ConnectionClosed):
            out.append(("closed",))
            break
        if isinstance(event, h11.Response) and zero_copy and swap_after_headers:
            _swap(conn)
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + data)
            else:
                out.append(("data", data))
        else:
            out.append((type(event).__name__, getattr(event, "status_code", None)))
    return out


def _response(kind: str, body: bytes, second: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n"
    if kind == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if kind == "short":  # the server promised more than it sent
        return head + b"Content-Length: %d\r\n\r\n" % (len(body) + 5) + body
    if kind == "extra":  # bytes after the body
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body + b"garbage"
    if kind == "two":  # a kept-alive connection answering a second request
        return (
            head
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
            + b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(second)
            + second
        )
    if kind == "close":  # body delimited by the end of the connection
        return head + b"Connection: close\r\n\r\n" + body
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
    for start in range(0, len(body), 700):
        piece = body[start : start + 700]
        chunked += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return chunked + b"0\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["length", "short", "extra", "two", "close", "chunked"]),
    body=st.binary(max_size=3000),
    second=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=8),
    swap_after_headers=st.booleans(),
)
def test_zero_copy_buffer_gives_the_same_events_as_h11s_own(
    kind: str, body: bytes, second: bytes, cuts: list[int], swap_after_headers: bool
) -> None:
    stream = _response(kind, body, second)
    points = sorted({c for c in cuts if c < len(stream)})
    parts = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected = _events(parts, zero_copy=False, swap_after_headers=False)
    got = _events(parts, zero_copy=True, swap_after_headers=swap_after_headers)
    assert got == expected


def test_a_whole_read_is_handed_on_without_a_copy() -> None:
    buffer = ZeroCopyReceiveBuffer()
    read = os.urandom(1 << 16)
    buffer += read
    assert len(buffer) == len(read)
    out: object = buffer.maybe_extract_at_most(1 << 20)
    assert out is read  # the same object, not a copy
    assert len(buffer) == 0


async def test_the_pool_really_swaps_the_buffer_into_live_connections(
    fault_server: FaultyFileServer,
) -> None:
    data = os.urandom(3 << 20)
    url = fault_server.add_file("/fw.bin", data)
    async with ZeroCopyPool() as pool, pool.stream("GET", url) as response:
        digest = hashlib.sha256()
        async for chunk in response.aiter_stream():
            digest.update(chunk)
        (connection,) = pool.connections
        inner: Any = getattr(connection, "_inner", None)
        state = inner._connection._h11_state
        # If this fails, httpcore or h11 changed: downloads still work, but slower.
        assert type(state._receive_buffer) is ZeroCopyReceiveBuffer
    assert response.status == 200
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert isinstance(connection, httpcore.AsyncConnectionInterface)
