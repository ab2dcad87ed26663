"""Tests for the sans-IO MQTT 3.1.1 codec (trio_fwagent.mqtt.packets).

Expected bytes are written by hand from the MQTT 3.1.1 spec, never produced by the
encoder under test; hypothesis covers round trips, truncation and garbage input.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_fwagent.mqtt.errors import MqttUsageError, NeedMoreData, PacketTooLarge, ProtocolError
from trio_fwagent.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    OversizedPublish,
    Packet,
    PacketDecoder,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    check_topic_filter,
    check_topic_name,
    decode,
    encode,
    topic_matches,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (packet, bytes written by hand from the spec)
VECTORS: list[tuple[Packet, bytes]] = [
    (
        Connect(client_id="c1", keepalive=60, clean_session=True),
        bytes.fromhex("10 0e 0004 4d515454 04 02 003c 0002 6331"),
    ),
    (
        Connect(
            client_id="id",
            keepalive=10,
            clean_session=False,
            will=Will(topic="w/t", payload=b"bye", qos=1, retain=True),
            username="u",
            password=b"pw",
        ),
        # flags: user 0x80 | password 0x40 | will retain 0x20 | will qos 1 0x08 | will 0x04
        bytes.fromhex("10 1f 0004 4d515454 04 ec 000a 0002 6964 0003 772f74 0003 627965")
        + bytes.fromhex("0001 75 0002 7077"),
    ),
    (
        Connect(
            client_id="x",
            keepalive=0,
            clean_session=True,
            will=Will(topic="lw", payload=b"", qos=2),
        ),
        # flags: will qos 2 0x10 | will 0x04 | clean 0x02
        bytes.fromhex("10 13 0004 4d515454 04 16 0000 0001 78 0002 6c77 0000"),
    ),
    (ConnAck(session_present=True, return_code=0), bytes.fromhex("20 02 01 00")),
    (ConnAck(session_present=False, return_code=5), bytes.fromhex("20 02 00 05")),
    (Publish(topic="a/b", payload=b"hi"), bytes.fromhex("30 07 0003 612f62 6869")),
    (
        Publish(topic="a/b", payload=b"hi", qos=1, retain=True, packet_id=10),
        bytes.fromhex("33 09 0003 612f62 000a 6869"),
    ),
    (
        Publish(topic="t", payload=b"", qos=2, dup=True, packet_id=0x1234),
        bytes.fromhex("3c 05 0001 74 1234"),
    ),
    (Publish(topic="\u00fc", payload=b"\x00"), bytes.fromhex("30 05 0002 c3bc 00")),
    (
        Publish(topic="t", payload=b"\xaa" * 200),
        # remaining length 203 = 0x4b + 1 * 128 -> cb 01
        bytes.fromhex("30 cb01 0001 74") + b"\xaa" * 200,
    ),
    (PubAck(7), bytes.fromhex("40 02 0007")),
    (PubRec(0x0102), bytes.fromhex("50 02 0102")),
    (PubRel(5), bytes.fromhex("62 02 0005")),
    (PubComp(65535), bytes.fromhex("70 02 ffff")),
    (
        Subscribe(packet_id=1, topics=(("a/+", 1), ("#", 0))),
        bytes.fromhex("82 0c 0001 0003 612f2b 01 0001 23 00"),
    ),
    (Subscribe(packet_id=2, topics=(("s", 2),)), bytes.fromhex("82 06 0002 0001 73 02")),
    (SubAck(packet_id=1, return_codes=(1, 0x80)), bytes.fromhex("90 04 0001 01 80")),
    (Unsubscribe(packet_id=2, topics=("a/+",)), bytes.fromhex("a2 07 0002 0003 612f2b")),
    (
        Unsubscribe(packet_id=3, topics=("x", "y/#")),
        bytes.fromhex("a2 0a 0003 0001 78 0003 792f23"),
    ),
    (UnsubAck(2), bytes.fromhex("b0 02 0002")),
    (PingReq(), bytes.fromhex("c0 00")),
    (PingResp(), bytes.fromhex("d0 00")),
    (Disconnect(), bytes.fromhex("e0 00")),
]
VECTOR_IDS = [f"{i}-{type(p).__name__}" for i, (p, _) in enumerate(VECTORS)]


# --------------------------------------------------------------------------- vectors


def test_vectors_cover_every_packet_type() -> None:
    """The byte-exact table exercises all 14 MQTT 3.1.1 packet types."""
    assert len({type(p) for p, _ in VECTORS}) == 14


@pytest.mark.parametrize(("packet", "wire"), VECTORS, ids=VECTOR_IDS)
def test_encode_matches_spec_bytes(packet: Packet, wire: bytes) -> None:
    """encode() produces exactly the bytes the spec prescribes."""
    assert encode(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), VECTORS, ids=VECTOR_IDS)
def test_decode_spec_bytes(packet: Packet, wire: bytes) -> None:
    """decode() reads the spec bytes back and reports exactly the bytes it used."""
    assert decode(wire + b"\xe0\x00") == (packet, len(wire))
    assert decode(memoryview(wire)) == (packet, len(wire))
    assert decode(bytearray(wire)) == (packet, len(wire))


@pytest.mark.parametrize(("packet", "wire"), VECTORS, ids=VECTOR_IDS)
def test_every_truncated_prefix_needs_more_data(packet: Packet, wire: bytes) -> None:
    """A partial packet is never mistaken for a packet or an error."""
    for cut in range(len(wire)):
        with pytest.raises(NeedMoreData):
            decode(wire[:cut])
        decoder = PacketDecoder()
        decoder.feed(wire[:cut])
        assert decoder.next_packet() is None
        assert decoder.buffered == cut


@pytest.mark.parametrize(
    ("remaining", "header"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
    ],
)
def test_remaining_length_boundaries(remaining: int, header: str) -> None:
    """The variable-length encoding switches width exactly at the spec's boundaries."""
    # A QoS 0 PUBLISH to topic "t" has 3 bytes of variable header before the payload.
    payload = b"p" * (remaining - 3) if remaining >= 3 else None
    if payload is None:
        assert encode(PingReq())[1:] == bytes.fromhex(header)
        return
    wire = encode(Publish(topic="t", payload=payload))
    assert wire[: 1 + len(header) // 2] == bytes.fromhex("30" + header)
    packet, used = decode(wire, max_packet_size=len(wire))
    assert used == len(wire)
    assert isinstance(packet, Publish)
    assert packet.payload == payload


def test_largest_remaining_length_header_is_accepted() -> None:
    """ff ff ff 7f (268,435,455) is legal: the decoder waits for the body."""
    with pytest.raises(NeedMoreData):
        decode(bytes.fromhex("30 ffffff7f"), max_packet_size=1 << 30)


@pytest.mark.parametrize("wire", ["30 ffffffff", "30 ffffffff01", "30 80808080 00"])
def test_remaining_length_over_four_bytes_is_rejected(wire: str) -> None:
    """A fifth length byte is a protocol error, detected before it even arrives."""
    data = bytes.fromhex(wire)
    with pytest.raises(ProtocolError):
        decode(data, max_packet_size=1 << 30)
    decoder = PacketDecoder(max_packet_size=1 << 30)
    decoder.feed(data)
    with pytest.raises(ProtocolError):
        decoder.next_packet()


def test_packet_too_large_is_rejected_from_its_header() -> None:
    """An oversized packet is refused after 4 header bytes, before any body is buffered."""
    header = bytes.fromhex("30 ffff7f")  # announces 2 MiB of body
    with pytest.raises(PacketTooLarge):
        decode(header, max_packet_size=1024)
    decoder = PacketDecoder(max_packet_size=1024)
    decoder.feed(bytes.fromhex("90 ffff7f"))  # a SUBACK announcing 2 MiB
    with pytest.raises(PacketTooLarge):
        decoder.next_packet()
    assert issubclass(PacketTooLarge, ProtocolError)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_decoder_skips_an_oversized_publish_and_goes_on(qos: int) -> None:
    """An oversized PUBLISH is reported with its topic and id, its payload discarded as it
    arrives (never buffered whole), and the next packet decodes normally."""
    big = encode(Publish("fw/big", b"x" * 5000, qos, packet_id=7 if qos else None))
    wire = big + encode(PingResp())
    decoder = PacketDecoder(max_packet_size=1000)
    got: list[object] = []
    most_buffered = 0
    for start in range(0, len(wire), 300):
        decoder.feed(wire[start : start + 300])
        while (packet := decoder.next_packet()) is not None:
            got.append(packet)
        most_buffered = max(most_buffered, decoder.buffered)
    assert got == [OversizedPublish("fw/big", qos, 7 if qos else None, len(big)), PingResp()]
    assert most_buffered < 600


def test_max_packet_size_counts_the_whole_packet() -> None:
    """The limit includes the fixed header: a packet of exactly the limit passes."""
    wire = encode(Publish(topic="t", payload=b"x" * 10))  # 2 + 3 + 10 = 15 bytes
    assert decode(wire, max_packet_size=15) == (Publish(topic="t", payload=b"x" * 10), 15)
    with pytest.raises(PacketTooLarge):
        decode(wire, max_packet_size=14)


# --------------------------------------------------------------------------- peer errors


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param("00 00", id="reserved-type-0"),
        pytest.param("f0 00", id="reserved-type-15"),
        pytest.param("60 02 0001", id="pubrel-flags-0"),
        pytest.param("41 02 0001", id="puback-reserved-flag"),
        pytest.param("80 06 0001 0001 61 00", id="subscribe-flags-0"),
        pytest.param("a0 05 0001 0001 61", id="unsubscribe-flags-0"),
        pytest.param("c1 00", id="pingreq-reserved-flag"),
        pytest.param("36 05 0001 74 0001", id="publish-qos-3"),
        pytest.param("38 03 0001 74", id="publish-qos0-dup"),
        pytest.param("32 05 0001 74 0000", id="publish-packet-id-0"),
        pytest.param("40 02 0000", id="puback-packet-id-0"),
        pytest.param("82 06 0000 0001 61 00", id="subscribe-packet-id-0"),
        pytest.param("30 04 0002 c328", id="topic-invalid-utf8"),
        pytest.param("30 05 0003 eda080", id="topic-utf16-surrogate"),
        pytest.param("30 04 0002 6100", id="topic-u0000"),
        pytest.param("30 05 0003 612f2b", id="publish-topic-plus"),
        pytest.param("30 03 0001 23", id="publish-topic-hash"),
        pytest.param("30 02 0000", id="publish-empty-topic"),
        pytest.param("30 02 0005", id="string-runs-past-end"),
        pytest.param("30 01 00", id="string-length-cut"),
        pytest.param("82 07 0001 0002 612b 00", id="filter-plus-in-level"),
        pytest.param("82 08 0001 0003 232f61 00", id="filter-hash-not-last"),
        pytest.param("82 07 0001 0002 6123 00", id="filter-hash-in-level"),
        pytest.param("82 06 0001 0001 61 03", id="subscribe-qos-3"),
        pytest.param("82 06 0001 0001 61 41", id="subscribe-reserved-qos-bits"),
        pytest.param("82 05 0001 0001 61", id="subscribe-missing-qos"),
        pytest.param("82 02 0001", id="subscribe-no-filters"),
        pytest.param("a2 02 0001", id="unsubscribe-no-filters"),
        pytest.param("90 03 0001 03", id="suback-bad-code"),
        pytest.param("90 02 0001", id="suback-no-codes"),
        pytest.param("20 02 02 00", id="connack-reserved-flags"),
        pytest.param("20 02 00 06", id="connack-unknown-code"),
        pytest.param("20 02 01 05", id="connack-session-present-on-refusal"),
        pytest.param("20 03 00 00 00", id="connack-too-long"),
        pytest.param("d0 01 00", id="pingresp-with-body"),
        pytest.param("e0 01 00", id="disconnect-with-body"),
        pytest.param("40 03 0001 00", id="puback-too-long"),
        pytest.param("10 0e 0006 4d5149736470 03 02 003c 0000", id="connect-mqisdp-v3"),
        pytest.param("10 0c 0004 4d515454 05 02 003c 0000", id="connect-level-5"),
        pytest.param("10 0c 0004 4d515458 04 02 003c 0000", id="connect-wrong-name"),
        pytest.param("10 0c 0004 4d515454 04 03 003c 0000", id="connect-reserved-flag"),
        pytest.param("10 0c 0004 4d515454 04 0a 003c 0000", id="connect-will-qos-no-will"),
        pytest.param("10 0c 0004 4d515454 04 22 003c 0000", id="connect-will-retain-no-will"),
        pytest.param("10 11 0004 4d515454 04 1c 003c 0000 0001 61 0000", id="connect-will-qos-3"),
        pytest.param("10 0e 0004 4d515454 04 42 003c 0000 0000", id="connect-password-no-user"),
        pytest.param("10 0d 0004 4d515454 04 02 003c 0000 00", id="connect-trailing-byte"),
        pytest.param("10 0d 0004 4d515454 04 02 003c 0001 00", id="connect-client-id-u0000"),
        pytest.param("10 0c 0004 4d515454 04 82 003c 0000", id="connect-username-missing"),
        pytest.param("10 11 0004 4d515454 04 06 003c 0000 0001 2b 0000", id="connect-will-wild"),
    ],
)
def test_peer_violations_raise_protocol_error(wire: str) -> None:
    """Bytes that break MQTT 3.1.1 raise the project's ProtocolError, nothing else."""
    data = bytes.fromhex(wire)
    with pytest.raises(ProtocolError):
        decode(data)


