"""The demo: a whole firmware update on one machine, with a flaky link, in seconds.

Owns the orchestration behind ``trio-fwagent demo``: a temporary directory, a generated
firmware image, a private MQTT broker on loopback (mosquitto when installed and able to
serve the chosen transport, else the built-in :class:`~trio_fwagent.testing.broker.
MiniBroker`), the fault-injecting file server, the real agent in-process, and the
simulated thin-edge plugin sending one request. It narrates each step, shows download
progress and every status as it passes, and returns a :class:`DemoSummary`.

It composes existing parts and must not reimplement any of them: no MQTT, HTTP,
download or install logic lives here. Everything it starts listens on 127.0.0.1 only,
lives in one nursery and is stopped (and its directory removed unless kept) on the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import trio

from trio_fwagent.agent import Agent
from trio_fwagent.config import load_config
from trio_fwagent.download import DownloadResult, Progress, download
from trio_fwagent.download.verify import file_sha256
from trio_fwagent.mqtt import MqttClient, MqttSettings
from trio_fwagent.progress import ProgressDisplay, format_bytes
from trio_fwagent.testing.broker import MiniBroker
from trio_fwagent.testing.fileserver import Faults, FaultyFileServer
from trio_fwagent.testing.mosquitto import BrokerStartError, MosquittoBroker, find_mosquitto
from trio_fwagent.testing.plugin import SimulatedPlugin, StatusReceived, request_payload

__all__ = [
    "FAULT_PATTERNS",
    "DemoOptions",
    "DemoSummary",
    "run_demo",
]

log = logging.getLogger(__name__)

Transport = Literal["tcp", "websockets"]
BrokerChoice = Literal["auto", "mosquitto", "builtin"]

#: Fault patterns the demo knows, with what they simulate.
FAULT_PATTERNS: dict[str, str] = {
    "none": "a clean link",
    "drops": "the connection drops every few MiB; the server supports Range, so it resumes",
    "range-less": "drops, and a server that ignores Range (like thin-edge's): clean restarts",
    "stalls": "the link goes silent mid-transfer; the stall timeout reconnects and resumes",
    "mixed": "drops and a stall",
    "corrupt": "one byte is flipped in transit: the checksum catches it, the update fails",
}

STALL_TIMEOUT = 2.0

FIRMWARE_NAME = "demo-firmware"
FIRMWARE_VERSION = "2.0.0"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo should do.

    Attributes:
        size: Image size in bytes.
        faults: One of :data:`FAULT_PATTERNS`.
        transport: MQTT transport between everyone and the broker.
        broker: ``auto`` (mosquitto if it can, else built-in), ``mosquitto`` or ``builtin``.
        rate: Link speed in bytes per second (the server is throttled to it).
        keep: Keep the temporary directory afterwards.
        child_id: The simulated child device.
        workdir: Use this directory instead of a new temporary one.
    """

    size: int = 32 << 20
    faults: str = "drops"
    transport: Transport = "tcp"
    broker: BrokerChoice = "auto"
    rate: int = 8 << 20
    keep: bool = False
    child_id: str = "demo-child"
    workdir: Path | None = None


@dataclass(slots=True)
class DemoSummary:
    """What happened, for the final screen and for tests.

    Attributes:
        succeeded: The plugin saw ``successful`` and the installed file verified.
        final_status: The last status the plugin received (or why there was none).
        reason: Its reason, if any.
        statuses: Every status received, in order, with seconds since the request.
        image_size: Bytes in the generated image.
        bytes_sent: Body bytes the file server sent in total (all attempts).
        requests: HTTP requests the file server answered.
        resumes: Ranged continuations reported by the downloader.
        restarts: Partial files thrown away (server ignored Range, or mismatch).
        installed_verified: The installed file exists and has the image's SHA-256.
        elapsed: Seconds from sending the request to the final status.
        broker: Which broker was used, for the summary.
        workdir: The temporary directory (kept only with ``keep``).
        kept: Whether the directory was left in place.
    """

    succeeded: bool = False
    final_status: str = "none"
    reason: str | None = None
    statuses: list[tuple[float, str]] = field(default_factory=list)
    image_size: int = 0
    bytes_sent: int = 0
    requests: int = 0
    resumes: int = 0
    restarts: int = 0
    installed_verified: bool = False
    elapsed: float = 0.0
    broker: str = ""
    workdir: Path | None = None
    kept: bool = False

    def render(self) -> str:
        """The one-screen summary."""
        ratio = self.bytes_sent / self.image_size if self.image_size else 0.0
        verified = "verified (sha256 matches)" if self.installed_verified else "NOT verified"
        lines = [
            "",
            "== demo summary " + "=" * 46,
            f"result           {'SUCCESS' if self.succeeded else 'FAILED'}"
            + (f" ({self.reason})" if self.reason and not self.succeeded else ""),
            f"final status     {self.final_status}",
            "statuses         "
            + (", ".join(f"{s} @{t:.1f}s" for t, s in self.statuses) or "none received"),
            f"image size       {format_bytes(self.image_size)}",
            f"bytes sent       {format_bytes(self.bytes_sent)} ({ratio:.2f}x the image) "
            f"in {self.requests} HTTP requests",
            f"resumes          {self.resumes} (restarts from 0: {self.restarts})",
            f"installed file   {verified}",
            f"time             {self.elapsed:.1f} s from request to final status",
            f"broker           {self.broker}",
        ]
        if self.workdir is not None:
            lines.append(
                f"files            {self.workdir}" + (" (kept)" if self.kept else " (removed)")
            )
        lines.append("=" * 62)
        return "\n".join(lines)


