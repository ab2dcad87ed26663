"""The demo and its simulated world: the built-in broker, the simulated plugin, the whole run.

The built-in broker is checked against paho-mqtt (an independent MQTT implementation) and
our own client; the simulated plugin against a stand-in agent written with paho; the demo
itself end to end as a subprocess, as README's first command runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from trio_fwagent.mqtt import MqttClient, MqttSettings
from trio_fwagent.testing.broker import MiniBroker
from trio_fwagent.testing.mosquitto import find_mosquitto
from trio_fwagent.testing.plugin import SimulatedPlugin, StatusReceived, check_response

# ----------------------------------------------------------------------------- helpers


class _Paho:
    """A blocking paho client for the independent side of a test (runs its own thread)."""

    def __init__(self, port: int, client_id: str, *, transport: str = "tcp", clean: bool = True):
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.arrived = threading.Condition()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport=transport,  # type: ignore[arg-type]
            clean_session=clean,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5), "paho could not connect"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.arrived:
            self.messages.append((message.topic, message.payload, message.qos, message.retain))
            self.arrived.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=qos)
        assert done.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def wait_for(self, count: int) -> list[tuple[str, bytes, int, bool]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, 5), self.messages
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


# ----------------------------------------------------------------------------- built-in broker


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
async def test_builtin_broker_routes_wildcards_retained_and_qos1(transport: str) -> None:
    """paho clients exchange QoS 1 messages through + and # filters, and get retained ones."""
    broker = MiniBroker()
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        port = broker.tcp_port if transport == "tcp" else broker.ws_port

        def scenario() -> list[tuple[str, bytes, int, bool]]:
            sub = _Paho(port, "sub", transport=transport)
            pub = _Paho(port, "pub", transport=transport)
            try:
                pub.publish("te/device/c1///cmd/firmware_update/x", b"{}", retain=True)
                sub.subscribe("tedge/+/commands/req/#")
                sub.subscribe("te/device/c1///cmd/#")
                pub.publish("tedge/c1/commands/req/firmware_update", b"hello")
                pub.publish("tedge/c1/other", b"not for the filter")
                return sub.wait_for(2)
            finally:
                sub.close()
                pub.close()

        got = await _in_thread(scenario)
        nursery.cancel_scope.cancel()
    assert ("te/device/c1///cmd/firmware_update/x", b"{}", 1, True) in got
    assert ("tedge/c1/commands/req/firmware_update", b"hello", 1, False) in got
    assert all(topic != "tedge/c1/other" for topic, *_ in got)


async def test_builtin_broker_queues_qos1_for_an_absent_persistent_session() -> None:
    """A clean_session=False client that reconnects gets what was published while away."""
    broker = MiniBroker(websockets=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)

        def scenario() -> list[tuple[str, bytes, int, bool]]:
            agent = _Paho(broker.tcp_port, "agent", clean=False)
            agent.subscribe("tedge/c1/commands/req/firmware_update")
            agent.close()
            pub = _Paho(broker.tcp_port, "plugin")
            pub.publish("tedge/c1/commands/req/firmware_update", b"while away")
            pub.close()
            again = _Paho(broker.tcp_port, "agent", clean=False)
            try:
                return again.wait_for(1)
            finally:
                again.close()

        got = await _in_thread(scenario)
        nursery.cancel_scope.cancel()
    assert got == [("tedge/c1/commands/req/firmware_update", b"while away", 1, False)]


# ----------------------------------------------------------------------------- plugin


def test_check_response_applies_the_real_plugins_rules() -> None:
    """Unknown status, missing id or non-string reason are rejected like thin-edge does."""
    ok, problem = check_response(b'{"id": "a", "status": "failed", "reason": "x"}')
    assert ok is not None and problem is None
    for bad in (
        b'{"id": "a", "status": "done"}',
        b'{"status": "executing"}',
        b'{"id": 5, "status": "executing"}',
        b'{"id": "a", "status": "failed", "reason": 3}',
        b"not json",
        b"[]",
    ):
        fields, problem = check_response(bad)
        assert fields is None and problem, bad


