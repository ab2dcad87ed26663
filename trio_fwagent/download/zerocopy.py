"""h11 receive buffers that hand response bodies on without copying them.

h11's ``ReceiveBuffer`` appends every socket read to a ``bytearray`` and slices body
data back out of it, and httpcore then turns each slice into ``bytes``: three extra
copies of every body byte on the event loop (measured: about 0.35 s of memmove plus
0.15 s of page faults per GiB on a 2-core VM, a third of the event loop's time in a
1 GiB download). :class:`ZeroCopyReceiveBuffer` keeps a read that arrives into an empty
buffer as the ``bytes`` object it is, and when a body reader asks for at most as many
bytes as that read holds, hands the same object on; httpcore's ``bytes(...)`` of a
``bytes`` object is free. Anything else (header lines, chunk headers, a read that ends
one response and starts another) falls back to h11's own code on the ``bytearray``.

:class:`ZeroCopyPool` is httpcore's connection pool with that buffer swapped into each
HTTP/1.1 connection once its response headers have arrived. The swap reaches into
private attributes of httpcore (``AsyncHTTPConnection._connection``,
``AsyncHTTP11Connection._h11_state``) and h11 (``Connection._receive_buffer`` and the
buffer's fields); every step is checked, and anything unexpected (another httpcore or
h11 version, HTTP/2, a proxy) leaves h11's buffer in place: correct, only slower. This
module owns that swap; it must not know about downloads or files.
"""

from __future__ import annotations

import logging
from typing import Self

import h11
import httpcore

# h11 keeps ReceiveBuffer in a private module (there since h11 0.8; httpcore needs >= 0.16).
from h11._receivebuffer import ReceiveBuffer

__all__ = ["ZeroCopyPool", "ZeroCopyReceiveBuffer", "adopt"]

log = logging.getLogger(__name__)

# The fields of h11's ReceiveBuffer this module relies on (h11 0.14 - 0.16).
_FIELDS = frozenset({"_data", "_next_line_search", "_multiple_lines_search"})


def _supported() -> bool:
    try:
        if set(vars(ReceiveBuffer())) == _FIELDS:
            return True
    except Exception:  # pragma: no cover - a future h11
        pass
    log.debug("h11's ReceiveBuffer is not as expected; keeping it (body bytes are copied)")
    return False


class ZeroCopyReceiveBuffer(ReceiveBuffer):
    """h11's ReceiveBuffer, except that whole reads pass through as ``bytes``.

    ``_head`` holds a read received into an empty buffer, untouched; ``_data``
    (h11's bytearray) is then empty. Every method but the body path moves
    ``_head`` into ``_data`` first and runs h11's own code.
    """

    def __init__(self) -> None:
        super().__init__()
        self._head: bytes | None = None

    @classmethod
    def taking_over(cls, old: ReceiveBuffer) -> Self:
        """A buffer with ``old``'s contents and search state (``old`` must not be used again)."""
        new = cls()
        new._data = old._data
        new._next_line_search = old._next_line_search
        new._multiple_lines_search = old._multiple_lines_search
        return new

    def _merge(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._data += head

    def __iadd__(self, byteslike: bytes | bytearray) -> Self:
        if self._head is None and not self._data and type(byteslike) is bytes:
            self._head = byteslike
        else:
            self._merge()
            self._data += byteslike
        return self

    def __len__(self) -> int:
        head = self._head
        return len(self._data) + (0 if head is None else len(head))

    def __bytes__(self) -> bytes:
        self._merge()
        return super().__bytes__()

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        head = self._head
        if head is not None and len(head) <= count:
            self._head = None
            self._next_line_search = 0
            self._multiple_lines_search = 0
            # bytes where h11 says bytearray: its readers only take len() and pass
            # the object on in a Data event; httpcore calls bytes() on it.
            return head  # type: ignore[return-value]
        self._merge()
        return super().maybe_extract_at_most(count)

    def maybe_extract_next_line(self) -> bytearray | None:
        self._merge()
        return super().maybe_extract_next_line()

    def maybe_extract_lines(self) -> list[bytearray] | None:
        self._merge()
        return super().maybe_extract_lines()

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        self._merge()
        return super().is_next_line_obviously_invalid_request_line()


_SUPPORTED = _supported()


def adopt(connection: object) -> bool:
    """Swap a zero-copy buffer into an httpcore HTTP/1.1 connection; True when it has one.

    Call it between requests or right after response headers, never while another task
    is reading from the connection.
    """
    if not _SUPPORTED:
        return False
    http11 = getattr(connection, "_connection", None)
    state = getattr(http11, "_h11_state", None)
    if not isinstance(state, h11.Connection):
        return False
    buffer = getattr(state, "_receive_buffer", None)
    if type(buffer) is ZeroCopyReceiveBuffer:
        return True
    if type(buffer) is not ReceiveBuffer:
        return False
    state._receive_buffer = ZeroCopyReceiveBuffer.taking_over(buffer)
    return True


class _ZeroCopyConnection(httpcore.AsyncConnectionInterface):
    """An httpcore connection whose HTTP/1.1 bodies come through a zero-copy buffer."""

    def __init__(self, inner: httpcore.AsyncConnectionInterface) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        response = await self._inner.handle_async_request(request)
        adopt(self._inner)  # headers are in, the body not yet read
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    def info(self) -> str:
        return self._inner.info()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self._inner.can_handle_request(origin)

    def is_available(self) -> bool:
        return self._inner.is_available()

    def has_expired(self) -> bool:
        return self._inner.has_expired()

    def is_idle(self) -> bool:
        return self._inner.is_idle()

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def __repr__(self) -> str:
        return repr(self._inner)


class ZeroCopyPool(httpcore.AsyncConnectionPool):
    """httpcore's pool; its direct HTTP/1.1 connections use :class:`ZeroCopyReceiveBuffer`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        connection = super().create_connection(origin)
        if _SUPPORTED and type(connection) is httpcore.AsyncHTTPConnection:
            return _ZeroCopyConnection(connection)
        return connection