# --------------------------------------------------------------------------- local errors


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(Publish(topic="a/+", payload=b""), id="topic-wildcard"),
        pytest.param(Publish(topic="a/#", payload=b""), id="topic-hash"),
        pytest.param(Publish(topic="", payload=b""), id="topic-empty"),
        pytest.param(Publish(topic="a\x00", payload=b""), id="topic-u0000"),
        pytest.param(Publish(topic="\ud800", payload=b""), id="topic-lone-surrogate"),
        pytest.param(Publish(topic="t" * 70_000, payload=b""), id="topic-too-long"),
        pytest.param(Publish(topic="t", payload=b"", qos=3, packet_id=1), id="qos-3"),
        pytest.param(Publish(topic="t", payload=b"", qos=-1), id="qos-negative"),
        pytest.param(Publish(topic="t", payload=b"", qos=1), id="qos1-without-id"),
        pytest.param(Publish(topic="t", payload=b"", qos=1, packet_id=0), id="packet-id-0"),
        pytest.param(Publish(topic="t", payload=b"", qos=1, packet_id=65536), id="id-65536"),
        pytest.param(Publish(topic="t", payload=b"", packet_id=1), id="qos0-with-id"),
        pytest.param(Publish(topic="t", payload=b"", dup=True), id="qos0-dup"),
        pytest.param(PubAck(0), id="puback-0"),
        pytest.param(PubRel(70_000), id="pubrel-too-big"),
        pytest.param(Subscribe(packet_id=1, topics=()), id="subscribe-empty"),
        pytest.param(Subscribe(packet_id=1, topics=(("a/b#", 0),)), id="filter-bad-hash"),
        pytest.param(Subscribe(packet_id=1, topics=(("a+", 0),)), id="filter-bad-plus"),
        pytest.param(Subscribe(packet_id=1, topics=(("", 0),)), id="filter-empty"),
        pytest.param(Subscribe(packet_id=1, topics=(("a", 3),)), id="subscribe-qos-3"),
        pytest.param(Unsubscribe(packet_id=1, topics=()), id="unsubscribe-empty"),
        pytest.param(Unsubscribe(packet_id=1, topics=("#/a",)), id="unsubscribe-bad"),
        pytest.param(SubAck(packet_id=1, return_codes=(3,)), id="suback-bad-code"),
        pytest.param(SubAck(packet_id=1, return_codes=()), id="suback-empty"),
        pytest.param(ConnAck(session_present=False, return_code=6), id="connack-code-6"),
        pytest.param(ConnAck(session_present=True, return_code=1), id="connack-present"),
        pytest.param(Connect(client_id="c", keepalive=70_000, clean_session=True), id="ka"),
        pytest.param(Connect(client_id="", keepalive=1, clean_session=False), id="empty-id"),
        pytest.param(Connect(client_id="c\x00", keepalive=1, clean_session=True), id="id-nul"),
        pytest.param(
            Connect(client_id="c", keepalive=1, clean_session=True, password=b"p"),
            id="password-without-username",
        ),
        pytest.param(
            Connect(client_id="c", keepalive=1, clean_session=True, will=Will("a/+", b"")),
            id="will-topic-wildcard",
        ),
        pytest.param(
            Connect(client_id="c", keepalive=1, clean_session=True, will=Will("w", b"", qos=3)),
            id="will-qos-3",
        ),
        pytest.param(
            Connect(client_id="c", keepalive=1, clean_session=True, will=Will("w", b"x" * 70_000)),
            id="will-payload-too-long",
        ),
    ],
)
def test_encoding_a_bad_packet_is_a_usage_error(packet: Packet) -> None:
    """A locally built invalid packet raises MqttUsageError (also a ValueError)."""
    with pytest.raises(MqttUsageError):
        encode(packet)
    assert issubclass(MqttUsageError, ValueError)


