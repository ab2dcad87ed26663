"""A loopback TCP proxy that can be told to go silent or to drop its connections.

This module owns :class:`TcpProxy`, a Trio service placed between a client and a
server on 127.0.0.1 to simulate a flaky network: while forwarding is stopped it keeps
every socket open but discards the bytes that arrive (a silent peer, as behind a dead
NAT entry or a cut radio link), and it can close all live connections at once (a
reset). It knows nothing about the protocol it carries and must not listen on anything
but loopback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

__all__ = ["TcpProxy"]

logger = logging.getLogger(__name__)

_CHUNK = 65536
_SLOW_CHUNK = 4096  # smooth pacing when downstream_rate is set


@dataclass(eq=False, slots=True)
class _Pair:
    """One proxied connection: the accepted client stream and the stream to the target."""

    client: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class TcpProxy:
    """Forward loopback TCP connections to ``target_host:target_port``.

    Start it with ``port = await nursery.start(proxy.run)``; it serves until cancelled.

    Args:
        target_host: Where accepted connections are forwarded to.
        target_port: The target's port.
        listen_port: The port to listen on; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = listen_port
        self.accepted = 0
        self.bytes_discarded = 0
        self._forwarding = True
        self._pairs: set[_Pair] = set()
        self.downstream_rate: float | None = None
        """Bytes per second from the target to clients (a slow link); None = no limit."""

    @property
    def forwarding(self) -> bool:
        """False while bytes are being discarded (see :meth:`stop_forwarding`)."""
        return self._forwarding

    @property
    def active_connections(self) -> int:
        """How many proxied connections are open right now."""
        return len(self._pairs)

    def stop_forwarding(self) -> None:
        """Go silent: keep sockets open and accepting, discard every byte in both directions."""
        self._forwarding = False

    def start_forwarding(self) -> None:
        """Forward bytes again (connections that lost bytes meanwhile stay broken)."""
        self._forwarding = True

    def drop_connections(self) -> None:
        """Close every live proxied connection (the listener stays open)."""
        for pair in list(self._pairs):
            pair.scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 and proxy connections until cancelled.

        Args:
            task_status: Receives the listening port once the proxy accepts connections.
        """
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError as exc:
            logger.debug("proxy: cannot reach %s:%d: %s", self.target_host, self.target_port, exc)
            await trio.aclose_forcefully(client)
            return
        pair = _Pair(client, upstream)
        self._pairs.add(pair)
        try:
            with pair.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope, True)
        finally:
            self._pairs.discard(pair)
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(upstream)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        scope: trio.CancelScope,
        downstream: bool = False,
    ) -> None:
        # Either side closing or breaking ends the whole pair, as a real relay would.
        try:
            while data := await source.receive_some(
                _SLOW_CHUNK if downstream and self.downstream_rate else _CHUNK
            ):
                if self._forwarding:
                    await sink.send_all(data)
                    if downstream and self.downstream_rate:
                        await trio.sleep(len(data) / self.downstream_rate)
                else:
                    self.bytes_discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
