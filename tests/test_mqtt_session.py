"""Tests for the sans-IO MQTT client session (trio_fwagent.mqtt.session).

The session is driven with broker bytes; what it must send back is checked byte by
byte against hand-written MQTT 3.1.1 packets, not against the encoder.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_fwagent.mqtt.errors import (
    ConnectionRefused,
    MqttUsageError,
    PacketTooLarge,
    ProtocolError,
)
from trio_fwagent.mqtt.packets import PubAck, Publish, Will, encode
from trio_fwagent.mqtt.session import (
    AckToken,
    ClientSession,
    Connected,
    MessageDropped,
    MessageReceived,
    PongReceived,
    PublishAcknowledged,
    SubscribeAcknowledged,
    UnsubscribeAcknowledged,
)

H = bytes.fromhex
CONNACK_NEW = H("20 02 00 00")  # accepted, no session present
CONNACK_RESUMED = H("20 02 01 00")  # accepted, session present
CONNECT_C1 = H("10 0e 0004 4d515454 04 02 003c 0002 6331")  # "c1", keepalive 60, clean


def qos1_publish(packet_id: int, payload: bytes, *, dup: bool = False) -> bytes:
    """Hand-built QoS 1 PUBLISH to topic "t" (first byte 0x32, or 0x3a with DUP)."""
    first = 0x3A if dup else 0x32
    return bytes((first, 5 + len(payload))) + H("0001 74") + packet_id.to_bytes(2, "big") + payload


def connected_session(**kwargs: object) -> ClientSession:
    """A session that has completed CONNECT/CONNACK (no session present)."""
    options: dict[str, object] = {"client_id": "c1", "keepalive": 60} | kwargs
    session = ClientSession(**options)  # type: ignore[arg-type]
    session.start_connection()
    session.data_to_send()
    assert session.receive_data(CONNACK_NEW) == [Connected(session_present=False)]
    assert session.data_to_send() == b""
    return session


def reconnect(session: ClientSession, connack: bytes = CONNACK_RESUMED) -> list[object]:
    """Simulate a dropped transport and a new connection up to CONNACK."""
    session.connection_lost()
    assert not session.connected
    session.start_connection()
    assert session.data_to_send().startswith(H("10"))
    return list(session.receive_data(connack))


# --------------------------------------------------------------------------- connecting


def test_connect_flow_sends_connect_and_reports_connack() -> None:
    """start_connection queues CONNECT; the CONNACK makes the session connected."""
    session = ClientSession(client_id="c1", keepalive=60, clean_session=True)
    assert not session.connected
    session.start_connection()
    assert session.data_to_send() == CONNECT_C1
    assert session.data_to_send() == b""  # data_to_send clears
    assert not session.connected
    assert session.receive_data(CONNACK_RESUMED[:3]) == []  # partial CONNACK
    assert session.receive_data(CONNACK_RESUMED[3:]) == [Connected(session_present=True)]
    assert session.connected


def test_connect_carries_will_and_credentials() -> None:
    """Will, username and password settings end up in the CONNECT bytes."""
    session = ClientSession(
        client_id="id",
        keepalive=10,
        will=Will(topic="w/t", payload=b"bye", qos=1, retain=True),
        username="u",
        password=b"pw",
    )
    session.start_connection()
    assert session.data_to_send() == (
        H("10 1f 0004 4d515454 04 ec 000a 0002 6964 0003 772f74 0003 627965 0001 75 0002 7077")
    )


def test_invalid_settings_are_rejected_up_front() -> None:
    """A CONNECT that cannot be encoded fails at construction, not at connect time."""
    with pytest.raises(MqttUsageError):
        ClientSession(client_id="c", keepalive=70_000)
    with pytest.raises(MqttUsageError):
        ClientSession(client_id="c", keepalive=1, max_inflight=0)


def test_refused_connack_raises_connection_refused_and_keeps_outbox() -> None:
    """A non-zero CONNACK raises ConnectionRefused with its code; queued messages stay."""
    session = ClientSession(client_id="c1", keepalive=60)
    packet_id = session.publish("t", b"m", qos=1)
    session.start_connection()
    session.data_to_send()
    with pytest.raises(ConnectionRefused) as info:
        session.receive_data(H("20 02 00 05"))
    assert info.value.return_code == 5
    assert not session.connected
    assert session.outbox_size == 1
    assert reconnect(session, CONNACK_NEW) == [Connected(session_present=False)]
    assert session.data_to_send() == qos1_publish(packet_id or 0, b"m")


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(H("30 03 0001 74"), id="publish-before-connack"),
        pytest.param(H("d0 00"), id="pingresp-before-connack"),
        pytest.param(H("40 02 0001"), id="puback-before-connack"),
    ],
)
def test_anything_but_connack_first_is_a_protocol_error(first: bytes) -> None:
    """After CONNECT the broker must answer CONNACK before anything else."""
    session = ClientSession(client_id="c1", keepalive=60)
    session.start_connection()
    with pytest.raises(ProtocolError):
        session.receive_data(first)
    assert not session.connected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CONNACK_NEW, id="second-connack"),
        pytest.param(H("82 06 0001 0001 61 00"), id="subscribe-from-broker"),
        pytest.param(H("c0 00"), id="pingreq-from-broker"),
        pytest.param(H("e0 00"), id="disconnect-from-broker"),
        pytest.param(H("00 00"), id="garbage"),
        pytest.param(H("36 05 0001 74 0001"), id="publish-qos-3"),
    ],
)
def test_protocol_violation_after_connect_raises(data: bytes) -> None:
    """Packets a broker must never send, or malformed bytes, raise ProtocolError."""
    session = connected_session()
    with pytest.raises(ProtocolError):
        session.receive_data(data)
    assert not session.connected


def test_oversized_inbound_packet_raises_packet_too_large() -> None:
    """The session's max_packet_size is enforced from the header."""
    session = connected_session(max_packet_size=64)
    with pytest.raises(PacketTooLarge):
        session.receive_data(H("90 ff01"))