class _DisplayStream:
    """A text stream for log handlers that prints whole lines through the progress display."""

    def __init__(self, display: ProgressDisplay) -> None:
        self._display = display
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._display.message(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _logs_through(display: ProgressDisplay) -> Any:
    """Route the root logger's stream handlers through ``display`` (no torn bar lines)."""
    stream = _DisplayStream(display)
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            swapped.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, old in swapped:
            handler.setStream(old)


def _write_image(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            digest.update(chunk)
            file.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


@asynccontextmanager
async def _open_broker(
    options: DemoOptions, directory: Path, nursery: trio.Nursery, say: Callable[[str], None]
) -> AsyncIterator[tuple[int, str]]:
    """Start the broker; yield ``(port for the transport, description)``."""
    want_ws = options.transport == "websockets"
    if options.broker != "builtin" and find_mosquitto() is not None:
        broker = MosquittoBroker(directory, websockets=want_ws, tls=False, persistence=False)
        try:
            await trio.to_thread.run_sync(broker.start)
        except BrokerStartError as error:
            if options.broker == "mosquitto":
                raise
            say(f"demo: mosquitto cannot serve {options.transport} here ({error})")
            say("demo: using the built-in broker instead")
        else:
            try:
                port = broker.ws_port if want_ws else broker.tcp_port
                yield port, f"mosquitto ({options.transport}, 127.0.0.1:{port})"
            finally:
                with trio.move_on_after(15, shield=True):
                    await trio.to_thread.run_sync(broker.stop)
            return
    elif options.broker == "mosquitto":
        raise BrokerStartError("mosquitto is not installed")
    mini = MiniBroker(websockets=want_ws)
    await nursery.start(mini.run)
    port = mini.ws_port if want_ws else mini.tcp_port
    yield port, f"built-in Trio broker ({options.transport}, 127.0.0.1:{port})"


async def run_demo(options: DemoOptions, out: TextIO) -> DemoSummary:
    """Run the whole demo, narrating on ``out``; bound it with a cancel scope if needed.

    Returns:
        The summary (also when the update failed: ``succeeded`` says how it went).
    """
    if options.faults not in FAULT_PATTERNS:
        raise ValueError(f"unknown fault pattern {options.faults!r}")
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="trio-fwagent-demo-"))
    summary = DemoSummary(workdir=workdir, kept=options.keep)
    display = ProgressDisplay(out, label="download", interval=2.0)
    try:
        with _logs_through(display):
            await _run(options, workdir, summary, display)
    finally:
        display.finish()
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


