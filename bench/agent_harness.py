"""Running ``trio-fwagent run`` under a benchmark, and watching it through mosquitto.

Owns: the agent's benchmark configuration file, starting the agent as a child process
and stopping it (SIGTERM, its peak RSS read from /proc just before), and an independent
MQTT peer (paho-mqtt in its own thread) that publishes legacy ``tedge/...`` firmware
requests and timestamps the status messages the agent sends back.

Must not touch: the agent's code or its data directory contents (only creates the dir).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    REPO_DIR,
    BenchError,
    Skipped,
    fwagent_cli,
    fwagent_env,
    fwagent_feature,
    read_vm_hwm_kib,
    stop_process,
)


def require_agent() -> list[str]:
    """The CLI argv prefix, if `trio-fwagent run` is written; Skipped/BenchError if not."""
    for module in ("trio_fwagent/agent.py", "trio_fwagent/cli/run.py"):
        if not (REPO_DIR / module).exists():
            raise Skipped(f"{module} is not written yet")
    fwagent_feature("trio_fwagent.agent", "Agent")
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise Skipped("paho-mqtt is not installed (pip install paho-mqtt)") from None
    cli = fwagent_cli()
    if cli is None:
        raise Skipped("no trio-fwagent command in this environment")
    return cli


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


@dataclass
class AgentProcess:
    """A running agent; ``stop()`` returns (exit code, peak RSS in KiB)."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    stopped: tuple[int, int] | None = None

    def peak_rss_kib(self) -> int:
        """VmHWM of the agent process so far."""
        return read_vm_hwm_kib(self.proc.pid) or 0

    def check_alive(self) -> None:
        """BenchError with the log's tail if the agent has exited."""
        if self.proc.poll() is not None:
            raise BenchError(f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the agent's log."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return "\n".join("    " + line for line in text[-lines:])
        return ""

    def stop(self) -> tuple[int, int]:
        """SIGTERM (bounded shutdown), reap; the peak RSS is read just before the signal."""
        if self.stopped is None:
            rss = self.peak_rss_kib()
            stop_process(self.proc, grace=10.0)
            self.stopped = (self.proc.returncode, rss)
        return self.stopped


@contextlib.contextmanager
def agent_process(
    cli: Sequence[str], workdir: Path, mqtt_port: int, children: Sequence[str], **extra: object
) -> Iterator[AgentProcess]:
    """Run ``trio-fwagent run --config`` with a private data dir under ``workdir``."""
    data_dir = workdir / "agent-data"
    settings: dict[str, object] = {
        "child_id": list(children),
        "mqtt_host": "127.0.0.1",
        "mqtt_port": mqtt_port,
        "mqtt_client_id": f"bench-agent-{time.monotonic_ns()}",
        "data_dir": str(data_dir),
        "dialect": "legacy",
        "install_command": shutil.which("true") or "/bin/true",
        "log_level": "info",
        **extra,
    }
    conf = workdir / "agent.toml"
    conf.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    log_path = workdir / "agent.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*cli, "run", "--config", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=fwagent_env(),
            start_new_session=True,
        )
    agent = AgentProcess(proc, log_path)
    try:
        yield agent
    finally:
        agent.stop()


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """One status message from the agent, with the time it arrived here."""

    child: str
    op_id: str
    status: str
    reason: str | None
    at: float


@dataclass
class Observer:
    """A paho-mqtt client: publishes requests, records the agent's statuses."""

    port: int
    seen: list[StatusSeen] = field(default_factory=list)
    _index: dict[tuple[str, str], dict[str, StatusSeen]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: Any = None

    def start(self) -> None:
        """Connect, subscribe to every child's response topic, wait for SUBACK."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-observer-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect("127.0.0.1", self.port)
        # paho leaves Nagle's algorithm on: each request would wait for the ACK of the
        # observer's previous segment (up to 40 ms), timing the observer, not the agent.
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        client.subscribe("tedge/+/commands/res/firmware_update", qos=1)
        if not subscribed.wait(10):
            raise BenchError("the MQTT observer could not subscribe")
        self._client = client

    def stop(self) -> None:
        """Disconnect and stop paho's thread."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        at = time.perf_counter()
        try:
            body = json.loads(msg.payload)
            child = msg.topic.split("/")[1]
            seen = StatusSeen(child, str(body["id"]), str(body["status"]), body.get("reason"), at)
        except (ValueError, KeyError, IndexError):
            return
        with self._cond:
            self.seen.append(seen)
            self._index.setdefault((seen.child, seen.op_id), {}).setdefault(seen.status, seen)
            self._cond.notify_all()

    def request(self, child: str, op_id: str, url: str, sha256: str, *, attempt: int = 1) -> float:
        """Publish one legacy firmware request (QoS 1); return the time just before."""
        payload = json.dumps(
            {
                "id": op_id,
                "attempt": attempt,
                "name": "bench-firmware",
                "version": op_id,
                "url": url,
                "sha256": sha256,
            }
        )
        at = time.perf_counter()
        self._client.publish(f"tedge/{child}/commands/req/firmware_update", payload, qos=1)
        return at

    def wait_for(self, predicate: Callable[[list[StatusSeen]], bool], limit: float) -> bool:
        """Wait until ``predicate(seen)`` holds; False after ``limit`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.seen), limit)

    def finished(self, child: str, op_id: str) -> Callable[[list[StatusSeen]], bool]:
        """A wait_for predicate: one operation has a final status."""
        return lambda _: self.first(child, op_id, FINAL) is not None

    def first(self, child: str, op_id: str, statuses: Sequence[str]) -> StatusSeen | None:
        """The first status in ``statuses`` seen for one operation."""
        with self._cond:
            found = [s for k, s in self._index.get((child, op_id), {}).items() if k in statuses]
        return min(found, key=lambda s: s.at) if found else None

    def wait_all_finished(self, ops: Sequence[tuple[str, str]], limit: float) -> bool:
        """Wait until every (child, op_id) has a final status; False after ``limit`` s."""
        waits = [self.finished(child, op_id) for child, op_id in ops]
        return self.wait_for(lambda seen: all(w(seen) for w in waits), limit)


FINAL = ("successful", "failed")


@contextlib.contextmanager
def observer(port: int) -> Iterator[Observer]:
    """A started Observer, stopped at the end."""
    obs = Observer(port)
    obs.start()
    try:
        yield obs
    finally:
        obs.stop()


def wait_until_serving(
    obs: Observer, agent: AgentProcess, child: str, url: str, sha256: str, limit: float = 30.0
) -> None:
    """Re-publish one warm-up request until the agent answers it, then wait for its end.

    The agent subscribes some time after it starts; a request published before that is
    lost, so the same request (same id: the agent dedupes it) is sent every 0.25 s.
    """
    op_id = f"warmup-{time.monotonic_ns()}"
    deadline = time.monotonic() + limit
    while obs.first(child, op_id, ("executing", *FINAL)) is None:
        agent.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"the agent did not answer within {limit} s:\n{agent.log_tail()}")
        obs.request(child, op_id, url, sha256)
        obs.wait_for(lambda seen: any(s.op_id == op_id for s in seen), 0.25)
    if not obs.wait_for(lambda _: obs.first(child, op_id, FINAL) is not None, limit):
        raise BenchError(f"the warm-up operation did not finish:\n{agent.log_tail()}")
    final = obs.first(child, op_id, FINAL)
    if final is None or final.status != "successful":
        reason = final.reason if final else None
        raise BenchError(f"the warm-up operation failed: {reason}\n{agent.log_tail()}")


def tmp_workdir(base: Path, prefix: str) -> Path:
    """A fresh directory for one agent run."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