def test_oversized_inbound_publish_is_acknowledged_and_reported_not_delivered() -> None:
    """A too-large QoS 1 message is PUBACKed (else a persistent session re-sends it after
    every reconnect, forever) and reported as dropped; the connection stays up."""
    session = connected_session(max_packet_size=64)
    session.data_to_send()
    big = encode(Publish("fw/big", b"x" * 500, 1, packet_id=9))
    small = encode(Publish("fw/small", b"ok", 1, packet_id=10))
    events = session.receive_data(big + small)
    assert events == [
        MessageDropped("fw/big", 1, len(big)),
        MessageReceived("fw/small", b"ok", 1, False, False),
    ]
    assert session.data_to_send() == encode(PubAck(9)) + encode(PubAck(10))
    assert session.connected


def test_receive_without_connection_is_a_usage_error() -> None:
    """Feeding bytes before start_connection() is a local mistake."""
    session = ClientSession(client_id="c1", keepalive=60)
    with pytest.raises(MqttUsageError):
        session.receive_data(CONNACK_NEW)


def test_connection_lost_forgets_partial_input() -> None:
    """Half a packet from a dead connection does not corrupt the next one."""
    session = connected_session()
    session.receive_data(H("30 07 0003"))
    assert reconnect(session) == [Connected(session_present=True)]


# --------------------------------------------------------------------------- inbound


def test_inbound_qos0_is_delivered_without_ack() -> None:
    """QoS 0 messages produce an event and no bytes."""
    session = connected_session()
    events = session.receive_data(H("31 07 0003 612f62 6869"))
    assert events == [MessageReceived("a/b", b"hi", qos=0, retain=True, dup=False)]
    assert session.data_to_send() == b""


def test_inbound_qos1_is_acked_with_puback() -> None:
    """QoS 1 messages are delivered and answered with PUBACK carrying the same id."""
    session = connected_session()
    events = session.receive_data(H("32 09 0003 612f62 000a 6869"))
    assert events == [MessageReceived("a/b", b"hi", qos=1, retain=False, dup=False)]
    assert session.data_to_send() == H("40 02 000a")


