"""One firmware update operation: executing -> download -> verify -> install -> final status.

Owns the lifecycle of a single request under cancel scopes, and the guarantee that every
operation that ends (success, error, timeout) leaves a final status in the journal and
on its way to the broker:

- the phase is journaled before it starts (RECEIVED -> DOWNLOADING -> INSTALLING ->
  FINISHED);
- ``executing`` is re-sent every ``executing_interval`` while the operation works;
- an operation deadline (``operation_timeout``) covers the whole operation, the download
  has its stall timeout, the installer its own ``install_timeout``;
- whatever ends the operation early, its last act is :meth:`StatusReporter.finish`:
  journal the final ``failed`` with a reason a person can act on, then a shielded, bounded
  wait for the broker's acknowledgement (the MQTT client keeps the message in its outbox
  and re-sends it after reconnects; the journal's ``final_acked`` is set when it arrives,
  and an unacknowledged final is re-sent at the next start).

Cancellation from outside (the agent shutting down) is different on purpose: an operation
that is downloading is left journaled as DOWNLOADING so the next start resumes its partial
file; one that is installing is journaled ``failed`` (its installer was killed, the device
state is unknown). Its publish is attempted, but during a shutdown the MQTT client is
usually gone already: the journaled status is then sent at the next start.

This module does not subscribe, parse requests, dedupe re-sent requests, or queue work
(that is :mod:`trio_fwagent.agent`); it does not implement HTTP or the installer hooks (it
calls them through the small protocols below, so it can be tested with fakes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import trio

from trio_fwagent.contract import DIALECTS, FirmwareRequest, StatusMessage, twin_message
from trio_fwagent.download import DownloadError, Progress
from trio_fwagent.install import InstallError, install_copy, installer_env, run_installer
from trio_fwagent.journal import Journal, OperationRecord, Phase
from trio_fwagent.logs import log_event

__all__ = [
    "CommandInstaller",
    "CopyInstaller",
    "Fetcher",
    "FinalDelivery",
    "Installer",
    "Operation",
    "OperationSettings",
    "Publisher",
    "StatusReporter",
    "host_allowed",
    "wait_delivered",
]

log = logging.getLogger(__name__)

FinalStatus = Literal["successful", "failed"]
T = TypeVar("T")

RESTARTED_DURING_INSTALL = (
    "agent restarted during installation; device state unknown (check the device, then "
    "request the update again)"
)
STOPPED_DURING_INSTALL = (
    "agent was stopped during installation and the installer was terminated; device state "
    "unknown (check the device, then request the update again)"
)


class Publisher(Protocol):
    """What an operation needs from the MQTT client (:class:`trio_fwagent.mqtt.MqttClient`)."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publishes; for QoS 1 returns when the broker acknowledged it."""
        ...


class Fetcher(Protocol):
    """Provides a verified local copy of a request's file for as long as it is held."""

    def lease(
        self, request: FirmwareRequest, on_progress: Callable[[Progress], None]
    ) -> AbstractAsyncContextManager[Path]:
        """Downloads (or joins a running download of) the file; yields its path."""
        ...


class Installer(Protocol):
    """Applies a downloaded, verified image to the device."""

    @property
    def description(self) -> str:
        """Names the installer in logs."""
        ...

    async def install(self, request: FirmwareRequest, file: Path) -> None:
        """Installs ``file``; raises InstallError when the device says no."""
        ...


@dataclass(frozen=True, slots=True)
class CommandInstaller:
    """The external installer hook: ``argv`` with FW_* variables in its environment."""

    argv: tuple[str, ...]
    kill_grace: float = 5.0

    @property
    def description(self) -> str:
        return f"command {self.argv[0]}"

    async def install(self, request: FirmwareRequest, file: Path) -> None:
        await run_installer(self.argv, installer_env(request, file), kill_grace=self.kill_grace)


@dataclass(frozen=True, slots=True)
class CopyInstaller:
    """The built-in installer: atomically copies the image to ``target``."""

    target: Path

    @property
    def description(self) -> str:
        return f"copy to {self.target}"

    async def install(self, request: FirmwareRequest, file: Path) -> None:
        await install_copy(file, self.target)


