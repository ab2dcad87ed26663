"""The Trio MQTT client against a real mosquitto, over TCP, WebSocket and TLS.

Each test names the behaviour it protects. The independent peer is paho-mqtt (a client
we did not write), the broker is a private mosquitto on loopback, and faults are real:
SIGKILL of the broker, a lost session, a proxy that goes silent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
import trio_websocket

from tests.fixtures.mqtt_broker import PahoPeer
from trio_fwagent.mqtt import Message, MqttClient, MqttSettings, MqttUsageError
from trio_fwagent.mqtt.client import _Backoff
from trio_fwagent.testing.mosquitto import MosquittoBroker, find_mosquitto
from trio_fwagent.testing.tcpproxy import TcpProxy

T = TypeVar("T")
PeerFactory = Callable[..., PahoPeer]

TRANSPORTS = ["tcp", "websockets", "tls", "wss"]


def settings_for(broker: MosquittoBroker, kind: str = "tcp", **changes: Any) -> MqttSettings:
    """Settings that reach ``broker`` over ``kind`` ("tcp", "websockets", "tls", "wss")."""
    base: dict[str, Any] = {"host": broker.host, "keepalive": 5, "connect_timeout": 5.0}
    if kind == "tcp":
        base.update(port=broker.tcp_port)
    elif kind == "websockets":
        base.update(port=broker.ws_port, transport="websockets", ws_path="/mqtt")
    elif kind in ("tls", "wss"):
        tls = broker.tls_files
        assert tls is not None
        if kind == "wss":
            base.update(port=broker.wss_port, transport="websockets", ws_path="/mqtt")
        else:
            base.update(port=broker.tls_port)
        base.update(
            tls=True,
            ca_file=tls.ca_file,
            cert_file=tls.client_cert_file,
            key_file=tls.client_key_file,
            # Connect by address, verify by name: exercises server_name (SNI + check).
            server_name="localhost",
        )
    else:
        raise AssertionError(kind)
    base.update(changes)
    return MqttSettings(**base)


@asynccontextmanager
async def running(settings: MqttSettings) -> AsyncIterator[MqttClient]:
    """A client whose run() is going for the duration of the block."""
    client = MqttClient(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking peer call without stalling the client under test."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def receive(channel: trio.MemoryReceiveChannel[Message], count: int) -> list[Message]:
    with trio.fail_after(10):
        return [await channel.receive() for _ in range(count)]


async def publish_until_received(
    publisher: PahoPeer, topic: str, channel: trio.MemoryReceiveChannel[Message]
) -> Message:
    """Publish ``topic`` (payload = topic) until a message arrives on ``channel``.

    A subscription made while disconnected becomes live when its SUBACK arrives, which
    the test cannot observe directly; re-publishing bridges that gap.
    """
    with trio.fail_after(10):
        while True:
            await in_thread(publisher.publish, topic, topic.encode(), 1)
            with trio.move_on_after(0.5):
                return await channel.receive()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a counter or flag of the client; bound it with a cancel scope at the call site."""
    while True:
        if predicate():
            return
        await trio.sleep(0.02)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_subscriber_receives_qos_0_1_2_from_independent_publisher(
    kind: str, mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    publisher = mqtt_peer()
    async with (
        running(settings_for(mosquitto, kind, client_id=f"sub-{kind}")) as client,
    ):
        await client.wait_connected()
        async with client.subscribe("in/#", qos=2) as messages:
            for qos in (0, 1, 2):
                await in_thread(publisher.publish, f"in/q{qos}", f"payload {qos}".encode(), qos)
            got = await receive(messages, 3)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        ("in/q0", b"payload 0", 0),
        ("in/q1", b"payload 1", 1),
        ("in/q2", b"payload 2", 2),
    ]


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_publishes_reach_independent_subscriber_in_order(
    kind: str, mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    subscriber = mqtt_peer()
    await in_thread(subscriber.subscribe, "out/#", 1)
    # Large enough to be split across TCP segments and (for WebSocket) read in pieces.
    big = bytes(range(256)) * 1024
    async with running(settings_for(mosquitto, kind, client_id=f"pub-{kind}")) as client:
        for i in range(30):
            await client.publish("out/seq", str(i).encode(), qos=1)
        await client.publish("out/big", big, qos=1)
        await client.publish("out/q2", b"exactly once", qos=2)
        await client.publish("out/q0", b"fire and forget", qos=0)
        assert client.outbox_size == 0
    got = await in_thread(subscriber.wait_for_messages, 33)
    assert [m.payload for m in got if m.topic == "out/seq"] == [str(i).encode() for i in range(30)]
    assert [m.payload for m in got if m.topic == "out/big"] == [big]
    assert [m.payload for m in got if m.topic == "out/q2"] == [b"exactly once"]
    assert [m.payload for m in got if m.topic == "out/q0"] == [b"fire and forget"]


async def test_broker_sigkill_during_qos1_flood_loses_no_message(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    total = 200
    subscriber = mqtt_peer(client_id="flood-subscriber", clean_session=False)
    await in_thread(subscriber.subscribe, "flood/#", 1)
    acknowledged: set[int] = set()
    in_flight_at_kill: list[int] = []
    async with running(settings_for(mosquitto, client_id="flood-publisher")) as client:
        await client.wait_connected()

        async def publish_one(i: int) -> None:
            await client.publish(f"flood/{i}", str(i).encode(), qos=1)
            acknowledged.add(i)

        async def kill_and_restart() -> None:
            with trio.fail_after(10):
                await wait_until(lambda: len(acknowledged) >= 40)
            in_flight_at_kill.append(client.outbox_size)
            mosquitto.kill()
            await trio.sleep(0.3)
            await in_thread(mosquitto.start)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_and_restart)
                for i in range(total):
                    nursery.start_soon(publish_one, i)
                    if i % 5 == 4:
                        await trio.sleep(0.01)
        assert client.connects >= 2, "the broker restart was not noticed"
        assert in_flight_at_kill[0] > 0, "nothing was in flight: the test proved nothing"
        assert client.outbox_size == 0
    await in_thread(subscriber.wait_connected)
    await in_thread(
        subscriber.wait_for,
        lambda: len({m.payload for m in subscriber.messages()}) >= total,
        15.0,
        "not every message arrived",
    )
    assert {int(m.payload) for m in subscriber.messages()} == set(range(total))


@pytest.mark.parametrize("session_kept", [True, False], ids=["stop-keeps-session", "lost-session"])
async def test_subscription_works_again_after_broker_restart(
    session_kept: bool, mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    settings = settings_for(mosquitto, client_id="resubscriber", reconnect_max_delay=0.5)
    async with running(settings) as client, client.subscribe("cmd/#", qos=1) as messages:
        await client.wait_connected()
        if session_kept:
            await in_thread(mosquitto.stop)  # SIGTERM: the session is saved
        else:
            await in_thread(mosquitto.kill)
            shutil.rmtree(mosquitto.persistence_dir)  # the broker forgets everything
        with trio.fail_after(10):
            await wait_until(lambda: not client.connected)
        await in_thread(mosquitto.start)
        with trio.fail_after(10):
            await wait_until(lambda: client.connects == 2)
        message = await publish_until_received(mqtt_peer(), "cmd/go", messages)
    assert message.payload == b"cmd/go"


async def test_keepalive_notices_silent_broker_and_reconnects(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_fwagent.mqtt")
    subscriber = mqtt_peer()
    await in_thread(subscriber.subscribe, "alive/#", 1)
    proxy = TcpProxy(mosquitto.host, mosquitto.tcp_port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run)
        settings = settings_for(
            mosquitto,
            port=port,
            client_id="keepalive",
            keepalive=1,
            connect_timeout=1.0,
            reconnect_max_delay=0.5,
        )
        async with running(settings) as client:
            await client.wait_connected()
            await client.publish("alive/1", b"before", qos=1)
            proxy.stop_forwarding()  # sockets stay open; nothing gets through
            with trio.fail_after(6):
                await wait_until(lambda: not client.connected)
            assert client.last_error is not None
            assert "PINGRESP" in client.last_error
            assert client.connects == 1
            proxy.start_forwarding()
            with trio.fail_after(10):
                await wait_until(lambda: client.connects == 2)
            with trio.fail_after(10):
                await client.publish("alive/2", b"after", qos=1)
            # A reset (not silence) is noticed at once.
            proxy.drop_connections()
            with trio.fail_after(10):
                await wait_until(lambda: client.connects == 3)
                await client.publish("alive/3", b"after reset", qos=1)
        nursery.cancel_scope.cancel()
    got = await in_thread(subscriber.wait_for_messages, 3)
    assert [m.payload for m in got] == [b"before", b"after", b"after reset"]
    assert "PINGRESP" in caplog.text


async def test_keepalive_does_not_kill_a_slow_link_that_is_still_delivering(
    mosquitto: MosquittoBroker,
) -> None:
    # 120 kB at 20 kB/s takes 6 s, much longer than the 1 s PINGRESP timeout of keepalive=2:
    # the PINGRESP waits behind the message, but bytes keep coming, so the link is alive.
    proxy = TcpProxy(mosquitto.host, mosquitto.tcp_port)
    proxy.downstream_rate = 20_000
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run)
        slow = settings_for(mosquitto, port=port, client_id="slow-link", keepalive=2)
        fast = settings_for(mosquitto, client_id="slow-link-sender")
        async with running(slow) as receiver, running(fast) as sender:
            await receiver.wait_connected()
            async with receiver.subscribe("big/#") as messages:
                await sender.publish("big/x", b"y" * 120_000, qos=1)
                with trio.fail_after(15):
                    message = await messages.receive()
            assert len(message.payload) == 120_000
            assert receiver.connects == 1, receiver.last_error
        nursery.cancel_scope.cancel()


async def test_an_oversized_message_is_dropped_once_and_never_poisons_the_session(
    mosquitto: MosquittoBroker,
) -> None:
    # With a persistent session the broker re-sends an unacknowledged QoS 1 message after
    # every reconnect: dropping the connection over it would lock the client out for good.
    small = settings_for(mosquitto, client_id="small-limit", max_packet_size=1000)
    sender_settings = settings_for(mosquitto, client_id="poison-sender")
    async with running(small) as receiver, running(sender_settings) as sender:
        await receiver.wait_connected()
        async with receiver.subscribe("poison/#") as messages:
            await sender.publish("poison/big", b"x" * 5000, qos=1)
            await sender.publish("poison/small", b"fine", qos=1)
            with trio.fail_after(10):
                message = await messages.receive()
            assert (message.topic, message.payload) == ("poison/small", b"fine")
            with trio.fail_after(10):
                await receiver.publish("poison/ack", b"still publishing", qos=1)
        assert receiver.dropped == 1
        assert receiver.connects == 1, receiver.last_error


async def test_messages_published_before_broker_starts_are_delivered_in_order(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    peer = mqtt_peer(client_id="outbox-peer", clean_session=False)
    await in_thread(peer.subscribe, "early/#", 1)
    await in_thread(mosquitto.stop)
    # Subscribing while disconnected returns at once and takes effect on connect.
    async with (
        running(settings_for(mosquitto, client_id="early-bird")) as client,
        client.subscribe("echo/#", qos=1) as echoes,
    ):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(functools.partial(client.publish, "early/seq", b"%d" % i))
                await trio.testing.wait_all_tasks_blocked()  # publish order = i
            assert not client.connected
            assert client.outbox_size == 20
            await in_thread(mosquitto.start)
        # Leaving the nursery means every publish was acknowledged.
        assert client.outbox_size == 0
        await in_thread(peer.wait_connected)
        echo = await publish_until_received(peer, "echo/1", echoes)
    assert echo.topic == "echo/1"
    got = await in_thread(peer.wait_for_messages, 20)
    assert [m.payload for m in got] == [b"%d" % i for i in range(20)]


async def test_full_subscriber_channel_drops_and_never_stalls_the_client(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    publisher = mqtt_peer()
    async with running(settings_for(mosquitto, client_id="slow-consumer")) as client:
        await client.wait_connected()
        async with client.subscribe("slow/#", qos=1, buffer=2) as messages:
            for i in range(6):
                await in_thread(publisher.publish, "slow/x", b"%d" % i, 1)
            with trio.fail_after(10):
                await wait_until(lambda: client.dropped == 4)
            # The reader is still reading: our own publish gets its PUBACK.
            with trio.fail_after(5):
                await client.publish("slow/own", b"mine", qos=1)
            first = await receive(messages, 2)
    assert [m.payload for m in first] == [b"0", b"1"]
    assert client.dropped >= 4


async def _deliver_and_stop(
    settings: MqttSettings, publisher: PahoPeer, topic: str, *, ack: bool
) -> Message:
    """One client life: subscribe with manual_ack, get ``topic``, maybe acknowledge it, and
    stop the client (as a SIGTERM would) before leaving the subscription."""
    client = MqttClient(settings)
    run_scope = trio.CancelScope()
    stopped = trio.Event()

    async def run() -> None:
        with run_scope:
            await client.run()
        stopped.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        async with client.subscribe("job/#", qos=1, manual_ack=True) as messages:
            if topic:
                message = await publish_until_received(publisher, topic, messages)
            else:
                with trio.fail_after(10):
                    message = await messages.receive()
            if ack:
                message.ack()
                await trio.sleep(0.2)  # let the writer send the PUBACK
            run_scope.cancel()
            await stopped.wait()
        # Leaving the subscription now acknowledges nothing: the connection is gone.
    return message


async def test_manual_ack_message_not_acknowledged_comes_again_after_a_restart(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    publisher = mqtt_peer()
    settings = settings_for(mosquitto, client_id="acker")
    first = await _deliver_and_stop(settings, publisher, "job/1", ack=False)
    assert first.payload == b"job/1"
    # A new process with the same session: the broker re-sends what was never acknowledged.
    again = await _deliver_and_stop(settings, publisher, "", ack=True)
    assert again.payload == b"job/1" and again.dup
    # Acknowledged this time: the next life gets only a fresh message.
    async with running(settings) as client, client.subscribe("job/#", manual_ack=True) as ch:
        fresh = await publish_until_received(publisher, "job/2", ch)
        fresh.ack()
    assert fresh.payload == b"job/2" and not fresh.dup


async def test_manual_ack_message_left_unhandled_in_a_subscription_comes_again(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    """Leaving the block (the agent at shutdown, the client still connected) abandons
    what was not acknowledged: no PUBACK, the broker re-sends it to the next life."""
    publisher = mqtt_peer()
    settings = settings_for(mosquitto, client_id="leaver")
    async with running(settings) as client:
        async with client.subscribe("job/#", qos=1, manual_ack=True) as messages:
            first = await publish_until_received(publisher, "job/1", messages)
        async with client.subscribe("job/#", qos=1, manual_ack=True) as messages:
            # Still connected: the same connection does not deliver it twice, and a
            # later message is acknowledged without waiting for the abandoned one.
            fresh = await publish_until_received(publisher, "job/2", messages)
            assert fresh.payload == b"job/2"
            fresh.ack()
            await trio.sleep(0.2)
    again = await _deliver_and_stop(settings, publisher, "", ack=True)
    assert first.payload == again.payload == b"job/1" and again.dup


async def test_manual_ack_keeps_pubacks_in_order_and_auto_subscribers_unaffected(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    publisher = mqtt_peer()
    async with running(settings_for(mosquitto, client_id="orderly")) as client:
        await client.wait_connected()
        async with (
            client.subscribe("job/#", qos=1, manual_ack=True) as manual,
            client.subscribe("job/#", qos=1) as auto,
        ):
            first = await publish_until_received(publisher, "job/a", manual)
            await receive(auto, 1)
            await in_thread(publisher.publish, "job/b", b"b", 1)
            (second,) = await receive(manual, 1)
            assert [m.payload for m in await receive(auto, 1)] == [b"b"]
            second.ack()  # its PUBACK waits behind the first's (see the session's tests)
            first.ack()
            with trio.fail_after(5):
                await wait_until(lambda: not client._session._to_ack)
            # The client still works both ways.
            await client.publish("job/own", b"mine", qos=1)
            (own,) = await receive(manual, 1)
            own.ack()
    assert own.payload == b"mine"


async def _rechunking_bridge(
    request: trio_websocket.WebSocketRequest, broker_port: int, chunk: int
) -> None:
    """WebSocket in front of mosquitto's TCP port, re-cutting the broker's byte stream
    into ``chunk``-byte messages: packets split across messages and merged within one."""
    ws = await request.accept(subprotocol="mqtt")
    tcp = await trio.open_tcp_stream("127.0.0.1", broker_port)
    async with tcp, trio.open_nursery() as nursery:

        async def upstream() -> None:
            with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                while True:
                    message = await ws.get_message()
                    assert isinstance(message, bytes)
                    await tcp.send_all(message)
            nursery.cancel_scope.cancel()

        async def downstream() -> None:
            with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                while data := await tcp.receive_some(65536):
                    for start in range(0, len(data), chunk):
                        await ws.send_message(bytes(data[start : start + chunk]))
            nursery.cancel_scope.cancel()

        nursery.start_soon(upstream)
        nursery.start_soon(downstream)


async def test_websocket_packets_split_and_merged_across_messages_are_reassembled(
    mosquitto: MosquittoBroker, mqtt_peer: PeerFactory
) -> None:
    publisher = mqtt_peer()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            trio_websocket.serve_websocket,
            functools.partial(_rechunking_bridge, broker_port=mosquitto.tcp_port, chunk=5),
            "127.0.0.1",
            0,
            None,
        )
        settings = settings_for(mosquitto, "websockets", port=server.port, client_id="chunky")
        async with running(settings) as client:
            await client.wait_connected()  # so that subscribe() waits for its SUBACK
            async with client.subscribe("chunk/#", qos=1) as messages:
                payloads = [b"x" * n for n in (0, 1, 3, 127, 128, 300, 20000)]
                for payload in payloads:
                    await in_thread(publisher.publish, "chunk/p", payload, 1)
                got = await receive(messages, len(payloads))
                await client.publish("chunk/own", b"acked through the bridge", qos=1)
        nursery.cancel_scope.cancel()
    assert [m.payload for m in got] == payloads


async def test_tls_client_certificate_is_presented_when_the_broker_requires_one(
    tmp_path: Path,
) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with MosquittoBroker(tmp_path / "mtls", websockets=False, require_certificate=True) as broker:
        with_cert = settings_for(broker, "tls", client_id="mtls-ok")
        async with running(with_cert) as client:
            with trio.fail_after(10):
                await client.wait_connected()
        without_cert = dataclasses.replace(
            with_cert, client_id="mtls-none", cert_file=None, key_file=None
        )
        async with running(without_cert) as client:
            with trio.fail_after(10):
                await wait_until(lambda: client.connection_attempts >= 2)
            assert not client.connected
            assert client.connects == 0
            assert client.last_error is not None


async def test_keepalive_zero_means_no_pings_and_a_stable_connection(
    mosquitto: MosquittoBroker,
) -> None:
    async with running(settings_for(mosquitto, client_id="no-pings", keepalive=0)) as client:
        await client.wait_connected()
        await trio.sleep(0.3)
        assert client.connected
        assert client.connects == 1
        await client.publish("quiet/x", b"still here", qos=1)


async def test_second_concurrent_run_is_a_usage_error(mosquitto: MosquittoBroker) -> None:
    async with running(settings_for(mosquitto, client_id="once")) as client:
        with pytest.raises(MqttUsageError):
            await client.run()


def test_backoff_is_capped_exponential_with_full_jitter_and_resets() -> None:
    backoff = _Backoff(0.1, 2.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling + 1e-9
    samples = []
    for _ in range(200):
        probe = _Backoff(0.1, 2.0)
        for _ in range(10):
            probe.next_delay()
        samples.append(probe.next_delay())
    assert max(samples) <= 2.0
    assert min(samples) < 0.5 < max(samples), "no jitter"
    backoff.reset()
    assert backoff.next_delay() <= 0.1