def test_manual_ack_holds_pubacks_until_acknowledged_and_keeps_their_order() -> None:
    session = connected_session(manual_ack=True)
    events = session.receive_data(qos1_publish(1, b"a") + qos1_publish(2, b"b"))
    tokens = [e.ack_token for e in events if isinstance(e, MessageReceived)]
    assert tokens == [AckToken(1, 1), AckToken(1, 2)]
    assert session.data_to_send() == b""  # nothing acknowledged before the caller says so
    assert session.acknowledge(AckToken(1, 2))
    assert session.data_to_send() == b""  # message 1 came first and is not done yet
    assert session.acknowledge(AckToken(1, 1))
    assert session.data_to_send() == H("40 02 0001") + H("40 02 0002")
    assert session.acknowledge(AckToken(1, 1))  # twice: harmless, nothing sent
    assert session.data_to_send() == b""


def test_manual_ack_abandoned_message_gets_no_puback_and_does_not_hold_later_ones() -> None:
    session = connected_session(manual_ack=True)
    session.receive_data(qos1_publish(1, b"a") + qos1_publish(2, b"b"))
    assert session.acknowledge(AckToken(1, 2))
    assert session.data_to_send() == b""
    assert session.abandon(AckToken(1, 1))  # never handled: the broker re-sends it later
    assert session.data_to_send() == H("40 02 0002")


def test_manual_ack_oversized_message_is_acknowledged_in_its_turn() -> None:
    session = connected_session(manual_ack=True, max_packet_size=64)
    session.receive_data(qos1_publish(1, b"a"))
    events = session.receive_data(qos1_publish(2, b"x" * 100))
    assert [type(e) for e in events] == [MessageDropped]
    assert session.data_to_send() == b""  # not ahead of message 1's PUBACK
    assert session.acknowledge(AckToken(1, 1))
    assert session.data_to_send() == H("40 02 0001") + H("40 02 0002")


def test_manual_ack_of_a_lost_connection_sends_nothing_and_the_broker_resends() -> None:
    session = connected_session(manual_ack=True)
    (event,) = session.receive_data(qos1_publish(7, b"a"))
    assert isinstance(event, MessageReceived) and event.ack_token is not None
    reconnect(session)
    # The old token would acknowledge on a connection that never carried the message.
    assert not session.acknowledge(event.ack_token)
    assert session.data_to_send() == b""
    (again,) = session.receive_data(qos1_publish(7, b"a", dup=True))
    assert isinstance(again, MessageReceived) and again.dup
    assert again.ack_token == AckToken(2, 7)
    assert session.acknowledge(again.ack_token)
    assert session.data_to_send() == H("40 02 0007")


def test_inbound_qos2_is_delivered_once_and_completed() -> None:
    """QoS 2: PUBREC on PUBLISH, a re-sent PUBLISH is not delivered again, PUBCOMP on PUBREL."""
    session = connected_session()
    message = MessageReceived("t", b"x", qos=2, retain=False, dup=False)
    assert session.receive_data(H("34 06 0001 74 000b 78")) == [message]
    assert session.data_to_send() == H("50 02 000b")
    # The broker re-sends before PUBREL (DUP=1): answered, not delivered.
    assert session.receive_data(H("3c 06 0001 74 000b 78")) == []
    assert session.data_to_send() == H("50 02 000b")
    assert session.receive_data(H("62 02 000b")) == []
    assert session.data_to_send() == H("70 02 000b")
    # After PUBREL the id is free: a new message with it is a new message.
    assert session.receive_data(H("34 06 0001 74 000b 79")) == [
        MessageReceived("t", b"y", qos=2, retain=False, dup=False)
    ]
    assert session.data_to_send() == H("50 02 000b")


def test_unknown_pubrel_is_still_completed() -> None:
    """A PUBREL for an id we already completed is answered with PUBCOMP."""
    session = connected_session()
    assert session.receive_data(H("62 02 0009")) == []
    assert session.data_to_send() == H("70 02 0009")


def test_inbound_qos2_dedupe_survives_a_resumed_session() -> None:
    """With session_present, a QoS 2 PUBLISH re-sent after reconnect is not delivered again."""
    session = connected_session()
    assert len(session.receive_data(H("34 06 0001 74 000b 78"))) == 1
    assert reconnect(session) == [Connected(session_present=True)]
    assert session.receive_data(H("3c 06 0001 74 000b 78")) == []
    assert session.data_to_send() == H("50 02 000b")


