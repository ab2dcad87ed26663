"""The Trio MQTT client: connections, reconnects, keep-alive, publish and subscribe.

This module owns the I/O shell around the sans-IO :class:`~trio_fwagent.mqtt.session.
ClientSession`: it opens transports (:mod:`.transport`), runs one reader task (the only
receiver), one writer task (the only sender: callers queue into the session and wake
it, so a cancelled caller can never leave half a packet on the wire), and one
keep-alive task per connection; it reconnects forever with capped exponential backoff
and full jitter, re-subscribes when the broker lost the session, and routes inbound
messages to bounded per-subscription channels without ever blocking the reader.
Protocol rules (packet ids, acks, the QoS 1/2 outbox and its re-send with DUP) belong
to the session, not here; thin-edge topics and operations belong to the agent.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import trio

from trio_fwagent.mqtt.errors import ConnectionLost, MqttError, MqttUsageError
from trio_fwagent.mqtt.packets import (
    DEFAULT_MAX_PACKET_SIZE,
    Will,
    check_topic_filter,
    check_topic_name,
    topic_matches,
)
from trio_fwagent.mqtt.session import (
    AckToken,
    ClientSession,
    Connected,
    Event,
    MessageDropped,
    MessageReceived,
    PongReceived,
    PublishAcknowledged,
    SubscribeAcknowledged,
    UnsubscribeAcknowledged,
)
from trio_fwagent.mqtt.transport import Transport, connect_transport, describe

__all__ = ["Message", "MqttClient", "MqttSettings"]

logger = logging.getLogger("trio_fwagent.mqtt")

_SUBACK_REFUSED = 0x80
# A polite goodbye (DISCONNECT, TLS close_notify, WebSocket close) gets this long.
_GOODBYE_GRACE = 1.0
_QOS0_RETRY_PAUSE = 0.05  # seconds; see MqttClient.publish


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where the broker is, how to reach it, and who we are to it.

    ``transport`` is the byte stream ("tcp" or "websockets"); ``tls`` puts TLS under
    either (mqtts / wss). ``keepalive`` is in seconds (0 turns pings off); a PINGREQ
    goes out after that long without traffic, and a missing PINGRESP declares the
    connection dead. ``connect_timeout`` bounds transport set-up plus CONNACK.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str = "/mqtt"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    client_id: str = "trio-fwagent"
    keepalive: int = 60
    clean_session: bool = False
    will: Will | None = None
    username: str | None = None
    password: str | None = None
    reconnect_min_delay: float = 0.1
    reconnect_max_delay: float = 30.0
    connect_timeout: float = 10.0
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE


class _AckCounter:
    """One received QoS 1 message: PUBACK once every manual subscriber acknowledged it."""

    __slots__ = ("_client", "abandoned", "token", "waiting")

    def __init__(self, client: MqttClient, token: AckToken) -> None:
        self._client = client
        self.token = token
        self.waiting = 1  # held by the routing itself until every subscriber has its copy
        self.abandoned = False  # a subscriber dropped it unhandled: no PUBACK, re-sent later

    def release(self, *, handled: bool = True) -> None:
        if not handled:
            self.abandoned = True
        self.waiting -= 1
        if self.waiting == 0:
            self._client._settle(self.token, handled=not self.abandoned)


class _Ack:
    """One subscriber's copy of a message: acknowledging it twice counts once.

    It sits in its subscription's ``unacked`` set until fired, so that leaving the
    subscription can abandon what its subscriber never acknowledged.
    """

    __slots__ = ("_counter", "_unacked")

    def __init__(self, counter: _AckCounter, unacked: set[_Ack]) -> None:
        self._counter: _AckCounter | None = counter
        self._unacked = unacked
        unacked.add(self)

    def fire(self, *, handled: bool = True) -> None:
        counter, self._counter = self._counter, None
        self._unacked.discard(self)
        if counter is not None:
            counter.release(handled=handled)


@dataclass(frozen=True, slots=True)
class Message:
    """An application message delivered to a subscription.

    On a ``manual_ack`` subscription, call :meth:`ack` once the message is handled
    (for example persisted): until then the broker has no PUBACK, and re-sends the
    message after a reconnect or a restart (persistent session).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    _ack: _Ack | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        """Acknowledge the message to the broker (QoS 1 on a ``manual_ack`` subscription;
        otherwise, and after the first call, nothing happens)."""
        if self._ack is not None:
            self._ack.fire()

    def _abandon(self) -> None:
        if self._ack is not None:
            self._ack.fire(handled=False)


