"""An httpx client whose connections read from the socket in large pieces.

httpcore's HTTP/1.1 connection asks its network stream for at most 64 KiB per read
(``READ_NUM_BYTES``), and h11's per-event overhead then dominates a loopback or LAN
download (DESIGN.md's speed table: 2.6-2.9 s/GiB with 64 KiB reads against 0.9 with
1 MiB reads, before any hashing). This module owns the one place that changes that: a
network backend wrapper (httpcore's public ``AsyncNetworkBackend`` interface) whose
streams raise every read to ``read_size``; h11 then hands the body on in pieces of up
to that size. The backend also starts each TCP receive buffer large (Linux), because a
connection that starts small can stay in ~100 KiB reads for its whole life (measured on
loopback: 0.4 s/GiB with the larger start, 0.6-2.3 s/GiB without, same client).
httpx's ``AsyncHTTPTransport`` takes no network backend, so :class:`LargeReadTransport`
swaps its connection pool for one built with the backend, a
:class:`~trio_fwagent.download.zerocopy.ZeroCopyPool` so that h11 hands each read's body
bytes on without copying them; if a future httpx moves that attribute, the transport
quietly keeps httpx's default pool (correct, only slower). It must not know about
downloads.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import sys
import typing
from collections.abc import Iterable

import httpcore
import httpx
import sniffio

from trio_fwagent.download.zerocopy import ZeroCopyPool

__all__ = ["LargeReadBackend", "LargeReadTransport", "create_client"]

log = logging.getLogger(__name__)

DEFAULT_READ_SIZE = 1 << 20
_DEFAULT_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5)


class _LargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, read_size: int) -> None:
        self._inner = inner
        self._read_size = read_size

    # httpcore's stream interface takes timeout= arguments; we only pass them on.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max(max_bytes, self._read_size), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _LargeReadStream(inner, self._read_size)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


def _grow_receive_buffer(stream: httpcore.AsyncNetworkStream, size: int) -> None:
    """Start the TCP receive buffer at ``size`` without switching off autotuning (Linux).

    A connection whose receive buffer starts small can settle into a rhythm of ~100 KiB
    reads (the window never grows because each read drains it), and then spends its
    time on per-read overhead. On Linux, raising SO_RCVLOWAT grows the receive buffer
    to fit (capped by ``net.ipv4.tcp_rmem``) and, unlike SO_RCVBUF, keeps autotuning;
    setting it back to 1 keeps the buffer and wakes readers for every byte as before.
    Best effort: anything unexpected leaves the socket as it was.
    """
    if not sys.platform.startswith("linux"):
        return
    sock = stream.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    except (OSError, AttributeError):
        log.debug("could not grow the receive buffer", exc_info=True)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """Wraps httpcore's Trio (or AnyIO) backend; its streams read ``read_size`` at a time."""

    def __init__(self, read_size: int = DEFAULT_READ_SIZE) -> None:
        self._read_size = read_size
        self._inner: httpcore.AsyncNetworkBackend | None = None

    def _backend(self) -> httpcore.AsyncNetworkBackend:
        if self._inner is None:
            if sniffio.current_async_library() == "trio":
                self._inner = httpcore.TrioBackend()
            else:
                self._inner = httpcore.AnyIOBackend()
        return self._inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._backend().connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        _grow_receive_buffer(inner, self._read_size * 4)
        return _LargeReadStream(inner, self._read_size)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._backend().connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _LargeReadStream(inner, self._read_size)

    async def sleep(self, seconds: float) -> None:
        await self._backend().sleep(seconds)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once (loading the CA bundle takes ~0.1 s)."""
    return httpx.create_ssl_context()


class LargeReadTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP/1.1 transport over :class:`LargeReadBackend`.

    Args:
        read_size: Bytes to ask the socket for per read.
        verify: As for httpx (True, a CA bundle path or an SSLContext).
        limits: Connection pool limits.
    """

    def __init__(
        self,
        *,
        read_size: int = DEFAULT_READ_SIZE,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
    ) -> None:
        ssl_context = _default_ssl_context() if verify is True else httpx.create_ssl_context(verify)
        super().__init__(verify=ssl_context, limits=limits)
        if not hasattr(self, "_pool"):  # pragma: no cover - a future httpx
            log.debug("httpx transport has no _pool; keeping its default 64 KiB reads")
            return
        self._pool = ZeroCopyPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=LargeReadBackend(read_size),
        )


def create_client(*, read_size: int = DEFAULT_READ_SIZE) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for large downloads: large reads, redirects, no timeouts.

    Timeouts are the caller's cancel scopes (the downloader's stall timeout). Proxies
    from the environment still apply (through httpx's own transports).

    Args:
        read_size: Bytes to ask the socket for per read.
    """
    return httpx.AsyncClient(
        transport=LargeReadTransport(read_size=read_size),
        timeout=httpx.Timeout(None),
        follow_redirects=True,
    )
