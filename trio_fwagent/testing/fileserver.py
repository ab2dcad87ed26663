"""A fault-injecting HTTP/1.1 file server on Trio (h11), for tests, the demo and the bench.

This module owns :class:`FaultyFileServer`: it serves files registered by path (bytes in
memory or files on disk, streamed in chunks, so 1 GiB works) on 127.0.0.1 and misbehaves
on request through a mutable :class:`Faults` per file or globally: no Range support
(like thin-edge's file server), no ETag / Last-Modified, dropped connections after N
bytes (once or every N), stalls, a sequence of error statuses with Retry-After, the file
changing in the middle of a download, corrupted bytes, a Content-Length that lies, and
throttling. It counts requests and body bytes sent per path and records the Range
headers it received, so tests can assert what a download cost. One-shot faults clear
themselves in the Faults object when they fire. It must never listen beyond loopback
and knows nothing about the downloader.

Run it standalone with ``python -m trio_fwagent.testing.fileserver FILE...``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import trio

__all__ = ["Faults", "FaultyFileServer", "PathStats"]

HOST = "127.0.0.1"
_CHUNK = 512 * 1024
_THROTTLE_TICK = 0.02
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass
class Faults:
    """How a file (or, as the server default, every file) misbehaves. Mutable on purpose.

    Byte positions of ``drop_*``, ``stall_at`` and ``swap_at`` count the body bytes of
    that path sent so far over all requests (see :attr:`PathStats.body_bytes`).

    Attributes:
        ranges: Honour Range / If-Range (False: always 200 with the whole file).
        etag: Send a strong ETag.
        last_modified: Send Last-Modified.
        statuses: Statuses to answer first, one per request, consumed in order.
        retry_after: Retry-After header value sent with those statuses.
        drop_at: Close the connection once this many body bytes were sent (one-shot).
        drop_every: Close the connection each time another multiple of N bytes was sent.
        stall_at: Stop sending for ``stall_for`` seconds at this byte count (one-shot).
        stall_for: Length of the stall in seconds.
        swap_at: At this byte count replace the file with ``swap_to`` (new ETag and
            Last-Modified) and drop the connection (one-shot).
        swap_to: The new content.
        corrupt_at: Flip the bits of the byte at this file offset in every response.
        declare_length: Declare this Content-Length on 200 responses, send the real
            file, then close (a lie when it differs).
        throttle: Send at most this many bytes per second per response.
    """

    ranges: bool = True
    etag: bool = True
    last_modified: bool = True
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    drop_at: int | None = None
    drop_every: int | None = None
    stall_at: int | None = None
    stall_for: float = 0.0
    swap_at: int | None = None
    swap_to: bytes | Path | None = None
    corrupt_at: int | None = None
    declare_length: int | None = None
    throttle: float | None = None


@dataclass
class PathStats:
    """What the server did for one path.

    Attributes:
        requests: Requests received.
        body_bytes: Bytes of the file sent in response bodies (passed to the socket;
            the short bodies of error statuses are not counted).
        ranges: The Range header of each request (None when absent).
        if_ranges: The If-Range header of each request.
        statuses: The status answered to each request.
        bodies: File bytes sent in answer to each request.
    """

    requests: int = 0
    body_bytes: int = 0
    ranges: list[str | None] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    bodies: list[int] = field(default_factory=list)


class _File:
    def __init__(self, content: bytes | Path, faults: Faults | None) -> None:
        self.faults = faults
        self.version = 0
        self.mtime = time.time()
        self.content: bytes | Path = content
        self.size = self._size()

    def _size(self) -> int:
        if isinstance(self.content, bytes):
            return len(self.content)
        return self.content.stat().st_size

    def replace(self, content: bytes | Path) -> None:
        self.content = content
        self.size = self._size()
        self.version += 1
        self.mtime += 10.0

    @property
    def etag(self) -> str:
        return f'"{self.size:x}-{self.version}"'

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime, usegmt=True)

    async def read(self, offset: int, n: int) -> bytes:
        content = self.content
        if isinstance(content, bytes):
            return content[offset : offset + n]
        return await trio.to_thread.run_sync(_pread, content, offset, n)


def _pread(path: Path, offset: int, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(n)


class _Dropped(Exception):
    """The server closed the connection on purpose."""


class FaultyFileServer:
    """Serves registered files over HTTP/1.1 on 127.0.0.1, misbehaving as told.

    Args:
        faults: Default faults for files registered without their own.
        port: Port to bind (0: a free one; see :attr:`port` once running).
    """

    def __init__(self, *, faults: Faults | None = None, port: int = 0) -> None:
        self.faults = faults if faults is not None else Faults()
        self.port = port
        self.stats: dict[str, PathStats] = {}
        self._files: dict[str, _File] = {}

    # -- configuration -----------------------------------------------------------------

    def add_file(self, path: str, content: bytes | Path, faults: Faults | None = None) -> str:
        """Serve ``content`` at ``path`` (e.g. ``/fw.bin``); returns its URL when running."""
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        self._files[path] = _File(content, faults)
        return self.url(path)

    def replace_file(self, path: str, content: bytes | Path) -> None:
        """Change a file's content (new ETag and Last-Modified)."""
        self._files[path].replace(content)

    def faults_for(self, path: str) -> Faults:
        """The Faults in effect for ``path`` (its own, else the server default)."""
        own = self._files[path].faults
        return own if own is not None else self.faults

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/path``."""
        return f"http://{HOST}:{self.port}{path}"

    def stats_for(self, path: str) -> PathStats:
        """Counters for ``path`` (created empty on first use)."""
        return self.stats.setdefault(path, PathStats())

    @property
    def body_bytes(self) -> int:
        """Body bytes sent over all paths."""
        return sum(s.body_bytes for s in self.stats.values())

    @property
    def requests(self) -> int:
        """Requests received over all paths."""
        return sum(s.requests for s in self.stats.values())

    # -- serving -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 and serve until cancelled; reports the bound port."""
        listeners = await trio.open_tcp_listeners(self.port, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(self.port)

    def start_in_thread(self) -> tuple[int, Callable[[], None]]:
        """Run the server in a thread with its own Trio loop, for synchronous code.

        Returns:
            The port, and a function that stops the server and joins the thread.
        """
        ready = threading.Event()
        state: dict[str, object] = {}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                state["token"] = trio.lowlevel.current_trio_token()
                state["scope"] = nursery.cancel_scope
                await nursery.start(self.run)
                ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True, name="fileserver")
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("file server did not start")

        def stop() -> None:
            scope = state["scope"]
            assert isinstance(scope, trio.CancelScope)
            token = state["token"]
            assert isinstance(token, trio.lowlevel.TrioToken)
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
            thread.join(10)

        return self.port, stop

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(await self._next_event(conn, stream), h11.EndOfMessage):
                    pass  # a GET has no body worth reading
                await self._respond(conn, stream, event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if event is h11.PAUSED:
                return h11.ConnectionClosed()
            assert isinstance(event, h11.Event)
            if isinstance(event, h11.ConnectionClosed):
                raise _Dropped
            return event

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, event: h11.Event
    ) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _simple(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        body = f"{status}\n".encode()
        headers = [("Content-Length", str(len(body))), ("Content-Type", "text/plain")]
        await self._send(
            conn, stream, h11.Response(status_code=status, headers=headers + (extra or []))
        )
        await self._send(conn, stream, h11.Data(data=body))
        await self._send(conn, stream, h11.EndOfMessage())

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> None:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        stats = self.stats_for(path)
        stats.requests += 1
        stats.ranges.append(headers.get("range"))
        stats.if_ranges.append(headers.get("if-range"))
        stats.bodies.append(0)
        index = len(stats.bodies) - 1
        file = self._files.get(path)
        if request.method not in (b"GET", b"HEAD"):
            stats.statuses.append(405)
            await self._simple(conn, stream, 405, [("Allow", "GET, HEAD")])
            return
        if file is None:
            stats.statuses.append(404)
            await self._simple(conn, stream, 404)
            return
        faults = self.faults_for(path)
        if faults.statuses:
            status = faults.statuses.pop(0)
            stats.statuses.append(status)
            extra = [("Retry-After", faults.retry_after)] if faults.retry_after else []
            await self._simple(conn, stream, status, extra)
            return

        first, last, status = 0, file.size - 1, 200
        response_headers = [("Content-Type", "application/octet-stream")]
        if faults.ranges:
            response_headers.append(("Accept-Ranges", "bytes"))
            wanted = _parse_range(headers.get("range"), file.size)
            if wanted is not None and _if_range_matches(headers.get("if-range"), file, faults):
                if wanted == _UNSATISFIABLE:
                    stats.statuses.append(416)
                    await self._simple(
                        conn, stream, 416, [("Content-Range", f"bytes */{file.size}")]
                    )
                    return
                first, last = wanted
                status = 206
                response_headers.append(("Content-Range", f"bytes {first}-{last}/{file.size}"))
        if faults.etag:
            response_headers.append(("ETag", file.etag))
        if faults.last_modified:
            response_headers.append(("Last-Modified", file.last_modified))
        length = last - first + 1
        declared = faults.declare_length if status == 200 and faults.declare_length else length
        response_headers.append(("Content-Length", str(declared)))
        stats.statuses.append(status)
        await self._send(conn, stream, h11.Response(status_code=status, headers=response_headers))
        if request.method == b"HEAD":
            await self._send(conn, stream, h11.EndOfMessage())
            return
        await self._send_body(conn, stream, stats, index, file, faults, first, length)
        if declared != length:
            raise _Dropped  # the lie: close without the rest
        await self._send(conn, stream, h11.EndOfMessage())

    async def _send_body(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        stats: PathStats,
        index: int,
        file: _File,
        faults: Faults,
        first: int,
        length: int,
    ) -> None:
        started = trio.current_time()
        sent = 0
        while sent < length:
            n = min(_CHUNK, length - sent)
            for mark in (_next_drop(faults, stats.body_bytes), faults.stall_at, faults.swap_at):
                if mark is not None and mark > stats.body_bytes:
                    n = min(n, mark - stats.body_bytes)
            if faults.throttle:
                n = min(n, max(1, int(faults.throttle * _THROTTLE_TICK)))
            data = await file.read(first + sent, n)
            if (
                faults.corrupt_at is not None
                and first + sent <= faults.corrupt_at < first + sent + n
            ):
                mutable = bytearray(data)
                mutable[faults.corrupt_at - first - sent] ^= 0xFF
                data = bytes(mutable)
            for piece in conn.send_with_data_passthrough(h11.Data(data=data)) or []:
                await stream.send_all(piece)
            sent += n
            stats.body_bytes += n
            stats.bodies[index] += n
            if faults.throttle:
                await trio.sleep_until(started + sent / faults.throttle)
            await self._after_bytes(faults, file, stats.body_bytes)

    async def _after_bytes(self, faults: Faults, file: _File, total: int) -> None:
        if faults.stall_at is not None and total >= faults.stall_at:
            faults.stall_at = None
            await trio.sleep(faults.stall_for)
        if faults.swap_at is not None and total >= faults.swap_at:
            faults.swap_at = None
            if faults.swap_to is not None:
                file.replace(faults.swap_to)
            raise _Dropped
        if faults.drop_at is not None and total >= faults.drop_at:
            faults.drop_at = None
            raise _Dropped
        if faults.drop_every and total % faults.drop_every == 0:
            raise _Dropped


def _next_drop(faults: Faults, total: int) -> int | None:
    marks = []
    if faults.drop_at is not None:
        marks.append(faults.drop_at)
    if faults.drop_every:
        marks.append((total // faults.drop_every + 1) * faults.drop_every)
    return min(marks) if marks else None


_UNSATISFIABLE = (-1, -1)


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last), _UNSATISFIABLE, or None (absent or not understood: serve 200)."""
    if value is None:
        return None
    match = _RANGE.match(value)
    if match is None:
        return None
    first_s, last_s = match.groups()
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        return _UNSATISFIABLE if suffix == 0 or size == 0 else (max(0, size - suffix), size - 1)
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if first >= size:
        return _UNSATISFIABLE
    if last < first:
        return None
    return first, min(last, size - 1)


def _if_range_matches(value: str | None, file: _File, faults: Faults) -> bool:
    if value is None:
        return True
    if value.startswith('"'):
        return faults.etag and value == file.etag
    return faults.last_modified and value == file.last_modified


def main(argv: list[str] | None = None) -> None:
    """Command line: serve files by their base name, with optional faults."""
    parser = argparse.ArgumentParser(prog="python -m trio_fwagent.testing.fileserver")
    parser.add_argument("files", nargs="+", type=Path, help="files to serve as /<basename>")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-ranges", action="store_true", help="ignore Range (like thin-edge)")
    parser.add_argument("--no-etag", action="store_true")
    parser.add_argument("--throttle", type=float, help="bytes per second per response")
    parser.add_argument("--drop-every", type=int, help="close the connection every N bytes")
    args = parser.parse_args(argv)
    faults = Faults(
        ranges=not args.no_ranges,
        etag=not args.no_etag,
        throttle=args.throttle,
        drop_every=args.drop_every,
    )
    server = FaultyFileServer(faults=faults, port=args.port)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            for file in args.files:
                url = server.add_file("/" + file.name, file.resolve())
                print(f"{url} size={file.stat().st_size}", flush=True)
            print(f"listening on http://{HOST}:{port}/ (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


def sha256_of(content: bytes) -> str:
    """Hex SHA-256 of ``content`` (a convenience for tests and the demo)."""
    return hashlib.sha256(content).hexdigest()


if __name__ == "__main__":
    main()
