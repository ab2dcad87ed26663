"""End to end: ``trio-fwagent run`` as a subprocess against a real mosquitto (TCP and
WebSocket), the fault-injecting file server and an independent MQTT client (paho-mqtt)
playing thin-edge's c8y-firmware-plugin. Each test checks what a user would notice: the
statuses on the response topic, the installed file, the installer's runs and environment,
and the bytes the file server had to send."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentProcess, Installer, Plugin, wait_until
from trio_fwagent.contract import FirmwareRequest
from trio_fwagent.journal import Journal, OperationRecord, Phase
from trio_fwagent.testing.fileserver import Faults, FaultyFileServer
from trio_fwagent.testing.mosquitto import MosquittoBroker

pytestmark = pytest.mark.slow

AgentFactory = Callable[..., AgentProcess]


def image(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(server: FaultyFileServer, path: str, data: bytes, faults: Faults | None = None) -> str:
    return server.add_file(path, data, faults)


def no_other_access(data_dir: Path) -> list[str]:
    """Files or directories under data_dir that group or others may access."""
    bad = []
    for path in [data_dir, *data_dir.rglob("*")]:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue  # a journal temp file renamed while we looked
        if mode & 0o077:
            bad.append(f"{path.relative_to(data_dir.parent)} {oct(mode)}")
    return bad


@pytest.mark.parametrize("transport", ["tcp", "websockets", "tls"])
def test_happy_path_executing_then_successful_with_the_installer_env(
    transport: str,
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
    mosquitto: MosquittoBroker,
) -> None:
    data = image(300_000)
    url = serve(file_server, "/tedge/file-transfer/child1/firmware_update/abc", data)
    mqtt: dict[str, object] = {"mqtt_transport": transport}
    if transport == "tls":
        # Mutual TLS by address, checking the certificate's name: as against thin-edge's
        # broker with device certificates.
        assert mosquitto.tls_files is not None
        mqtt = {
            "mqtt_port": mosquitto.tls_port,
            "mqtt_ca_file": str(mosquitto.tls_files.ca_file),
            "mqtt_cert_file": str(mosquitto.tls_files.client_cert_file),
            "mqtt_key_file": str(mosquitto.tls_files.client_key_file),
            "mqtt_server_name": "localhost",
        }
    agent = agent_process(install_command=installer.command(), **mqtt)
    agent.wait_serving()
    plugin.request("child1", "op-1", url=url, sha256=sha(data), name="OpenWRT", version="22.03")
    final = plugin.wait_final("op-1")
    assert final == {"id": "op-1", "status": "successful", "_child": "child1"}, agent.tail()
    assert plugin.statuses("op-1") == ["executing", "successful"]
    assert installer.installed("child1") == data
    (run,) = installer.runs()
    assert run["FW_NAME"] == "OpenWRT"
    assert run["FW_VERSION"] == "22.03"
    assert run["FW_SHA256"] == sha(data)
    assert run["FW_OP_ID"] == "op-1"
    assert run["FW_CHILD_ID"] == "child1"
    fw_file = Path(run["FW_FILE"])
    assert fw_file.is_relative_to(agent.data_dir / "downloads")
    assert "op-1" not in fw_file.name and "OpenWRT" not in fw_file.name
    # The download is removed after a successful install; what remains is private.
    wait_until(lambda: not fw_file.exists(), 5, "download removal")
    agent.wait_event("final status acknowledged")
    assert no_other_access(agent.data_dir) == []
    assert agent.stop() == 0


def test_sha256_mismatch_fails_without_installing(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(50_000)
    url = serve(file_server, "/fw.bin", data)
    agent_process(install_command=installer.command()).wait_serving()
    plugin.request("child1", "op-sha", url=url, sha256=sha(b"something else"))
    final = plugin.wait_final("op-sha")
    assert final["status"] == "failed"
    assert "sha" in final["reason"].lower() or "checksum" in final["reason"].lower()
    assert sha(data) in final["reason"]  # both digests, so a person can tell what came
    assert installer.runs() == []


def test_404_fails_with_the_status_in_the_reason(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    agent_process(install_command=installer.command()).wait_serving()
    plugin.request("child1", "op-404", url=file_server.url("/missing.bin"), sha256="0" * 64)
    final = plugin.wait_final("op-404")
    assert final["status"] == "failed"
    assert "404" in final["reason"]
    assert installer.runs() == []


def test_server_dropping_the_connection_mid_download_still_succeeds(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(400_000)
    url = serve(file_server, "/fw.bin", data, Faults(drop_at=150_000))
    agent_process(install_command=installer.command()).wait_serving()
    plugin.request("child1", "op-drop", url=url, sha256=sha(data))
    assert plugin.wait_final("op-drop")["status"] == "successful"
    assert installer.installed("child1") == data
    stats = file_server.stats_for("/fw.bin")
    assert stats.requests >= 2  # it was dropped and came back
    assert stats.body_bytes < 1.1 * len(data)  # ...and resumed instead of starting over


def test_installer_failure_reports_exit_code_and_stderr(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(10_000)
    url = serve(file_server, "/fw.bin", data)
    agent_process(
        install_command=installer.command(exit=3, stderr="flash: partition B is read-only")
    ).wait_serving()
    plugin.request("child1", "op-inst", url=url, sha256=sha(data))
    final = plugin.wait_final("op-inst")
    assert final["status"] == "failed"
    assert "code 3" in final["reason"]
    assert "partition B is read-only" in final["reason"]


def test_installer_timeout_kills_its_process_group(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
    tmp_path: Path,
) -> None:
    data = image(10_000)
    url = serve(file_server, "/fw.bin", data)
    grandchild = tmp_path / "grandchild.pid"
    agent_process(
        install_command=installer.command(sleep=60, grandchild=grandchild), install_timeout=1.5
    ).wait_serving()
    plugin.request("child1", "op-slow", url=url, sha256=sha(data))
    final = plugin.wait_final("op-slow")
    assert final["status"] == "failed"
    assert "install_timeout" in final["reason"]
    (run,) = installer.runs()
    for pid in (run["pid"], int(grandchild.read_text())):
        wait_until(functools.partial(_gone, pid), 10, f"process {pid} to be gone")


def _gone(pid: int) -> bool:
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_operation_deadline_fails_a_download_that_takes_too_long(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(200_000)
    url = serve(file_server, "/fw.bin", data, Faults(throttle=20_000))  # ~10 s
    agent = agent_process(install_command=installer.command(), operation_timeout=1.5)
    agent.wait_serving()
    plugin.request("child1", "op-deadline", url=url, sha256=sha(data))
    final = plugin.wait_final("op-deadline")
    assert final["status"] == "failed"
    assert "operation_timeout" in final["reason"] and "downloading" in final["reason"]
    assert installer.runs() == []
    # The abandoned partial download stays (the same image may be requested again and
    # resume) until the next start, which removes leftovers no operation will resume.
    downloads = agent.data_dir / "downloads"
    assert any(p.name.endswith(".part") for p in downloads.iterdir())
    assert agent.stop() == 0
    agent.start()
    agent.wait_serving()
    assert list(downloads.iterdir()) == []


def test_malformed_requests_are_answered_or_logged_and_serving_goes_on(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(20_000)
    url = serve(file_server, "/fw.bin", data)
    agent = agent_process(install_command=installer.command())
    agent.wait_serving()
    plugin.send_raw("child1", b"\xff not json at all")
    plugin.send_raw("child1", b'["a", "list"]')
    plugin.send_raw(
        "child1",
        json.dumps(
            {"id": "bad-1", "attempt": 1, "name": "x", "version": "1", "sha256": sha(data)}
        ).encode(),
    )
    plugin.send_raw(
        "child1",
        json.dumps(
            {
                "id": "bad-2",
                "attempt": 1,
                "name": "x",
                "version": "1",
                "url": "file:///etc/passwd",
                "sha256": sha(data),
            }
        ).encode(),
    )
    plugin.request("child1", "good", url=url, sha256=sha(data))
    assert plugin.wait_final("good")["status"] == "successful", agent.tail()
    bad1 = plugin.wait_final("bad-1")
    assert bad1["status"] == "failed" and "url" in bad1["reason"]
    bad2 = plugin.wait_final("bad-2")
    assert bad2["status"] == "failed" and "url" in bad2["reason"]
    assert len(agent.events("invalid request")) == 4
    # Requests without a readable id got no answer (there is nothing to address).
    assert {r["id"] for r in plugin.responses()} == {"bad-1", "bad-2", "good"}
    assert len(installer.runs()) == 1


def test_resent_attempt_after_success_gets_the_final_status_without_reinstalling(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(20_000)
    url = serve(file_server, "/fw.bin", data)
    agent = agent_process(install_command=installer.command())
    agent.wait_serving()
    plugin.request("child1", "op-once", url=url, sha256=sha(data))
    plugin.wait_final("op-once")
    # thin-edge restarted and re-sends; then the same attempt again after an agent restart.
    plugin.request("child1", "op-once", url=url, sha256=sha(data), attempt=2)
    plugin.wait_status("op-once", "successful", count=2)
    # Sent while the agent is down: the broker keeps it in the agent's persistent session.
    assert agent.stop() == 0
    plugin.request("child1", "op-once", url=url, sha256=sha(data), attempt=3)
    agent.start()
    plugin.wait_status("op-once", "successful", count=3)
    assert len(installer.runs()) == 1
    assert file_server.stats_for("/fw.bin").requests == 1


def test_agent_killed_mid_download_resumes_after_restart(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    # The downloader hands data to its writer at least every 0.25 s: a crash loses at most
    # that much of what was sent, small next to the 10 % margin at this size and rate.
    data = image(1_500_000)
    faults = Faults(throttle=300_000)  # ~5 s
    url = serve(file_server, "/fw.bin", data, faults)
    agent = agent_process(install_command=installer.command())
    agent.wait_serving()
    plugin.request("child1", "op-crash", url=url, sha256=sha(data))
    stats = file_server.stats_for("/fw.bin")
    wait_until(lambda: stats.body_bytes > 500_000, 10, "a third of the download", agent.tail)
    agent.kill()
    sent_before = stats.body_bytes
    assert sent_before < len(data)
    # The throttle stays: lifting it would let the server pour the rest of the first
    # response into the dead connection's kernel buffers, bytes no client ever read.
    agent.start()
    final = plugin.wait_final("op-crash")
    assert final["status"] == "successful", agent.tail()
    assert installer.installed("child1") == data
    assert len(installer.runs()) == 1
    assert stats.body_bytes < 1.1 * len(data), (stats.body_bytes, stats.ranges)
    assert stats.ranges[-1] is not None and stats.ranges[-1].startswith("bytes=")
    assert agent.events("resuming operation")


def test_final_status_published_while_the_broker_is_down_arrives_after_it_returns(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
    mosquitto: MosquittoBroker,
) -> None:
    data = image(20_000)
    url = serve(file_server, "/fw.bin", data)
    agent = agent_process(install_command=installer.command(sleep=1.5))
    agent.wait_serving()
    plugin.request("child1", "op-broker", url=url, sha256=sha(data))
    plugin.wait_status("op-broker", "executing")
    wait_until(lambda: len(installer.runs()) == 1, 10, "the installer to start", agent.tail)
    mosquitto.stop()  # the installer is still running: the final is sent to no broker
    wait_until(lambda: installer.finished_runs() == 1, 10, "the installer to finish")
    agent.wait_event("final status")
    time.sleep(0.5)
    mosquitto.start()
    plugin.peer.wait_connected()
    final = plugin.wait_final("op-broker", timeout=30)
    assert final["status"] == "successful", agent.tail()
    agent.wait_event("final status acknowledged")


def test_two_children_update_at_once_and_share_a_download_of_the_same_file(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    shared = image(300_000, seed=7)
    other = image(100_000, seed=8)
    throttle = Faults(throttle=300_000)  # ~1 s, so the requests overlap
    url1 = serve(file_server, "/tedge/file-transfer/child1/firmware_update/k1", shared, throttle)
    url2 = serve(file_server, "/tedge/file-transfer/child2/firmware_update/k2", shared, throttle)
    url3 = serve(file_server, "/tedge/file-transfer/child3/firmware_update/k3", other, throttle)
    agent = agent_process(
        child_id=["child1", "child2", "child3"], install_command=installer.command()
    )
    agent.wait_serving()
    plugin.request("child1", "op-a", url=url1, sha256=sha(shared))
    plugin.request("child2", "op-b", url=url2, sha256=sha(shared))
    plugin.request("child3", "op-c", url=url3, sha256=sha(other))
    for op in ("op-a", "op-b", "op-c"):
        assert plugin.wait_final(op)["status"] == "successful", agent.tail()
    assert installer.installed("child1") == shared
    assert installer.installed("child2") == shared
    assert installer.installed("child3") == other
    shared_bytes = (
        file_server.stats_for("/tedge/file-transfer/child1/firmware_update/k1").body_bytes
        + file_server.stats_for("/tedge/file-transfer/child2/firmware_update/k2").body_bytes
    )
    assert shared_bytes < 1.1 * len(shared)  # one download for two children
    runs = installer.runs()
    assert sorted(r["FW_CHILD_ID"] for r in runs) == ["child1", "child2", "child3"]
    # The children ran concurrently: child3's operation did not wait for the others.
    starts = {e["child"]: e["ts"] for e in agent.events("operation started")}
    assert len(starts) == 3


def test_sigterm_mid_download_exits_0_and_the_operation_resumes(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(1_500_000)
    faults = Faults(throttle=300_000)
    url = serve(file_server, "/fw.bin", data, faults)
    agent = agent_process(install_command=installer.command())
    agent.wait_serving()
    plugin.request("child1", "op-term", url=url, sha256=sha(data))
    stats = file_server.stats_for("/fw.bin")
    wait_until(lambda: stats.body_bytes > 300_000, 10, "some progress", agent.tail)
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 10
    assert plugin.statuses("op-term") == ["executing"]  # no failed: it is not over
    faults.throttle = None
    agent.start()
    assert plugin.wait_final("op-term")["status"] == "successful", agent.tail()
    assert stats.body_bytes < 1.1 * len(data)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_requests_delivered_but_not_yet_handled_when_the_agent_stops_are_not_lost(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
    how: str,
) -> None:
    """The broker gets a request's PUBACK only once it is journaled: a request still
    queued inside the agent when it stops comes again after the restart."""
    url = file_server.url("/missing.bin")  # 404: every operation ends fast, with a status
    agent = agent_process(install_command=installer.command())
    agent.wait_serving()
    ids = [f"op-burst-{i}" for i in range(30)]
    for op_id in ids:
        plugin.request("child1", op_id, url=url, sha256="a" * 64)
    agent.wait_event("request received", timeout=10)
    if how == "sigterm":
        assert agent.stop() == 0
    else:
        agent.kill()
    unanswered = [op_id for op_id in ids if not plugin.statuses(op_id)]
    agent.start()
    for op_id in ids:
        assert plugin.wait_final(op_id)["status"] == "failed", agent.tail()
    # (If the stop came too late to catch any request in flight, this run proved less;
    # the figure shows how many the restart had to pick up.)
    print(f"{how}: {len(unanswered)} of {len(ids)} requests were unanswered at the stop")
    assert installer.runs() == []


def test_agent_killed_while_installing_reports_failed_after_restart(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(10_000)
    url = serve(file_server, "/fw.bin", data)
    agent = agent_process(install_command=installer.command(sleep=30))
    agent.wait_serving()
    plugin.request("child1", "op-inst-crash", url=url, sha256=sha(data))
    wait_until(lambda: len(installer.runs()) == 1, 10, "the installer to start", agent.tail)
    agent.kill()
    os.kill(installer.runs()[0]["pid"], signal.SIGKILL)  # it outlived the agent's SIGKILL
    agent.start()
    final = plugin.wait_final("op-inst-crash")
    assert final["status"] == "failed"
    assert "restarted during installation" in final["reason"]
    # thin-edge re-sends: the installer is not run a second time, the answer is the same.
    plugin.request("child1", "op-inst-crash", url=url, sha256=sha(data), attempt=2)
    assert plugin.wait_status("op-inst-crash", "failed", count=2)["reason"] == final["reason"]
    assert len(installer.runs()) == 1


def test_te_dialect_command_is_answered_retained_with_echo_and_twin(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    data = image(30_000)
    url = serve(file_server, "/te/v1/files/child1/firmware_update/k", data)
    agent = agent_process(dialect="both", install_command=installer.command())
    agent.wait_serving()
    peer = plugin.peer
    peer.subscribe("te/device/child1/#", 1)
    topic = "te/device/child1///cmd/firmware_update/c8y-mapper-42"
    command = {"status": "init", "name": "fw", "version": "2.0", "remoteUrl": url}
    peer.publish(topic, json.dumps(command).encode(), qos=1, retain=True)

    def statuses() -> list[str]:
        return [json.loads(m.payload)["status"] for m in peer.messages(topic) if m.payload]

    peer.wait_for(lambda: "successful" in statuses(), 20, "te successful")
    assert statuses() == ["init", "executing", "successful"], agent.tail()
    last = json.loads(peer.messages(topic)[-1].payload)
    assert (last["name"], last["version"], last["remoteUrl"]) == ("fw", "2.0", url)
    assert peer.messages(topic)[-1].retain is False  # live delivery; the broker keeps it
    peer.wait_for(lambda: bool(peer.messages("te/device/child1///twin/firmware")), 10, "twin")
    twin = json.loads(peer.messages("te/device/child1///twin/firmware")[-1].payload)
    assert (twin["name"], twin["version"]) == ("fw", "2.0")
    capability = peer.messages("te/device/child1///cmd/firmware_update")
    assert capability and capability[-1].payload == b"{}"
    assert installer.installed("child1") == data
    assert installer.runs()[0]["FW_OP_ID"] == "c8y-mapper-42"


def test_a_queued_request_is_kept_alive_with_executing_while_it_waits(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
) -> None:
    # thin-edge >= 1.1 times an operation out after its last `executing`: a request
    # waiting behind a long one must hear from the agent too, not only the running one.
    slow = image(150_000)
    fast = image(1_000)
    slow_url = serve(file_server, "/slow.bin", slow, Faults(throttle=50_000))  # ~3 s
    fast_url = serve(file_server, "/fast.bin", fast)
    agent = agent_process(install_command=installer.command(), executing_interval=0.5)
    agent.wait_serving()
    plugin.request("child1", "op-long", url=slow_url, sha256=sha(slow))
    plugin.wait_status("op-long", "executing")
    plugin.request("child1", "op-queued", url=fast_url, sha256=sha(fast))
    plugin.wait_status("op-queued", "executing", count=3, timeout=10)
    assert file_server.stats_for("/fast.bin").requests == 0  # still waiting its turn
    assert plugin.wait_final("op-long")["status"] == "successful"
    assert plugin.wait_final("op-queued")["status"] == "successful"


@pytest.mark.parametrize("stamped", ["a week ago", "by an unset clock"])
def test_an_operation_older_than_its_timeout_is_not_resumed_after_a_long_stop(
    agent_process: AgentFactory,
    plugin: Plugin,
    installer: Installer,
    file_server: FaultyFileServer,
    stamped: str,
) -> None:
    # The agent was off for a week in the middle of a download: thin-edge failed the
    # operation long ago, so installing now would leave device and cloud disagreeing.
    data = image(10_000)
    url = serve(file_server, "/fw.bin", data)
    agent = agent_process(start=False, install_command=installer.command())
    request = FirmwareRequest(
        dialect="legacy",
        child_id="child1",
        op_id="op-old",
        attempt=1,
        name="fw",
        version="1",
        url=url,
        sha256=sha(data),
        topic="tedge/child1/commands/req/firmware_update",
    )
    # (A device without a real-time clock stamps records in 1970 until NTP sets the time:
    # such an age is unknown, and the operation is resumed rather than failed.)
    when = time.time() - 7 * 24 * 3600 if stamped == "a week ago" else 42.0
    Journal(agent.data_dir / "journal").put(
        OperationRecord(request, Phase.DOWNLOADING, updated_at=when)
    )
    agent.start()
    final = plugin.wait_final("op-old")
    if stamped == "a week ago":
        assert final["status"] == "failed"
        assert "expired" in final["reason"] and "operation_timeout" in final["reason"]
        assert installer.runs() == []
        assert file_server.stats_for("/fw.bin").requests == 0
    else:
        assert final["status"] == "successful", agent.tail()
        assert len(installer.runs()) == 1
