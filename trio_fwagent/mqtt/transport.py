"""Byte-stream transports for the MQTT client: TCP, TLS, WebSocket (and WebSocket over TLS).

This module owns opening a connection to the broker and moving raw bytes over it. Every
transport looks the same to the client (:class:`Transport`: ``send_all``,
``receive_some``, ``aclose``), and every I/O failure is translated here, once, into the
project's :class:`~trio_fwagent.mqtt.errors.ConnectionLost` (or
:class:`~trio_fwagent.mqtt.errors.ProtocolError` for a peer that breaks the WebSocket
contract). It knows nothing about MQTT packets: over WebSocket an MQTT packet may be
split across or merged within binary messages, and the client's streaming decoder copes.
It must not retry, sleep or log connection state; reconnecting is the client's job.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio
import trio_websocket

from trio_fwagent.mqtt.errors import ConnectionLost, MqttUsageError, ProtocolError

if TYPE_CHECKING:
    from trio_fwagent.mqtt.client import MqttSettings

__all__ = [
    "StreamTransport",
    "Transport",
    "WebSocketTransport",
    "connect_transport",
    "describe",
    "tls_context",
]

_RECEIVE_SIZE = 65536
# Closing politely (TLS close_notify, WebSocket close handshake) is worth this much time
# and no more: the peer may be the reason we are closing.
_CLOSE_GRACE = 1.0
_WS_SUBPROTOCOL = "mqtt"


class Transport(Protocol):
    """An open, reliable, ordered byte stream to the broker."""

    async def send_all(self, data: bytes) -> None:
        """Send all of ``data``; raises ConnectionLost if the connection is gone."""
        ...

    async def receive_some(self) -> bytes:
        """Return the next bytes received, or ``b""`` once the peer closed the stream."""
        ...

    async def aclose(self) -> None:
        """Close the connection; bounded in time, safe to call more than once."""
        ...


class StreamTransport:
    """A :class:`Transport` over a Trio stream (``SocketStream`` or ``SSLStream``).

    Args:
        stream: The connected stream; the transport owns and closes it.
        description: Says where the stream goes, for error messages.
    """

    def __init__(self, stream: trio.abc.Stream, description: str) -> None:
        self._stream = stream
        self.description = description

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"sending to {self.description} failed: {_why(exc)}") from exc

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(_RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"receiving from {self.description} failed: {_why(exc)}") from exc

    async def aclose(self) -> None:
        await _close_stream(self._stream)


class WebSocketTransport:
    """A :class:`Transport` over a trio-websocket connection (binary messages).

    Args:
        connection: The open WebSocket; the transport owns and closes it.
        reader_scope: The cancel scope of the connection's reader task, which is
            shielded from outside cancellation so a polite close can still complete;
            :meth:`aclose` cancels it.
        description: Says where the connection goes, for error messages.
    """

    def __init__(
        self,
        connection: trio_websocket.WebSocketConnection,
        reader_scope: trio.CancelScope,
        description: str,
    ) -> None:
        self._connection = connection
        self._reader_scope = reader_scope
        self.description = description

    async def send_all(self, data: bytes) -> None:
        try:
            await self._connection.send_message(bytes(data))
        except trio_websocket.ConnectionClosed as exc:
            raise ConnectionLost(f"sending to {self.description} failed: {exc!r}") from exc

    async def receive_some(self) -> bytes:
        while True:
            try:
                message = await self._connection.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            if isinstance(message, str):
                raise ProtocolError("broker sent a WebSocket text message; MQTT needs binary")
            if message:  # an empty binary message is legal and must not look like EOF
                return message

    async def aclose(self) -> None:
        try:
            # trio-websocket closes the underlying stream even when this is cut short.
            with trio.move_on_after(_CLOSE_GRACE, shield=True):
                await self._connection.aclose()
        finally:
            self._reader_scope.cancel()


async def connect_transport(nursery: trio.Nursery, settings: MqttSettings) -> Transport:
    """Open a transport to the broker described by ``settings``.

    Bound the time it may take with a cancel scope at the call site.

    Args:
        nursery: Hosts the WebSocket reader task; must outlive the returned transport.
            Unused for TCP and TLS.
        settings: Host, port, transport kind, TLS files and server name.

    Returns:
        The open transport. Close it with ``aclose()``.

    Raises:
        ConnectionLost: the connection (or the TLS or WebSocket handshake) failed.
        MqttUsageError: the TLS files cannot be loaded.
    """
    description = describe(settings)
    ssl_context = _ssl_context(settings) if settings.tls else None
    stream = await _open_stream(settings, ssl_context, description)
    if settings.transport == "tcp":
        return StreamTransport(stream, description)
    try:
        connection, reader_scope = await nursery.start(_run_websocket, stream, settings)
    except BaseException:
        await _close_stream(stream)
        raise
    return WebSocketTransport(connection, reader_scope, description)


async def _open_stream(
    settings: MqttSettings, ssl_context: ssl.SSLContext | None, description: str
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    try:
        tcp = await trio.open_tcp_stream(settings.host, settings.port)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {description}: {_why(exc)}") from exc
    if ssl_context is None:
        return tcp
    tls = trio.SSLStream(
        tcp,
        ssl_context,
        server_hostname=settings.server_name or settings.host,
        # A WebSocket peer speaks HTTP rules: it may close without close_notify.
        https_compatible=settings.transport == "websockets",
    )
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(tcp)
        raise ConnectionLost(f"TLS handshake with {description} failed: {_why(exc)}") from exc
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


async def _run_websocket(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    settings: MqttSettings,
    *,
    task_status: trio.TaskStatus[
        tuple[trio_websocket.WebSocketConnection, trio.CancelScope]
    ] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own the WebSocket's reader task; hand the open connection to the caller.

    Once the handshake is done the reader is shielded from outside cancellation: the
    transport's ``aclose()`` ends it, after the close handshake had its chance.
    """
    host_header = (
        settings.host if settings.port in (80, 443) else f"{settings.host}:{settings.port}"
    )
    path = settings.ws_path if settings.ws_path.startswith("/") else "/" + settings.ws_path
    # Mosquitto puts one MQTT packet in one message; leave room for a few merged ones.
    max_message = max(2 * settings.max_packet_size, 1 << 20)
    try:
        with trio.CancelScope() as reader_scope:
            async with trio.open_nursery() as nursery:
                # trio-websocket waits for the handshake forever if the peer just closes
                # (say, a plain MQTT port): end that wait when the stream ends.
                handshake_scope = trio.CancelScope()
                watched = _EndWatcher(stream, handshake_scope)
                with handshake_scope:
                    connection = await trio_websocket.wrap_client_stream(
                        nursery,
                        watched,  # type: ignore[arg-type]  # any trio Stream works
                        host_header,
                        path,
                        subprotocols=[_WS_SUBPROTOCOL],
                        max_message_size=max_message,
                        message_queue_size=64,
                        receive_buffer_size=_RECEIVE_SIZE,
                    )
                if handshake_scope.cancelled_caught:
                    raise ConnectionLost(
                        f"WebSocket peer at {settings.host}:{settings.port}{path} closed the"
                        " connection during the handshake (is this a WebSocket listener?)"
                    )
                watched.handshake_scope = None
                if connection.subprotocol != _WS_SUBPROTOCOL:
                    await trio.aclose_forcefully(stream)
                    raise ConnectionLost(
                        f"WebSocket peer at {settings.host}:{settings.port}{path} did not accept"
                        f" subprotocol 'mqtt' (got {connection.subprotocol!r})"
                    )
                reader_scope.shield = True
                task_status.started((connection, reader_scope))
    except BaseExceptionGroup as group:
        error = _single_error(group)
        if error is None:
            raise
        if isinstance(error, trio_websocket.HandshakeError | trio_websocket.ConnectionClosed):
            raise ConnectionLost(
                f"WebSocket handshake with {settings.host}:{settings.port}{path} failed: {error!r}"
            ) from error
        raise error from None


