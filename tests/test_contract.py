"""The thin-edge firmware contract, byte by byte, in both dialects.

Protects: the exact topics, payload bytes, retain flags and QoS that thin-edge expects;
that every malformed request becomes an InvalidRequest naming the field (with the op id
when it could be read) and never any other exception.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_fwagent.contract import (
    DIALECTS,
    LEGACY,
    MAX_PAYLOAD_BYTES,
    TE,
    FirmwareRequest,
    InvalidRequest,
    StatusMessage,
    check_child_id,
    registration_messages,
    twin_message,
)

SHA = "c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29"
URL = "http://127.0.0.1:8000/tedge/file-transfer/tedge-child/firmware_update/93d50a297a8c235"
REQ_TOPIC = "tedge/child1/commands/req/firmware_update"
RES_TOPIC = "tedge/child1/commands/res/firmware_update"
TE_TOPIC = "te/device/child1///cmd/firmware_update/c8y-mapper-42"

# The example request of the user document, verbatim.
DOC_REQUEST = b"""{
  "id": "tLrLthPXksKbqRqIsrDmy",
  "attempt": 1,
  "name": "OpenWRT",
  "version": "22.03",
  "url":"http://127.0.0.1:8000/tedge/file-transfer/tedge-child/firmware_update/93d50a297a8c235",
  "sha256":"c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29"
}"""


def legacy_payload(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "op-1",
        "attempt": 1,
        "name": "OpenWRT",
        "version": "22.03",
        "url": URL,
        "sha256": SHA,
    }
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


_DROP = object()


def te_payload(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "status": "init",
        "name": "OpenWRT",
        "version": "22.03",
        "remoteUrl": "https://example.cumulocity.com/inventory/binaries/123",
        "tedgeUrl": "http://127.0.0.1:8000/te/v1/files/child1/firmware_update/abc",
    }
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


# --- legacy dialect ---


def test_legacy_subscribes_to_the_documented_request_topic() -> None:
    assert LEGACY.subscriptions("child1") == [REQ_TOPIC]


def test_legacy_parses_the_document_example_exactly() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, DOC_REQUEST)
    assert request == FirmwareRequest(
        dialect="legacy",
        child_id="child1",
        op_id="tLrLthPXksKbqRqIsrDmy",
        attempt=1,
        name="OpenWRT",
        version="22.03",
        url=URL,
        sha256=SHA,
        topic=REQ_TOPIC,
    )


def test_legacy_normalises_sha256_to_lowercase_and_ignores_unknown_fields() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload(sha256=SHA.upper(), future=[1]))
    assert request is not None
    assert request.sha256 == SHA


def test_legacy_missing_attempt_counts_as_first_attempt() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload(attempt=_DROP))
    assert request is not None and request.attempt == 1


def test_legacy_resent_request_keeps_its_attempt_count() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload(attempt=3))
    assert request is not None and request.attempt == 3


def test_legacy_ignores_other_topics() -> None:
    assert LEGACY.parse("child1", "tedge/child2/commands/req/firmware_update", DOC_REQUEST) is None
    assert LEGACY.parse("child1", RES_TOPIC, DOC_REQUEST) is None


@pytest.mark.parametrize(
    ("status", "reason", "payload"),
    [
        ("executing", None, b'{"id":"op-1","status":"executing"}'),
        ("successful", None, b'{"id":"op-1","status":"successful"}'),
        ("successful", "ignored", b'{"id":"op-1","status":"successful"}'),
        (
            "failed",
            "SHA-256 checksum validation failed",
            b'{"id":"op-1","status":"failed","reason":"SHA-256 checksum validation failed"}',
        ),
        ("failed", None, b'{"id":"op-1","status":"failed","reason":"firmware update failed"}'),
    ],
)
def test_legacy_status_bytes(status: Any, reason: str | None, payload: bytes) -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload())
    assert request is not None
    assert LEGACY.status(request, status, reason) == StatusMessage(
        topic=RES_TOPIC, payload=payload, retain=False, qos=1
    )


def test_legacy_status_reason_is_valid_utf8_and_bounded() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload())
    assert request is not None
    message = LEGACY.status(request, "failed", "bad \ud800 caf\u00e9 " + "x" * 5000)
    body = json.loads(message.payload.decode("utf-8"))
    assert body["reason"].startswith("bad ? caf\u00e9 ")
    assert len(body["reason"]) <= 2000


def test_legacy_rejects_unknown_status() -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload())
    assert request is not None
    with pytest.raises(ValueError):
        LEGACY.status(request, "done", None)  # type: ignore[arg-type]


def test_legacy_invalid_answers_failed_when_id_was_readable() -> None:
    with pytest.raises(InvalidRequest) as info:
        LEGACY.parse("child1", REQ_TOPIC, legacy_payload(sha256="abc"))
    assert LEGACY.invalid("child1", REQ_TOPIC, info.value) == StatusMessage(
        topic=RES_TOPIC,
        payload=(
            b'{"id":"op-1","status":"failed",'
            b'"reason":"invalid request: field \'sha256\' must be 64 hex characters"}'
        ),
        retain=False,
    )


def test_legacy_invalid_without_id_has_nothing_to_answer() -> None:
    assert LEGACY.invalid("child1", REQ_TOPIC, InvalidRequest(None, "x")) is None


BAD_LEGACY: list[tuple[str, bytes, str | None, str]] = [
    ("not json", b"{nope", None, "not valid JSON"),
    ("empty", b"", None, "not valid JSON"),
    ("not an object", b"[1, 2]", None, "must be a JSON object"),
    ("string", b'"id"', None, "must be a JSON object"),
    ("non-utf8", b'{"id": "\xff\xfe"}', None, "not valid UTF-8"),
    ("oversize", b" " * (MAX_PAYLOAD_BYTES + 1), None, "too large"),
    ("deep nesting", b"[" * 30000 + b"]" * 30000, None, "not valid JSON"),
    ("huge int", b'{"id":"a","attempt":' + b"9" * 5000 + b"}", None, "not valid JSON"),
    ("missing id", legacy_payload(id=_DROP), None, "field 'id' is missing"),
    ("id not a string", legacy_payload(id=7), None, "field 'id' must be a string"),
    ("empty id", legacy_payload(id=""), None, "field 'id' must not be empty"),
    ("id with control char", legacy_payload(id="a\nb"), None, "field 'id' contains control"),
    ("id too long", legacy_payload(id="i" * 257), None, "field 'id' is too long"),
    ("attempt string", legacy_payload(attempt="1"), "op-1", "field 'attempt'"),
    ("attempt bool", legacy_payload(attempt=True), "op-1", "field 'attempt'"),
    ("attempt float", legacy_payload(attempt=1.0), "op-1", "field 'attempt'"),
    ("attempt zero", legacy_payload(attempt=0), "op-1", "field 'attempt'"),
    ("missing name", legacy_payload(name=_DROP), "op-1", "field 'name' is missing"),
    ("name not a string", legacy_payload(name=None), "op-1", "field 'name' must be a string"),
    ("name too long", legacy_payload(name="n" * 257), "op-1", "field 'name' is too long"),
    ("name control", legacy_payload(name="a\x00b"), "op-1", "field 'name' contains control"),
    ("version number", legacy_payload(version=22.03), "op-1", "field 'version' must be a string"),
    ("missing version", legacy_payload(version=_DROP), "op-1", "field 'version' is missing"),
    ("version surrogate", legacy_payload(version="\ud800"), "op-1", "field 'version' contains"),
    ("missing url", legacy_payload(url=_DROP), "op-1", "field 'url' is missing"),
    ("url not a string", legacy_payload(url=["http://h/"]), "op-1", "field 'url' must be a string"),
    ("url ftp", legacy_payload(url="ftp://h/f"), "op-1", "field 'url' must be an http or https"),
    ("url file", legacy_payload(url="file:///etc/passwd"), "op-1", "field 'url' must be an http"),
    ("url no host", legacy_payload(url="http:///f"), "op-1", "field 'url' must be an http"),
    ("url bad port", legacy_payload(url="http://h:99999/f"), "op-1", "field 'url' must be an http"),
    ("url space", legacy_payload(url="http://h/a b"), "op-1", "field 'url' must be an http"),
    ("url relative", legacy_payload(url="/tedge/file"), "op-1", "field 'url' must be an http"),
    ("url empty label", legacy_payload(url="http://fw..example.com/x"), "op-1", "invalid host"),
    ("url long label", legacy_payload(url=f"http://{'a' * 64}.com/x"), "op-1", "invalid host"),
    ("url idn empty label", legacy_payload(url="http://\u00e9..x/x"), "op-1", "invalid host"),
    ("url port 0", legacy_payload(url="http://h:0/f"), "op-1", "field 'url' must be an http"),
    ("missing sha", legacy_payload(sha256=_DROP), "op-1", "field 'sha256' is missing"),
    ("short sha", legacy_payload(sha256=SHA[:-1]), "op-1", "field 'sha256' must be 64 hex"),
    ("non-hex sha", legacy_payload(sha256="g" * 64), "op-1", "field 'sha256' must be 64 hex"),
    ("sha newline", legacy_payload(sha256=SHA + "\n"), "op-1", "field 'sha256' must be 64 hex"),
    ("sha number", legacy_payload(sha256=1), "op-1", "field 'sha256' must be 64 hex"),
]


@pytest.mark.parametrize(
    ("payload", "op_id", "reason"), [c[1:] for c in BAD_LEGACY], ids=[c[0] for c in BAD_LEGACY]
)
def test_legacy_malformed_request_is_invalid_naming_the_field(
    payload: bytes, op_id: str | None, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        LEGACY.parse("child1", REQ_TOPIC, payload)
    assert info.value.op_id == op_id
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason
    assert "\n" not in info.value.reason


@pytest.mark.parametrize(
    "url", [f"http://{'a' * 63}.example.com./x", "https://[::1]:8443/x", "http://b\u00fccher.de/"]
)
def test_legacy_accepts_urls_whose_host_resolves(url: str) -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, legacy_payload(url=url))
    assert request is not None and request.url == url


@pytest.mark.parametrize("child_id", ["", "a/b", "a+", "#", "a\x00", "c" * 257])
def test_child_ids_that_are_not_one_topic_level_are_refused(child_id: str) -> None:
    with pytest.raises(ValueError):
        check_child_id(child_id)
    for dialect in DIALECTS.values():
        with pytest.raises(ValueError):
            dialect.subscriptions(child_id)
    with pytest.raises(ValueError):
        registration_messages(child_id)


def test_request_json_round_trip() -> None:
    for dialect, topic, payload in ((LEGACY, REQ_TOPIC, DOC_REQUEST), (TE, TE_TOPIC, te_payload())):
        request = dialect.parse("child1", topic, payload)
        assert request is not None
        again = FirmwareRequest.from_json(json.loads(json.dumps(request.to_json())))
        assert again == request


@pytest.mark.parametrize(
    "broken",
    [{"attempt": 0}, {"sha256": "x"}, {"name": 1}, {"extra": {"a": 1}}, {"attempt": True}],
)
def test_request_from_json_rejects_damaged_records(broken: dict[str, Any]) -> None:
    request = LEGACY.parse("child1", REQ_TOPIC, DOC_REQUEST)
    assert request is not None
    with pytest.raises(ValueError):
        FirmwareRequest.from_json({**request.to_json(), **broken})


# --- te/ dialect ---


def test_te_subscribes_to_every_firmware_command_of_the_child() -> None:
    assert TE.subscriptions("child1") == ["te/device/child1///cmd/firmware_update/+"]


def test_te_init_command_prefers_tedge_url() -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload())
    assert request is not None
    assert (request.dialect, request.op_id, request.attempt, request.topic) == (
        "te",
        "c8y-mapper-42",
        1,
        TE_TOPIC,
    )
    assert request.url == "http://127.0.0.1:8000/te/v1/files/child1/firmware_update/abc"
    assert request.sha256 is None
    assert (request.name, request.version) == ("OpenWRT", "22.03")


def test_te_without_tedge_url_downloads_remote_url_and_uses_given_sha() -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload(tedgeUrl=_DROP, sha256=SHA.upper()))
    assert request is not None
    assert request.url == "https://example.cumulocity.com/inventory/binaries/123"
    assert request.sha256 == SHA


@pytest.mark.parametrize("absent", [_DROP, None, ""])
def test_te_absent_tedge_url_means_remote_url(absent: object) -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload(tedgeUrl=absent))
    assert request is not None
    assert request.url == "https://example.cumulocity.com/inventory/binaries/123"


def test_requests_are_hashable_values() -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload())
    assert request is not None
    assert request in {request}


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (TE_TOPIC, b""),  # the requester clears the command
        (TE_TOPIC, te_payload(status="executing")),  # our own retained echo
        (TE_TOPIC, te_payload(status="successful")),
        (TE_TOPIC, te_payload(status="failed", reason="x")),
        (TE_TOPIC, te_payload(status="scheduled")),
        ("te/device/child2///cmd/firmware_update/c8y-mapper-42", te_payload()),
        ("te/device/child1///cmd/firmware_update", b"{}"),  # the capability itself
        ("te/device/child1///cmd/firmware_update/", te_payload()),
        ("te/device/child1///cmd/firmware_update/a/b", te_payload()),
        ("te/device/child1///cmd/config_update/x", te_payload()),
    ],
)
def test_te_messages_that_are_not_new_commands_are_ignored(topic: str, payload: bytes) -> None:
    assert TE.parse("child1", topic, payload) is None


def test_te_status_echoes_command_fields_retained_on_the_command_topic() -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload(extraField="kept", number=5))
    assert request is not None
    executing = TE.status(request, "executing")
    assert executing == StatusMessage(
        topic=TE_TOPIC,
        payload=(
            b'{"status":"executing","name":"OpenWRT","version":"22.03",'
            b'"remoteUrl":"https://example.cumulocity.com/inventory/binaries/123",'
            b'"tedgeUrl":"http://127.0.0.1:8000/te/v1/files/child1/firmware_update/abc",'
            b'"extraField":"kept"}'
        ),
        retain=True,
        qos=1,
    )
    failed = TE.status(request, "failed", "installer exited with code 3")
    body = json.loads(failed.payload)
    assert body["status"] == "failed"
    assert body["reason"] == "installer exited with code 3"
    assert list(body)[-1] == "reason"
    assert failed.retain is True
    # Our own answer, heard back on the subscription, is not a new command.
    assert TE.parse("child1", failed.topic, failed.payload) is None
    assert TE.parse("child1", executing.topic, executing.payload) is None


def test_te_status_for_hand_built_request_still_names_the_firmware() -> None:
    request = FirmwareRequest("te", "child1", "c1", 1, "fw", "1.0", "http://h/f", None, "t")
    message = TE.status(request, "successful")
    assert message.topic == "te/device/child1///cmd/firmware_update/c1"
    assert message.payload == (
        b'{"status":"successful","name":"fw","version":"1.0","remoteUrl":"http://h/f"}'
    )


BAD_TE: list[tuple[str, bytes, str]] = [
    ("not json", b"garbage", "not valid JSON"),
    ("not an object", b"[]", "must be a JSON object"),
    ("no status", te_payload(status=_DROP), "field 'status' is missing"),
    ("status number", te_payload(status=1), "field 'status' must be a string"),
    ("no name", te_payload(name=_DROP), "field 'name' is missing"),
    ("version list", te_payload(version=[]), "field 'version' must be a string"),
    ("no urls", te_payload(tedgeUrl=_DROP, remoteUrl=_DROP), "field 'remoteUrl' is missing"),
    ("tedgeUrl ftp", te_payload(tedgeUrl="ftp://h/f"), "field 'tedgeUrl' must be an http"),
    ("remoteUrl number", te_payload(remoteUrl=5), "field 'remoteUrl' must be a string"),
    ("bad sha", te_payload(sha256="abc"), "field 'sha256' must be 64 hex"),
    ("non-utf8", b'{"status":"init","name":"\xc3"}', "not valid UTF-8"),
    ("oversize", b" " * (MAX_PAYLOAD_BYTES + 1), "too large"),
]


@pytest.mark.parametrize(("payload", "reason"), [c[1:] for c in BAD_TE], ids=[c[0] for c in BAD_TE])
def test_te_malformed_command_is_invalid_and_answered_failed(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        TE.parse("child1", TE_TOPIC, payload)
    assert info.value.op_id == "c8y-mapper-42"
    assert reason in info.value.reason
    answer = TE.invalid("child1", TE_TOPIC, info.value)
    assert answer is not None
    assert (answer.topic, answer.retain, answer.qos) == (TE_TOPIC, True, 1)
    body = json.loads(answer.payload)
    assert body["status"] == "failed"
    assert body["reason"] == f"invalid request: {info.value.reason}"
    # The answer is not itself taken for a new command.
    assert TE.parse("child1", answer.topic, answer.payload) is None


def test_te_invalid_answer_echoes_the_readable_fields() -> None:
    with pytest.raises(InvalidRequest) as info:
        TE.parse("child1", TE_TOPIC, te_payload(tedgeUrl="ftp://h/f"))
    answer = TE.invalid("child1", TE_TOPIC, info.value)
    assert answer is not None
    assert answer.payload == (
        b'{"status":"failed","name":"OpenWRT","version":"22.03",'
        b'"remoteUrl":"https://example.cumulocity.com/inventory/binaries/123",'
        b'"tedgeUrl":"ftp://h/f",'
        b'"reason":"invalid request: field \'tedgeUrl\' must be an http or https URL with a host"}'
    )


def test_te_registration_messages_are_retained_and_exact() -> None:
    assert registration_messages("child1") == [
        StatusMessage("te/device/child1//", b'{"@type":"child-device"}', retain=True, qos=1),
        StatusMessage("te/device/child1///cmd/firmware_update", b"{}", retain=True, qos=1),
    ]


def test_te_twin_reports_the_cloud_url() -> None:
    request = TE.parse("child1", TE_TOPIC, te_payload())
    assert request is not None
    assert twin_message(request) == StatusMessage(
        "te/device/child1///twin/firmware",
        b'{"name":"OpenWRT","version":"22.03",'
        b'"url":"https://example.cumulocity.com/inventory/binaries/123"}',
        retain=True,
    )


def test_dialects_by_config_name() -> None:
    assert DIALECTS["legacy"] is LEGACY and DIALECTS["te"] is TE
    assert (LEGACY.name, TE.name) == ("legacy", "te")


# --- properties: nothing but InvalidRequest ever escapes a parser ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(
    ["id", "attempt", "name", "version", "url", "sha256", "status", "remoteUrl", "tedgeUrl"]
)


def _parse_everywhere(payload: bytes) -> None:
    for dialect, topic in ((LEGACY, REQ_TOPIC), (TE, TE_TOPIC)):
        try:
            request = dialect.parse("child1", topic, payload)
        except InvalidRequest as exc:
            assert isinstance(exc.reason, str) and exc.reason
            answer = dialect.invalid("child1", topic, exc)
            if answer is not None:
                json.loads(answer.payload.decode("utf-8"))
            continue
        if request is not None:
            # Whatever was accepted can be answered with valid UTF-8 JSON.
            for status in ("executing", "successful", "failed"):
                message = dialect.status(request, status, "reason")
                json.loads(message.payload.decode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_invalid_request(payload: bytes) -> None:
    _parse_everywhere(payload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(fields | st.text(max_size=5), json_values, max_size=9))
def test_arbitrary_json_objects_only_ever_raise_invalid_request(obj: dict[str, Any]) -> None:
    _parse_everywhere(json.dumps(obj).encode())
    _parse_everywhere(te_payload(**obj))
    _parse_everywhere(legacy_payload(**obj))