@dataclass(frozen=True, slots=True)
class OperationSettings:
    """The knobs of one operation (from :class:`trio_fwagent.config.Config`).

    Attributes:
        operation_timeout: seconds from start to final status (download + install).
        install_timeout: seconds the installer may run before its process group is killed.
        executing_interval: seconds between re-sent ``executing`` statuses.
        allowed_hosts: download hosts allowed (empty = any); ``.example.com`` or
            ``*.example.com`` also allows subdomains.
        final_ack_wait: how long the operation waits (shielded) for the broker to
            acknowledge its final status before it lets the worker go on; the message
            stays queued and is re-sent either way.
        progress_step: log download progress every this many percent.
    """

    operation_timeout: float = 3600.0
    install_timeout: float = 600.0
    executing_interval: float = 300.0
    allowed_hosts: tuple[str, ...] = ()
    final_ack_wait: float = 5.0
    progress_step: int = 10


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """True if ``url``'s host is in ``allowed_hosts`` (empty = any host is allowed)."""
    allowed = [h.lower() for h in allowed_hosts]
    if not allowed:
        return True
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    for entry in allowed:
        suffix = entry[1:] if entry.startswith("*.") else entry if entry.startswith(".") else ""
        if host == entry or (suffix and (host.endswith(suffix) or host == suffix[1:])):
            return True
    return False


def _fields(request: FirmwareRequest) -> dict[str, Any]:
    return {"child": request.child_id, "op": request.op_id}


class StatusReporter:
    """Publishes statuses and keeps the journal's promise about final ones.

    Publishing is handed to tasks in ``nursery`` (the agent's), so a slow or absent broker
    never blocks a worker. Journal writes are serialised and shielded: once started they
    complete.

    Args:
        publisher: the MQTT client.
        journal: the operation journal.
        nursery: owner of the background publish tasks.
        in_thread: do journal I/O in a worker thread (tests with a mock clock say False:
            autojump would see a thread as idleness).
    """

    def __init__(
        self,
        publisher: Publisher,
        journal: Journal,
        nursery: trio.Nursery,
        *,
        in_thread: bool = True,
    ) -> None:
        self._publisher = publisher
        self._journal = journal
        self._nursery = nursery
        self._lock = trio.Lock()
        self._in_thread = in_thread
        # Final records the journal refused (disk full): kept here so that a re-sent
        # request gets the published answer, not "restarted during installation".
        self._unjournaled: dict[tuple[str, str], OperationRecord] = {}

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._in_thread:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def put(self, record: OperationRecord) -> None:
        """Journals ``record`` (in a worker thread); shielded so it always completes.

        Raises:
            OSError: The journal could not be written. A final record is then still
                remembered in memory (see :meth:`get`) and written by
                :meth:`retry_unjournaled`.
        """
        await self._put(record)

    async def _put(self, record: OperationRecord, *, retrying: bool = False) -> bool:
        key = (record.request.child_id, record.request.key)
        written = False
        with trio.CancelScope(shield=True):
            async with self._lock:
                # Retrying: if it was written or superseded meanwhile, do not put it back.
                if not retrying or self._unjournaled.get(key) is record:
                    try:
                        await self._call(self._journal.put, record)
                    except OSError:
                        if record.phase is Phase.FINISHED:
                            self._unjournaled[key] = record
                        raise
                    self._unjournaled.pop(key, None)
                    written = True
        return written

    async def get(self, child_id: str, key: str) -> OperationRecord | None:
        """Reads one record (None if absent or unreadable); ``key``: ``FirmwareRequest.key``.

        A final record the journal refused wins over what the journal still holds.
        """
        remembered = self._unjournaled.get((child_id, key))
        if remembered is not None:
            await trio.lowlevel.checkpoint()
            return remembered
        return await self._call(self._journal.get, child_id, key)

    async def retry_unjournaled(self) -> int:
        """Tries again to journal the final records the journal refused; returns how
        many are still only in memory."""
        for record in list(self._unjournaled.values()):
            try:
                if await self._put(record, retrying=True):
                    log_event(log, "final status journaled after all", **_fields(record.request))
            except OSError:
                pass
        return len(self._unjournaled)

    async def publish(self, message: StatusMessage) -> None:
        """Publishes ``message`` and waits for the broker (QoS 1); the caller bounds it."""
        await self._publisher.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain
        )

    def publish_soon(self, message: StatusMessage) -> None:
        """Publishes ``message`` from a background task; errors are logged."""
        self._nursery.start_soon(self.publish_logged, message)

    def executing_soon(self, request: FirmwareRequest) -> None:
        """Sends ``executing`` for ``request`` in the background."""
        self.publish_soon(DIALECTS[request.dialect].status(request, "executing"))

    async def publish_logged(self, message: StatusMessage) -> None:
        """Publishes ``message`` and waits for the broker; a failure is logged, not raised."""
        try:
            await self.publish(message)
        except Exception as exc:
            log_event(log, "publish failed", logging.WARNING, topic=message.topic, error=exc)

    async def finish(
        self, request: FirmwareRequest, status: FinalStatus, reason: str | None
    ) -> FinalDelivery:
        """Journals the final status (shielded), then starts publishing it.

        Returns:
            The delivery; the caller decides how long to wait for its acknowledgement.
        """
        record = OperationRecord(
            request, Phase.FINISHED, final_status=status, reason=reason, updated_at=time.time()
        )
        try:
            with trio.CancelScope(shield=True):
                await self.put(record)
        except OSError as exc:
            # A full or failing disk must not swallow the answer thin-edge waits for: it
            # is published anyway (only a restart before the broker acknowledged it
            # could lose it).
            log_event(
                log,
                "cannot journal the final status; publishing it anyway",
                logging.ERROR,
                **_fields(request),
                error=exc,
            )
        level = logging.INFO if status == "successful" else logging.WARNING
        log_event(log, "final status", level, **_fields(request), status=status, reason=reason)
        delivery = self.send_final(record)
        if status == "successful" and request.dialect == "te":
            self.publish_soon(twin_message(request))  # the installed firmware, for the cloud
        return delivery

    def send_final(self, record: OperationRecord) -> FinalDelivery:
        """(Re-)sends a journaled final status from a background task, which waits for the
        broker across reconnects and then marks the record acknowledged in the journal."""
        delivery = FinalDelivery(record)

        async def publish_and_mark() -> None:
            try:
                assert record.final_status is not None
                message = DIALECTS[record.request.dialect].status(
                    record.request, record.final_status, record.reason
                )
                await self.publish(message)
                acked = record.replace(final_acked=True)
                delivery.record = acked
                log_event(log, "final status acknowledged", **_fields(record.request))
                try:
                    await self.put(acked)
                except OSError as exc:  # the next start re-sends it: harmless
                    log_event(
                        log,
                        "cannot journal the acknowledgement",
                        logging.WARNING,
                        **_fields(record.request),
                        error=exc,
                    )
            except Exception as exc:
                log_event(
                    log,
                    "final status not sent",
                    logging.ERROR,
                    **_fields(record.request),
                    error=exc,
                )
            finally:
                delivery.settled.set()

        self._nursery.start_soon(publish_and_mark)
        return delivery