@dataclass(eq=False, slots=True)
class _Subscription:
    """One ``subscribe()`` context: its filter, its channel and whether the broker has it."""

    topic_filter: str
    qos: int
    channel: trio.MemorySendChannel[Message]
    manual_ack: bool = False
    unacked: set[_Ack] = field(default_factory=set)  # manual_ack: delivered, not acknowledged
    dropped: int = 0
    # Set by SUBACK, or when the connection that carried SUBSCRIBE ends.
    settled: trio.Event = field(default_factory=trio.Event)
    acknowledged: bool = False
    refused: bool = False


class _Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's "Full Jitter")."""

    def __init__(self, low: float, high: float) -> None:
        self.low = max(low, 0.001)
        self.high = max(high, self.low)
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * math.pow(2, min(self.failures, 60)))
        self.failures += 1
        return random.uniform(0, ceiling)


# A per-connection task: gets the transport and a flag "a send was cut short".
_TaskFn: TypeAlias = Callable[[Transport, list[bool]], Awaitable[None]]


class MqttClient:
    """An MQTT 3.1.1 client on Trio with a persistent session and a reconnect loop.

    Start it with ``await nursery.start(client.run)``; publish and subscribe from any
    task, connected or not. Cancel ``run()`` to disconnect.

    Attributes:
        connects: CONNACKs accepted so far (1 after the first connect; +1 per reconnect).
        connection_attempts: Transports opened or tried.
        dropped: Inbound messages dropped because a subscriber's channel was full.
        last_error: Why the last connection (attempt) ended, or None.
    """

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._session = ClientSession(
            client_id=settings.client_id,
            keepalive=settings.keepalive,
            clean_session=settings.clean_session,
            will=settings.will,
            username=settings.username,
            password=settings.password.encode() if settings.password is not None else None,
            max_packet_size=settings.max_packet_size,
            manual_ack=True,  # auto subscriptions acknowledge when routing (_route)
        )
        self._subscriptions: list[_Subscription] = []
        self._subscribe_batches: dict[int, list[_Subscription]] = {}
        self._stale_filters: set[str] = set()  # unsubscribe when we next can
        self._publish_waiters: dict[int, trio.Event] = {}
        self._connected = False
        self._connected_event = trio.Event()
        self._wake_writer = trio.Event()
        self._send_scope: trio.CancelScope | None = None
        self._last_sent = 0.0
        self._last_received = 0.0
        self._ping_sent_at: float | None = None
        self._running = False
        self.connects = 0
        self.connection_attempts = 0
        self.dropped = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True while a connection is up and the broker accepted it."""
        return self._connected

    @property
    def outbox_size(self) -> int:
        """QoS 1/2 messages published and not yet acknowledged by the broker."""
        return self._session.outbox_size

    async def wait_connected(self) -> None:
        """Return once the client is connected (at once if it is)."""
        while not self._connected:
            await self._connected_event.wait()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish a message.

        QoS 1/2: returns once the broker acknowledged it, across reconnects if need be.
        The message stays in the outbox until acknowledged even if the caller is
        cancelled while waiting. QoS 0: waits for a connection, then queues it (at most
        once; a connection lost right after may lose it).

        Raises:
            MqttUsageError: Invalid topic or QoS.
        """
        check_topic_name(topic)
        if qos == 0:
            while True:
                await self.wait_connected()
                try:
                    self._session.publish(topic, payload, qos=0, retain=retain)
                except MqttUsageError:
                    if self._session.connected:
                        raise
                    # The session lost the connection before the connection task noticed
                    # (our `connected` is still True): give that task a moment to run,
                    # or this loop would spin without ever yielding.
                    await trio.sleep(_QOS0_RETRY_PAUSE)
                    continue
                self._kick()
                return
        if qos not in (1, 2):
            raise MqttUsageError(f"QoS must be 0, 1 or 2, got {qos!r}")
        packet_id = self._session.publish(topic, payload, qos=qos, retain=retain)
        assert packet_id is not None
        acknowledged = trio.Event()
        self._publish_waiters[packet_id] = acknowledged
        try:
            self._kick()
            await acknowledged.wait()
        finally:
            self._publish_waiters.pop(packet_id, None)

    def subscribe(
        self, topic_filter: str, *, qos: int = 1, buffer: int = 256, manual_ack: bool = False
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Message]]:
        """Subscribe for the duration of an ``async with`` block.

        Matching messages arrive on the channel it yields. The subscription is renewed
        after a reconnect when the broker lost the session. If connected, entering
        waits for the broker's SUBACK (or for the connection to drop); if not, it
        returns at once and subscribes on the next connect. A full channel never blocks
        the client: the message is dropped, logged and counted (:attr:`dropped`).

        With ``manual_ack``, a QoS 1 message is acknowledged to the broker only when
        :meth:`Message.ack` is called (PUBACKs keep arrival order, so acknowledge every
        message, promptly); one left unacknowledged when the connection ends comes again
        after the next connect, with ``dup`` set. A message this subscription drops
        (full channel) or never acknowledges before the block is left is abandoned: no
        PUBACK (later ones no longer wait for it), so the broker re-sends it after the
        next connect. QoS 2 messages are always acknowledged on arrival.

        Raises:
            MqttUsageError: Invalid filter or QoS.
            MqttError: The broker refused the subscription.
        """
        check_topic_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise MqttUsageError(f"QoS must be 0, 1 or 2, got {qos!r}")
        return self._subscription(topic_filter, qos, buffer, manual_ack)

    @asynccontextmanager
    async def _subscription(
        self, topic_filter: str, qos: int, buffer: int, manual_ack: bool
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        send, receive = trio.open_memory_channel[Message](buffer)
        sub = _Subscription(topic_filter, qos, send, manual_ack)
        self._subscriptions.append(sub)
        self._stale_filters.discard(topic_filter)
        try:
            if self._session.connected:
                self._send_subscribe([sub])
                await sub.settled.wait()
                if sub.refused:
                    raise MqttError(f"broker refused the subscription to {topic_filter!r}")
            with receive:
                yield receive
        finally:
            self._subscriptions.remove(sub)
            send.close()
            for ack in list(sub.unacked):  # not handled: the broker re-sends it later
                ack.fire(handled=False)
            if all(other.topic_filter != topic_filter for other in self._subscriptions):
                self._unsubscribe_later(topic_filter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect whenever the connection ends, until cancelled.

        Signals ``task_status.started()`` at once, before the first connect. On
        cancellation it sends DISCONNECT (bounded, shielded) and closes the transport.
        """
        if self._running:
            raise MqttUsageError("MqttClient.run() is already running")
        self._running = True
        backoff = _Backoff(self.settings.reconnect_min_delay, self.settings.reconnect_max_delay)
        task_status.started()
        try:
            await self._reconnect_forever(backoff)
        finally:
            self._running = False

    async def _reconnect_forever(self, backoff: _Backoff) -> None:
        while True:
            connects_before = self.connects
            reason = await self._connection()
            if self.connects != connects_before:
                backoff.reset()
            delay = backoff.next_delay()
            self.last_error = reason
            if self.connects != connects_before:
                logger.warning(
                    "MQTT connection to %s lost: %s; reconnecting in %.2f s",
                    describe(self.settings),
                    reason,
                    delay,
                )
            else:
                # The first failure in a row is news; the ones after it are routine.
                logger.log(
                    logging.WARNING if backoff.failures == 1 else logging.INFO,
                    "MQTT connect to %s failed: %s; retrying in %.2f s",
                    describe(self.settings),
                    reason,
                    delay,
                )
            await trio.sleep(delay)

    # ------------------------------------------------------------------ one connection

    async def _connection(self) -> str:
        """Run one connection from transport set-up to its end; return why it ended."""
        self.connection_attempts += 1
        reason = "unknown"
        async with trio.open_nursery() as nursery:
            try:
                transport = await self._open(nursery)
            except MqttError as exc:
                reason = str(exc)
            else:
                reason = await self._serve(transport)
            # Ends the WebSocket reader if the transport left one behind.
            nursery.cancel_scope.cancel()
        return reason

    async def _open(self, nursery: trio.Nursery) -> Transport:
        """Open the transport and complete CONNECT/CONNACK within connect_timeout."""
        settings = self.settings
        transport: Transport | None = None
        try:
            with trio.fail_after(settings.connect_timeout):
                transport = await connect_transport(nursery, settings)
                self._session.start_connection()
                await transport.send_all(self._session.data_to_send())
                while not self._session.connected:
                    data = await transport.receive_some()
                    if not data:
                        raise ConnectionLost("broker closed the connection before CONNACK")
                    self._dispatch(self._session.receive_data(data))
        except trio.TooSlowError:
            await self._abandon(transport)
            raise ConnectionLost(
                f"no CONNACK within {settings.connect_timeout:g} s (connect_timeout)"
            ) from None
        except BaseException:
            await self._abandon(transport)
            raise
        return transport

    async def _abandon(self, transport: Transport | None) -> None:
        self._session.connection_lost()
        if transport is not None:
            with trio.CancelScope(shield=True):
                await transport.aclose()

    async def _serve(self, transport: Transport) -> str:
        """Run reader, writer and keep-alive until one of them reports the connection dead."""
        reason = "cancelled"
        stream_dirty = [False]
        died: list[str] = []
        try:
            async with trio.open_nursery() as tasks:

                async def guard(name: str, coro_fn: _TaskFn) -> None:
                    try:
                        await coro_fn(transport, stream_dirty)
                    except MqttError as exc:
                        died.append(str(exc) or f"{name}: {type(exc).__name__}")
                    tasks.cancel_scope.cancel()
                    if self._send_scope is not None:
                        self._send_scope.cancel()

                tasks.start_soon(guard, "reader", self._reader)
                tasks.start_soon(guard, "writer", self._writer)
                tasks.start_soon(guard, "keepalive", self._keepalive)
                self._kick()  # the outbox, re-sent after CONNACK, is waiting
                try:
                    await trio.sleep(math.inf)  # until a task ends the connection
                finally:
                    # Cancelled from outside: a send in progress gets a short grace to
                    # finish, so that no half packet precedes the DISCONNECT below.
                    if self._send_scope is not None:
                        self._send_scope.deadline = min(
                            self._send_scope.deadline, trio.current_time() + _GOODBYE_GRACE
                        )
        finally:
            reason = died[0] if died else reason
            polite = self._session.connected and not died and not stream_dirty[0]
            if died:
                # Before `connected` turns False: whoever sees the disconnect sees why.
                self.last_error = reason
            self._mark_disconnected()
            with trio.move_on_after(_GOODBYE_GRACE, shield=True):
                if polite:
                    # Only reached on cancellation from outside: say goodbye properly,
                    # after whatever was queued (a QoS 0 publish that already returned).
                    self._session.disconnect()
                    try:
                        await transport.send_all(self._session.data_to_send())
                        logger.info("MQTT disconnected from %s", describe(self.settings))
                    except MqttError:
                        pass
                await transport.aclose()
            self._session.connection_lost()
        return reason

    async def _reader(self, transport: Transport, stream_dirty: list[bool]) -> None:
        while True:
            data = await transport.receive_some()
            if not data:
                raise ConnectionLost("broker closed the connection")
            self._last_received = trio.current_time()
            self._dispatch(self._session.receive_data(data))
            self._kick()

    async def _writer(self, transport: Transport, stream_dirty: list[bool]) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            data = self._session.data_to_send()
            if not data:
                continue
            # Bytes taken from the session must reach the wire whole: outside
            # cancellation waits (a bounded grace, see _serve); a dead connection
            # cancels the send explicitly.
            scope = self._send_scope = trio.CancelScope(shield=True)
            try:
                with scope:
                    await transport.send_all(data)
            finally:
                self._send_scope = None
            if scope.cancelled_caught:
                stream_dirty[0] = True  # part of a packet may be on the wire
                raise ConnectionLost("a send was cut short")
            self._last_sent = trio.current_time()

    async def _keepalive(self, transport: Transport, stream_dirty: list[bool]) -> None:
        keepalive = self.settings.keepalive
        if keepalive <= 0:
            await trio.sleep_forever()  # returning would end the connection
        # A broker answers PINGREQ in milliseconds; a bounded wait for it is what
        # notices a silent peer (half-open TCP, a dead NAT entry) long before TCP would.
        pong_timeout = min(max(keepalive / 2, 1.0), 30.0)
        tick = min(keepalive / 4, 1.0)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            if self._ping_sent_at is not None:
                # Bytes still arriving are a sign of life: on a slow link the PINGRESP
                # waits behind whatever the broker sent before it (a large message).
                if now - max(self._ping_sent_at, self._last_received) > pong_timeout:
                    raise ConnectionLost(
                        f"no PINGRESP within {pong_timeout:g} s and nothing received "
                        f"(keepalive {keepalive} s)"
                    )
                continue
            idle = now - min(self._last_sent, self._last_received)
            if idle >= keepalive:
                self._session.ping()
                self._ping_sent_at = now
                self._kick()

    # ------------------------------------------------------------------ events

    def _dispatch(self, events: Sequence[Event]) -> None:
        for event in events:
            match event:
                case MessageReceived():
                    self._route(event)
                case PublishAcknowledged(packet_id):
                    waiter = self._publish_waiters.get(packet_id)
                    if waiter is not None:
                        waiter.set()
                case SubscribeAcknowledged(packet_id, granted):
                    self._subscribe_acknowledged(packet_id, granted)
                case UnsubscribeAcknowledged():
                    pass
                case PongReceived():
                    self._ping_sent_at = None
                case MessageDropped(topic, qos, size):
                    self.dropped += 1
                    logger.warning(
                        "dropped a %d-byte message on %s (QoS %d): above max_packet_size %d",
                        size,
                        topic,
                        qos,
                        self.settings.max_packet_size,
                    )
                case Connected(session_present):
                    self._on_connected(session_present)

    def _on_connected(self, session_present: bool) -> None:
        now = trio.current_time()
        self._last_sent = self._last_received = now
        self._ping_sent_at = None
        self._connected = True
        self.connects += 1
        self._connected_event.set()
        logger.info(
            "MQTT connected to %s as %r (session present: %s, outbox: %d)",
            describe(self.settings),
            self.settings.client_id,
            session_present,
            self._session.outbox_size,
        )
        # A subscription whose SUBACK never came may be missing even from a kept session.
        renew = [s for s in self._subscriptions if not (session_present and s.acknowledged)]
        if renew:
            self._send_subscribe(renew)
        if self._stale_filters:
            stale = sorted(self._stale_filters)
            self._stale_filters.clear()
            if session_present:
                self._session.unsubscribe(stale)

    def _mark_disconnected(self) -> None:
        if self._connected:
            self._connected = False
            self._connected_event = trio.Event()
        for batch in self._subscribe_batches.values():
            for sub in batch:
                sub.settled.set()
        self._subscribe_batches.clear()

    def _route(self, event: MessageReceived) -> None:
        plain = Message(event.topic, event.payload, event.qos, event.retain, event.dup)
        counter = None if event.ack_token is None else _AckCounter(self, event.ack_token)
        for sub in self._subscriptions:
            if not topic_matches(sub.topic_filter, event.topic):
                continue
            if counter is None or not sub.manual_ack:
                message = plain
            else:
                counter.waiting += 1
                ack = _Ack(counter, sub.unacked)
                message = Message(
                    event.topic, event.payload, event.qos, event.retain, event.dup, ack
                )
            try:
                sub.channel.send_nowait(message)
            except trio.WouldBlock:
                message._abandon()  # dropped: the broker re-sends it after a reconnect
                sub.dropped += 1
                self.dropped += 1
                logger.warning(
                    "MQTT subscriber of %r is not keeping up: dropped a message on %r"
                    " (%d dropped so far)",
                    sub.topic_filter,
                    event.topic,
                    sub.dropped,
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                message._abandon()  # the subscriber is leaving; its context exit unsubscribes
        if counter is not None:
            counter.release()  # routing done: acknowledged now unless a subscriber holds it

    def _settle(self, token: AckToken, *, handled: bool) -> None:
        settle = self._session.acknowledge if handled else self._session.abandon
        if settle(token):
            self._kick()

    def _send_subscribe(self, subs: Sequence[_Subscription]) -> None:
        for sub in subs:
            if sub.settled.is_set():
                sub.settled = trio.Event()
        packet_id = self._session.subscribe([(s.topic_filter, s.qos) for s in subs])
        self._subscribe_batches[packet_id] = list(subs)
        self._kick()

    def _subscribe_acknowledged(self, packet_id: int, granted: tuple[int, ...]) -> None:
        batch = self._subscribe_batches.pop(packet_id, [])
        for sub, code in zip(batch, granted, strict=False):
            sub.acknowledged = code != _SUBACK_REFUSED
            sub.refused = code == _SUBACK_REFUSED
            if sub.refused:
                logger.error("MQTT broker refused the subscription to %r", sub.topic_filter)
            sub.settled.set()

    def _unsubscribe_later(self, topic_filter: str) -> None:
        if self._session.connected:
            self._session.unsubscribe([topic_filter])
            self._kick()
        else:
            self._stale_filters.add(topic_filter)

    def _kick(self) -> None:
        self._wake_writer.set()