def test_check_topic_helpers() -> None:
    """The public topic checks accept valid names/filters and reject invalid ones."""
    check_topic_name("a/b/c")
    check_topic_name("/")
    check_topic_filter("a/+/c/#")
    check_topic_filter("+")
    check_topic_filter("#")
    with pytest.raises(MqttUsageError):
        check_topic_name("a/+")
    with pytest.raises(MqttUsageError):
        check_topic_filter("a/#/b")
    with pytest.raises(MqttUsageError):
        check_topic_filter("sport+")


# --------------------------------------------------------------------------- topic matching


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/tennis/player1/#", "sport/tennis/player2", False),
        ("sport/#", "sport", True),
        ("#", "a/b/c", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("#", "$SYS/monitor/Clients", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("tedge/+/commands/req/firmware_update", "tedge/c1/commands/req/firmware_update", True),
    ],
)
def test_topic_matches_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    """Wildcard matching follows spec section 4.7, including the $-topic rule."""
    assert topic_matches(topic_filter, topic) is expected


# --------------------------------------------------------------------------- strategies

_level_chars = st.characters(exclude_characters="/+#\x00", exclude_categories=["Cs"])
_levels = st.text(_level_chars, max_size=8)
topic_names = st.lists(_levels, min_size=1, max_size=5).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, tail: "/".join([*levels, *tail]),
    st.lists(st.one_of(_levels, st.just("+")), min_size=1, max_size=5),
    st.sampled_from([[], ["#"]]),
).filter(bool)
any_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
packet_ids = st.integers(1, 65535)
qos_values = st.integers(0, 2)
payloads = st.binary(max_size=300)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qos_values)
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    clean = draw(st.booleans())
    username = draw(st.none() | any_text)
    return Connect(
        client_id=draw(any_text.filter(lambda s: bool(s) or clean)),
        keepalive=draw(st.integers(0, 65535)),
        clean_session=clean,
        will=draw(st.none() | st.builds(Will, topic_names, payloads, qos_values, st.booleans())),
        username=username,
        password=draw(st.none() | st.binary(max_size=40)) if username is not None else None,
    )