async def test_simulated_plugin_sends_the_documented_request_and_follows_statuses() -> None:
    """The plugin publishes QoS 1 on the req topic and returns at the final status,
    skipping other operations' responses and recording invalid ones."""
    broker = MiniBroker(websockets=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        client = MqttClient(MqttSettings(port=broker.tcp_port, client_id="plugin"))
        await nursery.start(client.run)
        agent = await _in_thread(lambda: _Paho(broker.tcp_port, "fake-agent"))
        await _in_thread(lambda: agent.subscribe("tedge/c1/commands/req/firmware_update"))
        answered = threading.Event()

        def answer_when_asked() -> dict[str, Any]:
            topic, payload, qos, _ = agent.wait_for(1)[0]
            assert (topic, qos) == ("tedge/c1/commands/req/firmware_update", 1)
            request = json.loads(payload)
            res = "tedge/c1/commands/res/firmware_update"
            agent.publish(res, json.dumps({"id": "other", "status": "successful"}).encode())
            agent.publish(res, json.dumps({"id": request["id"], "status": "bogus"}).encode())
            agent.publish(res, json.dumps({"id": request["id"], "status": "executing"}).encode())
            agent.publish(res, json.dumps({"id": request["id"], "status": "successful"}).encode())
            answered.set()
            return dict(request)

        seen: list[StatusReceived] = []
        plugin = SimulatedPlugin(client, "c1")
        async with trio.open_nursery() as inner:
            result: list[dict[str, Any]] = []

            async def fake_agent() -> None:
                result.append(await _in_thread(answer_when_asked))

            inner.start_soon(fake_agent)
            with trio.fail_after(10):
                outcome = await plugin.update(
                    name="os",
                    version="2",
                    url="http://127.0.0.1:1/x",
                    sha256="a" * 64,
                    on_status=seen.append,
                )
        await _in_thread(agent.close)
        nursery.cancel_scope.cancel()
    request = result[0]
    assert request == {
        "id": outcome.op_id,
        "attempt": 1,
        "name": "os",
        "version": "2",
        "url": "http://127.0.0.1:1/x",
        "sha256": "a" * 64,
    }
    assert outcome.final == "successful"
    assert [s.status for s in outcome.statuses] == ["executing", "successful"]
    assert [s.status for s in seen] == ["executing", "successful"]
    assert len(outcome.violations) == 1 and "bogus" in outcome.violations[0]


# ----------------------------------------------------------------------------- the demo


def _run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_fwagent", "demo", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "COLUMNS": "100"},
    )


def _summary_value(stdout: str, key: str) -> str:
    match = re.search(rf"^{key}\s+(.*)$", stdout, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{stdout}"
    return match.group(1)


def _assert_succeeded(result: subprocess.CompletedProcess[str], faults: str) -> None:
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert _summary_value(out, "result") == "SUCCESS"
    assert _summary_value(out, "final status") == "successful"
    assert _summary_value(out, "installed file").startswith("verified")
    statuses = _summary_value(out, "statuses")
    assert statuses.startswith("executing") and "successful" in statuses
    assert "status executing" in out and "status successful" in out  # shown as they passed
    if faults != "none":
        resumes = int(_summary_value(out, "resumes").split()[0])
        restarts = int(_summary_value(out, "resumes").split("restarts from 0: ")[1].rstrip(")"))
        assert resumes + restarts >= 1, out  # the injected faults really happened
    assert "(removed)" in _summary_value(out, "files")


_MOSQUITTO = find_mosquitto() is not None


@pytest.mark.slow
@pytest.mark.skipif(not _MOSQUITTO, reason="mosquitto is not installed")
def test_demo_end_to_end_over_tcp_with_drops() -> None:
    """`trio-fwagent demo` succeeds through injected drops and prints the summary."""
    result = _run_demo("--size", "4MiB", "--rate", "8MiB", "--faults", "drops")
    _assert_succeeded(result, "drops")
    assert "mosquitto" in _summary_value(result.stdout, "broker")


@pytest.mark.slow
def test_demo_end_to_end_over_websockets() -> None:
    """The websockets transport works (mosquitto if it can serve it, else the built-in broker)."""
    result = _run_demo("--size", "4MiB", "--rate", "8MiB", "--transport", "websockets")
    _assert_succeeded(result, "drops")
    assert "websockets" in _summary_value(result.stdout, "broker")


@pytest.mark.slow
def test_demo_with_builtin_broker_and_a_server_without_range() -> None:
    """Without mosquitto (forced) and against a Range-less server the update still succeeds."""
    result = _run_demo(
        "--size", "2MiB", "--rate", "8MiB", "--broker", "builtin", "--faults", "range-less"
    )
    _assert_succeeded(result, "range-less")
    assert "built-in" in _summary_value(result.stdout, "broker")


@pytest.mark.slow
def test_demo_exits_1_when_the_update_fails() -> None:
    """A corrupted transfer is caught by the checksum: `failed` is shown, exit status 1."""
    result = _run_demo("--size", "1MiB", "--rate", "8MiB", "--faults", "corrupt")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _summary_value(result.stdout, "result").startswith("FAILED")
    assert "SHA-256 mismatch" in _summary_value(result.stdout, "result")
    assert _summary_value(result.stdout, "final status") == "failed"
    assert _summary_value(result.stdout, "installed file") == "NOT verified"


def test_demo_rejects_an_unknown_fault_pattern() -> None:
    """A bad option is a usage error (exit 2), not a failed demo."""
    result = _run_demo("--faults", "earthquake")
    assert result.returncode == 2