def test_inbound_qos2_state_is_dropped_when_broker_lost_the_session() -> None:
    """Without session_present, a PUBLISH reusing an id is a new message."""
    session = connected_session()
    assert len(session.receive_data(H("34 06 0001 74 000b 78"))) == 1
    assert reconnect(session, CONNACK_NEW) == [Connected(session_present=False)]
    assert len(session.receive_data(H("34 06 0001 74 000b 78"))) == 1


def test_several_packets_in_one_chunk() -> None:
    """One receive_data call handles every complete packet, in order."""
    session = connected_session()
    events = session.receive_data(H("30 04 0001 74 61") + H("32 06 0001 74 0001 62") + H("d0 00"))
    assert events == [
        MessageReceived("t", b"a", 0, False, False),
        MessageReceived("t", b"b", 1, False, False),
        PongReceived(),
    ]
    assert session.data_to_send() == H("40 02 0001")


def test_messages_before_a_protocol_error_are_not_lost() -> None:
    """Events decoded before garbage in the same chunk are returned after reconnecting."""
    session = connected_session()
    packet_id = session.publish("t", b"m", qos=1)
    session.data_to_send()
    batch = H("34 06 0001 74 000b 78") + H("40 02") + (packet_id or 0).to_bytes(2, "big")
    with pytest.raises(ProtocolError):
        session.receive_data(batch + H("00 00"))
    assert session.outbox_size == 0
    events = reconnect(session)
    assert events == [
        MessageReceived("t", b"x", qos=2, retain=False, dup=False),
        PublishAcknowledged(packet_id or 0),
        Connected(session_present=True),
    ]
    # The broker re-sends the unacknowledged QoS 2 message: answered, not re-delivered.
    assert session.receive_data(H("3c 06 0001 74 000b 78")) == []


# --------------------------------------------------------------------------- outbound


def test_qos0_publish_bytes_and_not_connected_error() -> None:
    """QoS 0 is sent at once when connected and refused with MqttUsageError otherwise."""
    session = ClientSession(client_id="c1", keepalive=60)
    with pytest.raises(MqttUsageError, match="not connected"):
        session.publish("t", b"m")
    session = connected_session()
    assert session.publish("a/b", b"hi", retain=True) is None
    assert session.data_to_send() == H("31 07 0003 612f62 6869")


def test_invalid_publish_is_a_usage_error() -> None:
    """Bad topic or QoS is refused before anything is queued."""
    session = connected_session()
    for topic, qos in [("a/+", 1), ("", 0), ("t", 3)]:
        with pytest.raises(MqttUsageError):
            session.publish(topic, b"", qos=qos)
    assert session.outbox_size == 0
    assert session.data_to_send() == b""


def test_qos1_publish_is_kept_until_puback() -> None:
    """A QoS 1 message stays in the outbox until PUBACK; a duplicate PUBACK is harmless."""
    session = connected_session()
    assert session.publish("t", b"m", qos=1) == 1
    assert session.data_to_send() == H("32 06 0001 74 0001 6d")
    assert session.outbox_size == 1
    assert session.receive_data(H("40 02 0001")) == [PublishAcknowledged(1)]
    assert session.outbox_size == 0
    assert session.receive_data(H("40 02 0001")) == []  # late duplicate
    assert session.receive_data(H("40 02 0063")) == []  # never used
    assert session.data_to_send() == b""


def test_qos2_publish_flow_and_pubrel_resend_after_reconnect() -> None:
    """QoS 2 out: PUBREC -> PUBREL; after a reconnect PUBREL (not PUBLISH) is re-sent."""
    session = connected_session()
    assert session.publish("t", b"m", qos=2) == 1
    assert session.data_to_send() == H("34 06 0001 74 0001 6d")
    assert session.receive_data(H("50 02 0001")) == []
    assert session.data_to_send() == H("62 02 0001")
    assert reconnect(session) == [Connected(session_present=True)]
    assert session.data_to_send() == H("62 02 0001")
    assert session.receive_data(H("70 02 0001")) == [PublishAcknowledged(1)]
    assert session.outbox_size == 0


def test_qos2_publish_unanswered_is_resent_with_dup() -> None:
    """A QoS 2 PUBLISH without PUBREC is re-sent with DUP=1 after a reconnect."""
    session = connected_session()
    session.publish("t", b"m", qos=2)
    session.data_to_send()
    reconnect(session)
    assert session.data_to_send() == H("3c 06 0001 74 0001 6d")