class _EndWatcher(trio.abc.Stream):
    """Pass-through stream that cancels ``handshake_scope`` when the peer's side ends."""

    def __init__(self, stream: trio.abc.Stream, handshake_scope: trio.CancelScope) -> None:
        self._stream = stream
        self.handshake_scope: trio.CancelScope | None = handshake_scope

    def _ended(self) -> None:
        if self.handshake_scope is not None:
            self.handshake_scope.cancel()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-Cancelled exception in a (nested) group, or None if it is not that simple."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    if any(isinstance(leaf, trio.Cancelled) for leaf in leaves) or len(leaves) != 1:
        return None
    return leaves[0]


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("the key is encrypted (passphrase-protected keys are not supported)")


def tls_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """A client TLS context: ``ca_file`` (else the system's CAs) and an optional client
    certificate. Shared by the connection and the configuration check at start.

    Raises:
        OSError, ssl.SSLError: A file is missing, unreadable or not PEM.
        ValueError: The key is encrypted (never prompts for a passphrase).
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(
            str(cert_file), str(key_file) if key_file else None, password=_no_password
        )
    return context


def _ssl_context(settings: MqttSettings) -> ssl.SSLContext:
    try:
        return tls_context(settings.ca_file, settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise MqttUsageError(f"cannot load TLS files: {exc}") from exc


async def _close_stream(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(_CLOSE_GRACE, shield=True) as scope:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)


def describe(settings: MqttSettings) -> str:
    """The broker's address as a URL-like string, for logs and error messages."""
    if settings.transport == "websockets":
        scheme = "wss" if settings.tls else "ws"
        return f"{scheme}://{settings.host}:{settings.port}{settings.ws_path}"
    scheme = "mqtts" if settings.tls else "mqtt"
    return f"{scheme}://{settings.host}:{settings.port}"


def _why(exc: BaseException) -> str:
    """The most specific reason in an exception chain, as one line."""
    cause = exc.__cause__ or exc.__context__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        # trio.open_tcp_stream: one OSError per address tried; the first one says enough.
        cause = cause.exceptions[0]
    if cause is not None and str(cause):
        return str(cause)
    return str(exc) or type(exc).__name__