@st.composite
def connacks(draw: st.DrawFn) -> ConnAck:
    code = draw(st.integers(0, 5))
    return ConnAck(session_present=draw(st.booleans()) if code == 0 else False, return_code=code)


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    connacks(),
    publishes(),
    st.builds(PubAck, packet_ids),
    st.builds(PubRec, packet_ids),
    st.builds(PubRel, packet_ids),
    st.builds(PubComp, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters, qos_values), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        SubAck,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple)),
    st.builds(UnsubAck, packet_ids),
    st.builds(PingReq),
    st.builds(PingResp),
    st.builds(Disconnect),
)


# --------------------------------------------------------------------------- properties


@FAST
@given(packets)
def test_round_trip_every_packet_type(packet: Packet) -> None:
    """decode(encode(p)) == p, and every shorter prefix needs more data."""
    wire = encode(packet)
    assert decode(wire) == (packet, len(wire))
    for cut in (0, 1, len(wire) // 2, len(wire) - 1):
        with pytest.raises(NeedMoreData):
            decode(wire[:cut])


@FAST
@given(topic_names)
def test_a_topic_name_matches_itself(topic: str) -> None:
    """Any valid topic name is also a filter that matches exactly that topic."""
    check_topic_name(topic)
    check_topic_filter(topic)
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is not topic.startswith("$")


@FAST
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    """Garbage never escapes as anything but NeedMoreData or ProtocolError."""
    try:
        packet, used = decode(data)
    except (NeedMoreData, ProtocolError):
        return
    assert 0 < used <= len(data)
    assert isinstance(packet, Packet)


@FAST
@given(packets, st.data())
def test_mutated_packets_decode_or_raise_protocol_error(
    packet: Packet, data: st.DataObject
) -> None:
    """Flipping any byte of a valid packet gives a packet, NeedMoreData or ProtocolError."""
    wire = bytearray(encode(packet))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(NeedMoreData, ProtocolError):
        decode(bytes(wire))


@FAST
@given(st.lists(packets, max_size=8), st.data())
def test_decoder_is_independent_of_chunking(items: list[Packet], data: st.DataObject) -> None:
    """However the stream is split, PacketDecoder yields the same packets in order."""
    stream = b"".join(encode(p) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = PacketDecoder()
    got: list[Packet | OversizedPublish] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        while (packet := decoder.next_packet()) is not None:
            got.append(packet)
    assert got == items
    assert decoder.buffered == 0


def test_decoder_fed_one_byte_at_a_time_yields_all_vectors() -> None:
    """Byte-by-byte feeding yields exactly the packets of the concatenated vectors."""
    stream = b"".join(wire for _, wire in VECTORS)
    decoder = PacketDecoder()
    got: list[Packet | OversizedPublish] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (packet := decoder.next_packet()) is not None:
            got.append(packet)
    assert got == [packet for packet, _ in VECTORS]


def test_decoder_reassembles_a_large_packet_from_small_chunks() -> None:
    """A 1 MiB PUBLISH fed in 64-byte chunks arrives intact (no quadratic re-copying)."""
    payload = bytes(range(256)) * 4096
    wire = encode(Publish(topic="big", payload=payload, qos=1, packet_id=9))
    decoder = PacketDecoder(max_packet_size=2 * len(wire))
    results = []
    for i in range(0, len(wire), 64):
        decoder.feed(wire[i : i + 64])
        results.append(decoder.next_packet())
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == Publish(topic="big", payload=payload, qos=1, packet_id=9)


def test_decoder_compacts_consumed_bytes() -> None:
    """Consumed bytes are released, so a long-lived connection does not grow its buffer."""
    decoder = PacketDecoder()
    one = encode(PubAck(1))
    for _ in range(10_000):
        decoder.feed(one)
        assert decoder.next_packet() == PubAck(1)
    assert len(decoder._buf) <= 2 * len(one)


def test_decoder_can_be_cleared_after_a_protocol_error() -> None:
    """After garbage, clear() empties the buffer (no stuck buffer export) and it works again."""
    decoder = PacketDecoder()
    decoder.feed(b"\x00\x00")
    with pytest.raises(ProtocolError):
        decoder.next_packet()
    decoder.clear()
    decoder.feed(encode(PingResp()))
    assert decoder.next_packet() == PingResp()
    assert decoder.next_packet() is None