async def _run(
    options: DemoOptions, workdir: Path, summary: DemoSummary, display: ProgressDisplay
) -> None:
    say = display.message
    image = workdir / "www" / "firmware.bin"
    target = workdir / "device" / "firmware.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    image_path = f"/tedge/file-transfer/{options.child_id}/firmware_update/demo-image"
    say(f"demo: working in {workdir}")
    sha256 = await trio.to_thread.run_sync(_write_image, image, options.size)
    summary.image_size = options.size
    say(f"demo: generated a {format_bytes(options.size)} image, sha256 {sha256[:16]}...")

    async with (
        trio.open_nursery() as nursery,
        _open_broker(options, workdir / "broker", nursery, say) as (port, broker),
    ):
        summary.broker = broker
        say(f"demo: MQTT broker: {broker}")
        server = FaultyFileServer(
            faults=demo_faults(options.faults, options.size, options.rate, STALL_TIMEOUT)
        )
        await nursery.start(server.run)
        url = server.add_file(image_path, image)
        say(
            f"demo: file server {url} at {format_bytes(options.rate)}/s, "
            f"faults: {options.faults} ({FAULT_PATTERNS[options.faults]})"
        )

        progress = _DemoProgress(display, say)
        agent = Agent(_agent_config(options, port, workdir, target), download_fn=progress.download)
        await nursery.start(agent.run)
        with trio.fail_after(10):
            await agent.client.wait_connected()
        say(f"demo: agent running in-process for child {options.child_id!r}")

        plugin_client = MqttClient(
            MqttSettings(
                port=port,
                transport=options.transport,
                client_id="demo-c8y-firmware-plugin",
                clean_session=True,
                keepalive=30,
            )
        )
        await nursery.start(plugin_client.run)
        with trio.fail_after(10):
            await plugin_client.wait_connected()
        plugin = SimulatedPlugin(plugin_client, options.child_id, resend_after=3.0)
        op_id = "demo-" + os.urandom(4).hex()
        payload = request_payload(op_id, FIRMWARE_NAME, FIRMWARE_VERSION, url, sha256)
        say(f"plugin -> {plugin.request_topic}")
        say(f"          {payload.decode()}")

        def on_status(status: StatusReceived) -> None:
            summary.statuses.append((status.elapsed, status.status))
            reason = f" (reason: {status.reason})" if status.reason else ""
            say(f"plugin <- [{status.elapsed:5.1f}s] status {status.status}{reason}")

        started = time.monotonic()
        outcome = await plugin.update(
            name=FIRMWARE_NAME,
            version=FIRMWARE_VERSION,
            url=url,
            sha256=sha256,
            op_id=op_id,
            on_status=on_status,
        )
        summary.elapsed = time.monotonic() - started
        summary.final_status = outcome.final
        summary.reason = outcome.reason
        for violation in outcome.violations:
            say(f"plugin: rejected a response: {violation}")
        display.finish()
        stats = server.stats_for(image_path)
        summary.bytes_sent, summary.requests = stats.body_bytes, stats.requests
        summary.resumes, summary.restarts = progress.resumes, progress.restarts
        installed = await trio.to_thread.run_sync(_file_sha256, target)
        summary.installed_verified = installed == sha256
        summary.succeeded = outcome.final == "successful" and summary.installed_verified
        nursery.cancel_scope.cancel()


def _agent_config(options: DemoOptions, port: int, workdir: Path, target: Path) -> Any:
    return load_config(
        flags={
            "child_id": (options.child_id,),
            "mqtt_host": "127.0.0.1",
            "mqtt_port": port,
            "mqtt_transport": options.transport,
            "mqtt_client_id": "trio-fwagent-demo",
            "data_dir": str(workdir / "agent"),
            "install_target": str(target),
            "stall_timeout": STALL_TIMEOUT,
            "executing_interval": 5.0,
            "operation_timeout": 120.0,
            "download_attempts": 50,
        },
        env={},
    )


class _DemoProgress:
    """Wraps the downloader the agent uses so the demo can show progress and count resumes."""

    def __init__(self, display: ProgressDisplay, say: Callable[[str], None]) -> None:
        self._display = display
        self._say = say
        self.resumes = 0
        self.restarts = 0
        self._last_done = 0
        self.result: DownloadResult | None = None

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        **kw: Any,
    ) -> DownloadResult:
        def both(progress: Progress) -> None:
            if progress.resumes > self.resumes:
                self._say(
                    f"link:  connection lost after {format_bytes(self._last_done)}; "
                    f"resumed from there with a Range request (resume #{progress.resumes})"
                )
            if progress.restarts > self.restarts:
                self._say(
                    f"link:  connection lost after {format_bytes(self._last_done)}; the "
                    f"server ignores Range, so the download restarted from 0 "
                    f"(restart #{progress.restarts})"
                )
            self.resumes, self.restarts = progress.resumes, progress.restarts
            self._last_done = progress.done
            self._display(progress)
            if on_progress is not None:
                on_progress(progress)

        try:
            self.result = await download(url, dest, on_progress=both, **kw)
        finally:
            self._display.finish()
        self.resumes, self.restarts = self.result.resumes, self.result.restarts
        self._say(
            f"agent: downloaded and verified {format_bytes(self.result.size)} "
            f"({format_bytes(self.result.bytes_received)} received)"
        )
        return self.result


def demo_faults(pattern: str, size: int, rate: float, stall_timeout: float) -> Faults:
    """The file server faults for a :data:`FAULT_PATTERNS` name.

    Drop points are placed off round numbers so that no drop falls exactly at the end.
    """
    quarter = max(size // 4 + 4099, 4099)
    if pattern == "none":
        return Faults(throttle=rate)
    if pattern == "drops":
        return Faults(throttle=rate, drop_every=quarter)
    if pattern == "range-less":
        # drop_every would never let a restart-from-0 download finish: drop once.
        return Faults(
            throttle=rate, ranges=False, etag=False, last_modified=False, drop_at=size * 2 // 5
        )
    if pattern == "stalls":
        return Faults(throttle=rate, stall_at=size // 3, stall_for=stall_timeout + 2.0)
    if pattern == "mixed":
        return Faults(
            throttle=rate, drop_every=quarter, stall_at=size // 2, stall_for=stall_timeout + 2.0
        )
    if pattern == "corrupt":
        return Faults(throttle=rate, corrupt_at=size // 2)
    raise ValueError(f"unknown fault pattern {pattern!r}")