def test_outbox_is_resent_in_order_with_dup_after_reconnect() -> None:
    """Unacked QoS 1 messages are re-sent in publish order, DUP=1 only if sent before."""
    session = connected_session()
    ids = [session.publish("t", bytes([0x61 + i]), qos=1) for i in range(3)]
    assert ids == [1, 2, 3]
    assert session.data_to_send() == b"".join(qos1_publish(i, bytes([0x60 + i])) for i in (1, 2, 3))
    assert session.receive_data(H("40 02 0002")) == [PublishAcknowledged(2)]
    session.connection_lost()
    assert session.publish("t", b"d", qos=1) == 4  # held while disconnected
    assert session.data_to_send() == b""
    assert session.outbox_size == 3
    session.start_connection()
    assert session.data_to_send().startswith(H("10"))
    assert session.receive_data(CONNACK_RESUMED) == [Connected(session_present=True)]
    assert session.data_to_send() == (
        qos1_publish(1, b"a", dup=True) + qos1_publish(3, b"c", dup=True) + qos1_publish(4, b"d")
    )


def test_outbox_is_resent_even_when_broker_lost_the_session() -> None:
    """session_present=False must not lose our unacknowledged messages."""
    session = connected_session()
    session.publish("t", b"a", qos=1)
    session.data_to_send()
    assert reconnect(session, CONNACK_NEW) == [Connected(session_present=False)]
    assert session.data_to_send() == qos1_publish(1, b"a", dup=True)


def test_publish_before_first_connect_is_sent_after_connack() -> None:
    """QoS 1 published before any connection waits for CONNACK and goes without DUP."""
    session = ClientSession(client_id="c1", keepalive=60, clean_session=True)
    assert session.publish("t", b"a", qos=1) == 1
    session.start_connection()
    assert session.data_to_send() == CONNECT_C1  # nothing before CONNACK
    session.receive_data(CONNACK_NEW)
    assert session.data_to_send() == qos1_publish(1, b"a")


def test_max_inflight_holds_messages_until_acks_arrive() -> None:
    """At most max_inflight QoS 1 messages are unacknowledged on the wire at once."""
    session = connected_session(max_inflight=2)
    for i in range(5):
        session.publish("t", bytes([0x61 + i]), qos=1)
    assert session.data_to_send() == qos1_publish(1, b"a") + qos1_publish(2, b"b")
    assert session.receive_data(H("40 02 0002")) == [PublishAcknowledged(2)]
    assert session.data_to_send() == qos1_publish(3, b"c")
    assert session.receive_data(H("40 02 0002")) == []  # duplicate frees nothing
    assert session.data_to_send() == b""
    # After a reconnect the window applies again, in publish order.
    reconnect(session)
    assert session.data_to_send() == qos1_publish(1, b"a", dup=True) + qos1_publish(
        3, b"c", dup=True
    )
    assert session.receive_data(H("40 02 0001") + H("40 02 0003")) == [
        PublishAcknowledged(1),
        PublishAcknowledged(3),
    ]
    assert session.data_to_send() == qos1_publish(4, b"d") + qos1_publish(5, b"e")
    assert session.outbox_size == 2


def test_packet_ids_wrap_and_skip_ids_in_flight() -> None:
    """Ids run 1..65535, wrap to 1 and skip any id still waiting for its ack."""
    session = ClientSession(client_id="c1", keepalive=60)
    assert session.publish("t", b"", qos=1) == 1  # stays unacknowledged
    session.start_connection()
    session.receive_data(CONNACK_NEW)
    assert session.subscribe([("a", 1)]) == 2  # SUBACK never arrives
    assert session.unsubscribe(["b"]) == 3  # UNSUBACK never arrives
    session.data_to_send()
    for start in range(4, 65536, 50):  # acks in batches: within the in-flight window
        batch = range(start, min(start + 50, 65536))
        assert [session.publish("t", b"", qos=1) for _ in batch] == list(batch)
        acks = b"".join(bytes((0x40, 2)) + i.to_bytes(2, "big") for i in batch)
        assert len(session.receive_data(acks)) == len(batch)
        session.data_to_send()
    assert session.publish("t", b"", qos=1) == 4  # 1, 2 and 3 are still in flight