@dataclass(eq=False)
class FinalDelivery:
    """A final status on its way to the broker.

    Attributes:
        record: the journal record (``final_acked`` once the broker acknowledged it).
        settled: set when the broker acknowledged it (or sending failed for good).
    """

    record: OperationRecord
    settled: trio.Event = field(default_factory=trio.Event)

    async def wait_acknowledged(self) -> bool:
        """Waits for :attr:`settled` (bound it with a cancel scope); True if acknowledged."""
        await self.settled.wait()
        return self.record.final_acked


async def wait_delivered(delivery: FinalDelivery, seconds: float) -> OperationRecord:
    """A shielded, bounded wait for ``delivery``'s acknowledgement; the message stays in
    the client's outbox (and the journal says "not acknowledged") if the bound is hit."""
    with trio.move_on_after(seconds, shield=True) as scope:
        await delivery.wait_acknowledged()
    if scope.cancelled_caught:
        log_event(
            log,
            "final status not yet acknowledged; it stays queued",
            logging.WARNING,
            **_fields(delivery.record.request),
            waited=seconds,
        )
    return delivery.record


class Operation:
    """One request's lifecycle; :meth:`run` returns its final journal record.

    Args:
        request: the validated request.
        reporter: publishes statuses and writes the journal.
        fetcher: downloads (shared between children with the same file).
        installer: applies the file.
        settings: timeouts and limits.
        resumed: True when the operation was recovered from the journal at start (it then
            sends ``executing`` itself; a fresh request had it sent on receipt).
    """

    def __init__(
        self,
        request: FirmwareRequest,
        *,
        reporter: StatusReporter,
        fetcher: Fetcher,
        installer: Installer,
        settings: OperationSettings,
        resumed: bool = False,
    ) -> None:
        self.request = request
        self.phase = Phase.RECEIVED
        self._reporter = reporter
        self._fetcher = fetcher
        self._installer = installer
        self._settings = settings
        self._resumed = resumed
        self._next_pct = 0

    async def run(self) -> OperationRecord:
        """Runs the operation to its final status.

        Returns:
            The final journal record.

        Raises:
            trio.Cancelled: cancelled from outside (agent shutdown): see module docstring.
        """
        req = self.request
        status: FinalStatus
        started = trio.current_time()
        log_event(log, "operation started", **_fields(req), resumed=self._resumed, url=req.url)
        try:
            with trio.move_on_after(self._settings.operation_timeout) as deadline:
                status, reason = await self._work_with_heartbeat()
            if deadline.cancelled_caught:
                status, reason = (
                    "failed",
                    (
                        f"operation timed out after {self._settings.operation_timeout:g} s while "
                        f"{self._doing()} (operation_timeout)"
                    ),
                )
        except BaseException:
            # Cancelled from outside (shutdown), or KeyboardInterrupt and the like.
            with trio.CancelScope(shield=True):
                await self._interrupted()
            raise
        delivery = await self._reporter.finish(req, status, reason)
        record = await wait_delivered(delivery, self._settings.final_ack_wait)
        log_event(
            log,
            "operation finished",
            **_fields(req),
            status=status,
            elapsed=round(trio.current_time() - started, 3),
        )
        return record

    def _doing(self) -> str:
        return {
            Phase.RECEIVED: "starting",
            Phase.DOWNLOADING: "downloading",
            Phase.INSTALLING: "installing",
            Phase.FINISHED: "finishing",
        }[self.phase]

    async def _enter(self, phase: Phase) -> None:
        self.phase = phase
        await self._reporter.put(OperationRecord(self.request, phase, updated_at=time.time()))

    async def _work_with_heartbeat(self) -> tuple[FinalStatus, str | None]:
        result: tuple[FinalStatus, str | None] = ("failed", "operation did not run")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            result = await self._work()
            nursery.cancel_scope.cancel()
        return result

    async def _heartbeat(self) -> None:
        """Sends ``executing`` now (if resumed) and then every ``executing_interval``."""
        message = DIALECTS[self.request.dialect].status(self.request, "executing")
        if not self._resumed:
            await trio.sleep(self._settings.executing_interval)
        while True:
            try:
                await self._reporter.publish(message)
                log_event(log, "executing sent", logging.DEBUG, **_fields(self.request))
            except Exception as exc:
                log_event(log, "publish failed", logging.WARNING, topic=message.topic, error=exc)
            await trio.sleep(self._settings.executing_interval)

    async def _work(self) -> tuple[FinalStatus, str | None]:
        """Download and install; every failure becomes ("failed", reason). Only
        cancellation escapes."""
        req = self.request
        try:
            if not host_allowed(req.url, self._settings.allowed_hosts):
                host = urlsplit(req.url).hostname
                return "failed", (
                    f"download host {host!r} is not allowed (allowed_hosts: "
                    f"{', '.join(self._settings.allowed_hosts)})"
                )
            await self._enter(Phase.DOWNLOADING)
            async with self._fetcher.lease(req, self._on_progress) as path:
                log_event(log, "download verified", **_fields(req), sha256=req.sha256)
                await self._enter(Phase.INSTALLING)
                log_event(log, "installing", **_fields(req), installer=self._installer.description)
                with trio.move_on_after(self._settings.install_timeout) as install_scope:
                    await self._installer.install(req, path)
                if install_scope.cancelled_caught:
                    return "failed", (
                        f"installer timed out after {self._settings.install_timeout:g} s "
                        "(install_timeout); its process group was killed"
                    )
                log_event(log, "installed", **_fields(req), version=req.version)
            return "successful", None
        except DownloadError as exc:
            return "failed", f"download failed: {exc.reason}"
        except InstallError as exc:
            return "failed", f"install failed: {exc.reason}"
        except OSError as exc:
            log.warning("operation I/O error", exc_info=True, extra={"fields": _fields(req)})
            return "failed", f"local I/O error while {self._doing()}: {exc}"
        except Exception as exc:
            log.error("operation crashed", exc_info=True, extra={"fields": _fields(req)})
            return "failed", f"internal error while {self._doing()}: {type(exc).__name__}: {exc}"

    def _on_progress(self, progress: Progress) -> None:
        if progress.total:
            pct = math.floor(100 * progress.done / progress.total)
            if pct < self._next_pct:
                return
            step = max(1, self._settings.progress_step)
            self._next_pct = (pct // step + 1) * step
        else:
            mib = progress.done >> 20
            if mib < self._next_pct:
                return
            self._next_pct = mib + 64
            pct = -1
        log_event(
            log,
            "download progress",
            **_fields(self.request),
            done=progress.done,
            total=progress.total,
            pct=pct if pct >= 0 else None,
            rate=int(progress.rate),
            resumes=progress.resumes,
            restarts=progress.restarts,
        )

    async def _interrupted(self) -> None:
        """Called (shielded) when the operation is cancelled from outside."""
        req = self.request
        if self.phase is Phase.INSTALLING:
            # Journaled first: if the publish cannot finish during the shutdown, the next
            # start re-sends it.
            delivery = await self._reporter.finish(req, "failed", STOPPED_DURING_INSTALL)
            await wait_delivered(delivery, min(2.0, self._settings.final_ack_wait))
        else:
            log_event(
                log,
                "operation interrupted; it resumes at the next start",
                logging.WARNING,
                **_fields(req),
                phase=self.phase.value,
            )