def test_packet_id_exhaustion_is_a_usage_error() -> None:
    """With all 65535 ids unacknowledged, another QoS 1 publish is refused."""
    session = ClientSession(client_id="c1", keepalive=60)
    for _ in range(65535):
        session.publish("t", b"", qos=1)
    with pytest.raises(MqttUsageError):
        session.publish("t", b"", qos=1)


# --------------------------------------------------------------------------- other commands


def test_subscribe_and_unsubscribe_round_trip() -> None:
    """SUBSCRIBE/UNSUBSCRIBE bytes are exact and their acks become events."""
    session = connected_session()
    assert session.subscribe([("a/+", 1), ("#", 0)]) == 1
    assert session.data_to_send() == H("82 0c 0001 0003 612f2b 01 0001 23 00")
    assert session.receive_data(H("90 04 0001 01 80")) == [SubscribeAcknowledged(1, (1, 0x80))]
    assert session.unsubscribe(["a/+"]) == 2
    assert session.data_to_send() == H("a2 07 0002 0003 612f2b")
    assert session.receive_data(H("b0 02 0002")) == [UnsubscribeAcknowledged(2)]
    assert session.receive_data(H("b0 02 0002")) == []  # duplicate ignored


def test_suback_with_wrong_number_of_codes_is_a_protocol_error() -> None:
    """A SUBACK must carry one return code per requested filter."""
    session = connected_session()
    session.subscribe([("a", 1), ("b", 1)])
    with pytest.raises(ProtocolError):
        session.receive_data(H("90 03 0001 01"))


def test_commands_that_need_a_connection() -> None:
    """subscribe, unsubscribe and ping are refused while not connected."""
    session = ClientSession(client_id="c1", keepalive=60)
    session.start_connection()
    with pytest.raises(MqttUsageError):
        session.subscribe([("a", 1)])
    with pytest.raises(MqttUsageError):
        session.unsubscribe(["a"])
    with pytest.raises(MqttUsageError):
        session.ping()


def test_invalid_subscribe_is_a_usage_error() -> None:
    """A bad filter or QoS is refused and nothing is sent."""
    session = connected_session()
    with pytest.raises(MqttUsageError):
        session.subscribe([("a/#/b", 1)])
    with pytest.raises(MqttUsageError):
        session.subscribe([("a", 3)])
    with pytest.raises(MqttUsageError):
        session.subscribe([])
    assert session.data_to_send() == b""


def test_ping_and_pong() -> None:
    """ping() queues PINGREQ; PINGRESP becomes PongReceived."""
    session = connected_session()
    session.ping()
    assert session.data_to_send() == H("c0 00")
    assert session.receive_data(H("d0 00")) == [PongReceived()]


def test_disconnect_sends_disconnect_and_keeps_outbox() -> None:
    """disconnect() queues DISCONNECT, ends the connected state and keeps unacked messages."""
    session = connected_session()
    session.publish("t", b"a", qos=1)
    session.data_to_send()
    session.disconnect()
    assert session.data_to_send() == H("e0 00")
    assert not session.connected
    assert session.receive_data(H("40 02 0001")) == []  # ignored while closing
    assert session.outbox_size == 1
    session.disconnect()  # nothing more to do
    assert session.data_to_send() == b""


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_session_events_do_not_depend_on_chunking(data: st.DataObject) -> None:
    """Splitting the broker's bytes anywhere yields the same events and the same answers."""
    stream = (
        CONNACK_NEW
        + H("34 06 0001 74 000b 78")
        + H("3c 06 0001 74 000b 78")
        + H("62 02 000b")
        + H("32 06 0001 74 0001 62")
        + H("d0 00")
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    session = ClientSession(client_id="c1", keepalive=60)
    session.start_connection()
    session.data_to_send()
    events: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += session.receive_data(stream[start:end])
    assert events == [
        Connected(False),
        MessageReceived("t", b"x", 2, False, False),
        MessageReceived("t", b"b", 1, False, False),
        PongReceived(),
    ]
    assert session.data_to_send() == H("50 02 000b 50 02 000b 70 02 000b 40 02 0001")
