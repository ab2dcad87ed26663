"""The supervisor: one nursery owning the MQTT client, per-child workers, shared downloads.

Owns what happens to a request between the broker and an :class:`~trio_fwagent.operation.
Operation`:

- subscribes (QoS 1, persistent session) to each child's request topics in the configured
  dialect(s), parses each message, answers a malformed one with ``failed`` when it has a
  readable id (and only logs it otherwise), and never lets one bad message stop serving;
- dedupes by operation id through the journal: a request that is queued or running is
  joined (``executing`` re-sent), a finished one gets its recorded final status again, so
  the installer never runs twice for one id;
- runs one operation at a time per child (the rest queued) and children concurrently;
- shares one download between children asking for the same file at the same time
  (:class:`SharedDownloads`, a single flight keyed by sha256 or URL);
- recovers at start: DOWNLOADING/RECEIVED operations resume (their partial file resumes),
  INSTALLING ones are reported failed, unacknowledged finals are re-sent.

It does not parse payloads itself (:mod:`trio_fwagent.contract`), speak MQTT
(:mod:`trio_fwagent.mqtt`), do HTTP (:mod:`trio_fwagent.download`) or decide how one
operation runs (:mod:`trio_fwagent.operation`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from trio_fwagent.config import Config
from trio_fwagent.contract import (
    DIALECTS,
    Dialect,
    FirmwareRequest,
    InvalidRequest,
    operation_key,
    registration_messages,
)
from trio_fwagent.download import DownloadError, DownloadResult, Progress, RetryPolicy, download
from trio_fwagent.download.verify import file_sha256
from trio_fwagent.journal import Journal, OperationRecord, Phase, age_of
from trio_fwagent.logs import log_event
from trio_fwagent.mqtt.client import Message, MqttClient, MqttSettings
from trio_fwagent.operation import (
    RESTARTED_DURING_INSTALL,
    CommandInstaller,
    CopyInstaller,
    Installer,
    Operation,
    OperationSettings,
    StatusReporter,
)

__all__ = [
    "Agent",
    "SharedDownloads",
    "build_installer",
    "download_name",
    "mqtt_settings",
    "operation_settings",
]

log = logging.getLogger(__name__)

#: Finished operations are remembered this long (re-sent requests get their final status).
KEEP_FINISHED_FOR = 30 * 24 * 3600.0
HOUSEKEEPING_INTERVAL = 24 * 3600.0
JOURNAL_RETRY_INTERVAL = 60.0  # final statuses a full disk refused are journaled again
KEEP_LEFTOVER_DOWNLOADS_FOR = 24 * 3600.0  # a failed download may be requested again
#: At shutdown, how long subscriptions wait for the MQTT client to disconnect.
_GOODBYE_WAIT = 5.0
#: Requests waiting per child beyond the running one.
MAX_QUEUED = 64


class DownloadFn(Protocol):
    """The signature of :func:`trio_fwagent.download.download` that the agent uses."""

    def __call__(
        self,
        url: str,
        dest: Path,
        *,
        sha256: str | None = ...,
        retry: RetryPolicy = ...,
        stall_timeout: float = ...,
        on_progress: Callable[[Progress], None] | None = ...,
    ) -> Awaitable[DownloadResult]: ...


def mqtt_settings(config: Config) -> MqttSettings:
    """The MQTT client settings for ``config`` (persistent session: requests queue at the
    broker while the agent is away)."""
    return MqttSettings(
        host=config.mqtt_host,
        port=config.mqtt_port,
        transport=config.mqtt_transport,
        ws_path=config.mqtt_ws_path,
        tls=config.mqtt_tls,
        ca_file=config.mqtt_ca_file,
        cert_file=config.mqtt_cert_file,
        key_file=config.mqtt_key_file,
        server_name=config.mqtt_server_name,
        client_id=config.mqtt_client_id,
        keepalive=config.mqtt_keepalive,
        clean_session=False,
        username=config.mqtt_username,
        password=config.mqtt_password,
    )


def operation_settings(config: Config) -> OperationSettings:
    """The per-operation settings for ``config``."""
    return OperationSettings(
        operation_timeout=config.operation_timeout,
        install_timeout=config.install_timeout,
        executing_interval=config.executing_interval,
        allowed_hosts=config.allowed_hosts,
    )


def build_installer(config: Config) -> Installer:
    """``install_command`` if set, else the built-in copy to ``install_target``."""
    if config.install_command:
        return CommandInstaller(config.install_command)
    assert config.install_target is not None  # config validation guarantees one of them
    return CopyInstaller(config.install_target)


def download_key(request: FirmwareRequest) -> str:
    """What identifies "the same file": its sha256 when known, else its URL."""
    return f"sha256:{request.sha256}" if request.sha256 else f"url:{request.url}"


def download_name(request: FirmwareRequest) -> str:
    """A file name for the request's download, derived from a hash (never from the id,
    the firmware name or anything else chosen by the network)."""
    return hashlib.sha256(download_key(request).encode()).hexdigest()[:32] + ".bin"


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return False


@dataclass(eq=False)
class _Entry:
    """One file wanted by one or more operations."""

    key: str
    dest: Path
    users: int = 0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    result: DownloadResult | None = None
    error: BaseException | None = None
    flight_done: trio.Event | None = None
    scope: trio.CancelScope | None = None
    tried_urls: set[str] = field(default_factory=set)


class SharedDownloads:
    """Single-flight downloads: operations wanting the same file share one transfer.

    Each file is kept while at least one operation holds a :meth:`lease` on it; when the
    last one lets go it is deleted (unless ``keep``). A transfer no operation wants any
    more is cancelled; its partial file stays for a later resume. A complete file left by
    a crash is verified and reused by the operation that resumes (:meth:`_reuse`).

    Args:
        directory: where downloads live (created 0700).
        retry: the downloader's retry policy.
        stall_timeout: seconds without body bytes before a read counts as stalled.
        keep: keep completed downloads after use.
        download_fn: the downloader (tests inject fakes).
    """

    def __init__(
        self,
        directory: Path,
        *,
        retry: RetryPolicy,
        stall_timeout: float,
        keep: bool = False,
        download_fn: DownloadFn | None = None,
    ) -> None:
        self.directory = directory
        self._retry = retry
        self._stall_timeout = stall_timeout
        self._keep = keep
        self._download: DownloadFn = download_fn or download
        self._entries: dict[str, _Entry] = {}
        self._draining: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.transfers = 0  # number of transfers started (for tests and logs)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the transfer tasks until cancelled."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def lease(
        self, request: FirmwareRequest, on_progress: Callable[[Progress], None]
    ) -> AsyncIterator[Path]:
        """Yields the path of the verified file, downloading it (or joining a download)."""
        key = download_key(request)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(key, self.directory / download_name(request))
            self._entries[key] = entry
        else:
            log_event(
                log, "joining a download in progress", child=request.child_id, op=request.op_id
            )
        entry.users += 1
        entry.listeners.append(on_progress)
        try:
            yield await self._ensure(entry, request)
        finally:
            entry.listeners.remove(on_progress)
            entry.users -= 1
            if entry.users == 0:
                self._release(entry)

    def _release(self, entry: _Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if entry.scope is not None:
            entry.scope.cancel()  # nobody waits for it any more
        if not self._keep and entry.result is not None:
            with contextlib.suppress(OSError):
                entry.dest.unlink()
                log_event(log, "download removed", file=entry.dest.name)

    async def _ensure(self, entry: _Entry, request: FirmwareRequest) -> Path:
        while True:
            if entry.result is not None:
                return entry.result.path
            if entry.error is not None:
                if request.url in entry.tried_urls:
                    raise entry.error
                # thin-edge gives each child its own link to a file: another child's dead
                # link (a resumed operation whose cached file was cleaned up) must not
                # fail this one. Same sha256, so the partial file is resumed.
                log_event(
                    log,
                    "shared download failed; trying this request's own URL",
                    child=request.child_id,
                    op=request.op_id,
                    error=entry.error,
                )
                entry.error = None
                entry.flight_done = None
            if entry.flight_done is None:
                # A transfer of the same file being cancelled must end before a new one
                # touches its partial file.
                draining = self._draining.get(entry.key)
                if draining is not None:
                    await draining.wait()
                if entry.flight_done is None:
                    entry.flight_done = trio.Event()
                    assert self._nursery is not None, "SharedDownloads.run() is not running"
                    self._nursery.start_soon(self._transfer, entry, request)
            await entry.flight_done.wait()

    async def _transfer(self, entry: _Entry, request: FirmwareRequest) -> None:
        assert entry.flight_done is not None
        finished = self._draining[entry.key] = trio.Event()

        def fan_out(progress: Progress) -> None:
            for listener in list(entry.listeners):
                listener(progress)

        entry.tried_urls.add(request.url)

        try:
            with trio.CancelScope() as entry.scope:
                if entry.users == 0:
                    entry.scope.cancel()  # everyone left before the transfer began
                try:
                    reused = await self._reuse(entry, request)
                    if reused is not None:
                        entry.result = reused
                    else:
                        self.transfers += 1
                        entry.result = await self._download(
                            request.url,
                            entry.dest,
                            sha256=request.sha256,
                            retry=self._retry,
                            stall_timeout=self._stall_timeout,
                            on_progress=fan_out,
                        )
                except (DownloadError, OSError) as exc:
                    entry.error = exc
                except Exception as exc:
                    log.error("download crashed", exc_info=True)
                    entry.error = DownloadError(
                        f"internal error: {type(exc).__name__}: {exc}", permanent=False
                    )
            if entry.result is None and entry.error is None:
                entry.error = DownloadError("download was cancelled", permanent=False)
        finally:
            entry.scope = None
            entry.flight_done.set()
            finished.set()
            if self._draining.get(entry.key) is finished:
                del self._draining[entry.key]

    def sweep(self, wanted: Iterable[str], *, older_than: float = 0.0) -> int:
        """Deletes leftovers in the download directory; returns how many files went.

        A leftover is a partial file (and its sidecar) of an operation that failed or was
        abandoned, or a complete image nobody holds (unless ``keep``). Files of downloads in
        progress and the names in ``wanted`` (operations about to resume) stay, and so does
        anything modified less than ``older_than`` seconds ago (a failed download may be
        requested again soon and resume).
        """
        keep = set(wanted) | {entry.dest.name for entry in self._entries.values()}
        cutoff = time.time() - older_than
        removed = 0
        try:
            paths = list(self.directory.iterdir())
        except FileNotFoundError:
            return 0
        for path in paths:
            base = path.name.split(".part", 1)[0]
            complete = path.name == base
            if base in keep or (complete and self._keep):
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except OSError:
                continue
            removed += 1
            log_event(log, "download leftover removed", file=path.name)
        return removed

    async def _reuse(self, entry: _Entry, request: FirmwareRequest) -> DownloadResult | None:
        """A complete, matching file kept from before (keep_downloads, or a restart)."""
        if request.sha256 is None or not entry.dest.is_file():
            return None
        # Read-only, so a shutdown need not wait for a multi-GiB hash to finish.
        digest = await trio.to_thread.run_sync(file_sha256, entry.dest, abandon_on_cancel=True)
        if digest != request.sha256:
            with contextlib.suppress(OSError):
                entry.dest.unlink()
            return None
        log_event(log, "reusing verified download", file=entry.dest.name)
        size = entry.dest.stat().st_size
        return DownloadResult(entry.dest, size, digest, 0, 0, 0, 0.0)


def _warn_if_changed(
    earlier: FirmwareRequest, request: FirmwareRequest, fields: dict[str, Any]
) -> None:
    """A re-sent request is answered as the operation it copies; say so if it differs."""
    changed = [
        name
        for name in ("url", "sha256", "name", "version")
        if getattr(earlier, name) != getattr(request, name)
    ]
    if changed:
        log_event(
            log,
            "request re-sent with other values; answering for the operation as first "
            "received (send a new id for a new update)",
            logging.WARNING,
            **fields,
            changed=",".join(changed),
        )


class ChildWorker:
    """Runs one child's operations, one at a time, in arrival order.

    Queued requests are kept alive too: thin-edge (>= 1.1) times an operation out an hour
    after its last ``executing``, and a request may wait behind a long one.

    Args:
        child_id: the child device.
        make_operation: builds the operation for a request.
        reporter: publishes statuses and writes the journal.
        executing_interval: seconds between re-sent ``executing`` for queued requests.
    """

    def __init__(
        self,
        child_id: str,
        make_operation: Callable[[FirmwareRequest, bool], Operation],
        reporter: StatusReporter,
        *,
        executing_interval: float = 300.0,
    ) -> None:
        self.child_id = child_id
        self._make_operation = make_operation
        self._reporter = reporter
        self._executing_interval = executing_interval
        self._send, self._receive = trio.open_memory_channel[tuple[FirmwareRequest, bool]](
            MAX_QUEUED
        )
        self.active: dict[str, FirmwareRequest] = {}  # queued or running, by request.key
        self._submit_lock = trio.Lock()
        self.running: str | None = None
        self._keepalive_unacked: set[str] = set()  # keys whose keepalive is on its way

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Takes operations off the queue until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_queued_alive, nursery)
            task_status.started()
            await self._work()

    async def _keep_queued_alive(self, nursery: trio.Nursery) -> None:
        """Re-sends ``executing`` for each queued request (the running one does its own).

        At most one per request is on its way: while the broker is away the previous one
        still waits in the client's outbox, and a pile of stale ``executing`` statuses
        flushed at reconnection would tell thin-edge nothing more.
        """
        while True:
            await trio.sleep(self._executing_interval)
            for key, request in list(self.active.items()):
                if key != self.running and key not in self._keepalive_unacked:
                    self._keepalive_unacked.add(key)
                    nursery.start_soon(self._keepalive, key, request)

    async def _keepalive(self, key: str, request: FirmwareRequest) -> None:
        try:
            await self._reporter.publish_logged(
                DIALECTS[request.dialect].status(request, "executing")
            )
        finally:
            self._keepalive_unacked.discard(key)

    async def _work(self) -> None:
        async with self._receive:
            async for request, resumed in self._receive:
                self.running = request.key
                try:
                    await self._make_operation(request, resumed).run()
                except Exception:
                    log.error(
                        "operation raised",
                        exc_info=True,
                        extra={"fields": {"child": self.child_id, "op": request.op_id}},
                    )
                finally:
                    self.running = None
                    self.active.pop(request.key, None)

    def enqueue(self, request: FirmwareRequest, *, resumed: bool) -> bool:
        """Queues ``request``; False if the queue is full."""
        try:
            self._send.send_nowait((request, resumed))
        except trio.WouldBlock:
            return False
        self.active[request.key] = request
        return True

    async def submit(self, request: FirmwareRequest) -> None:
        """Handles a request that arrived over MQTT (new, re-sent or already finished)."""
        fields: dict[str, Any] = {"child": request.child_id, "op": request.op_id}
        log_event(
            log,
            "request received",
            **fields,
            attempt=request.attempt,
            name=request.name,
            version=request.version,
        )
        # One request at a time per child: two copies of a request (attempt 1 and a quick
        # re-send) must not both find "no record" and both enqueue.
        async with self._submit_lock:
            await self._submit(request, fields)

    async def _submit(self, request: FirmwareRequest, fields: dict[str, Any]) -> None:
        # "active" first: an operation that is queued or running owns its journal record,
        # which may change while we read it (it could finish meanwhile: acting on a stale
        # INSTALLING or DOWNLOADING record would install twice or overwrite the final
        # status). Not active means nobody else writes the record while we look.
        was_active = request.key in self.active
        record = await self._reporter.get(request.child_id, request.key)
        earlier = self.active.get(request.key) or (record.request if record else None)
        if earlier is not None:
            _warn_if_changed(earlier, request, fields)
        if was_active and (record is None or record.phase is not Phase.FINISHED):
            # (A running operation may already have journaled its final status while it
            # waits for the broker's acknowledgement: then that final is the answer.)
            active = self.active.get(request.key)
            if active is not None:
                state = "running" if self.running == request.key else "queued"
                log_event(log, f"request re-sent; joining the {state} operation", **fields)
                self._reporter.executing_soon(active)
                return
            # It finished while we read: its record is final now.
            record = await self._reporter.get(request.child_id, request.key)
        if record is not None and record.phase is Phase.FINISHED:
            log_event(
                log,
                "request re-sent; re-sending its final status",
                **fields,
                status=record.final_status,
            )
            self._reporter.send_final(record)
            return
        if record is not None and record.phase is Phase.INSTALLING:
            # Not running, but it was installing: the device state is unknown.
            await self._reporter.finish(record.request, "failed", RESTARTED_DURING_INSTALL)
            return
        if record is not None:
            request = record.request  # a journaled RECEIVED/DOWNLOADING one: resume it
        else:
            try:
                await self._reporter.put(
                    OperationRecord(request, Phase.RECEIVED, updated_at=time.time())
                )
            except OSError as exc:
                # Without a record the installer could run twice; refuse, and say why.
                await self._reporter.finish(
                    request, "failed", f"cannot write the operation journal: {exc}"
                )
                return
        self._reporter.executing_soon(request)
        if not self.enqueue(request, resumed=False):
            await self._reporter.finish(
                request,
                "failed",
                f"too many queued requests for child {self.child_id} (max {MAX_QUEUED})",
            )
        elif self.running is not None:
            log_event(log, "request queued", **fields, behind=self.running)


class Agent:
    """``trio-fwagent run``: serves firmware update requests for the configured children.

    Args:
        config: the validated configuration.
        download_fn: the downloader (tests may inject one).
    """

    def __init__(self, config: Config, *, download_fn: DownloadFn | None = None) -> None:
        self.config = config
        self.client = MqttClient(mqtt_settings(config))
        self.dialects: list[Dialect] = (
            [DIALECTS["legacy"], DIALECTS["te"]]
            if config.dialect == "both"
            else [DIALECTS[config.dialect]]
        )
        self.data_dir = config.data_dir
        self.journal = Journal(self.data_dir / "journal")
        self.downloads = SharedDownloads(
            self.data_dir / "downloads",
            retry=RetryPolicy(max_attempts=config.download_attempts),
            stall_timeout=config.stall_timeout,
            keep=config.keep_downloads,
            download_fn=download_fn,
        )
        self.installer = build_installer(config)
        self.settings = operation_settings(config)
        self.workers: dict[str, ChildWorker] = {}
        self._client_stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves until cancelled; ``task_status.started()`` once connected and subscribed.

        Order matters: the journal is recovered before any request is handled (so a
        re-sent request finds its resumed operation), and the subscriptions are registered
        before the first connect (a persistent session delivers queued requests right
        after CONNACK).
        """
        _make_private_dir(self.data_dir)
        log_event(
            log,
            "agent starting",
            children=",".join(self.config.child_id),
            broker=f"{self.config.mqtt_transport}://{self.config.mqtt_host}:"
            f"{self.config.mqtt_port}",
            dialect=self.config.dialect,
            data_dir=str(self.data_dir),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.downloads.run)
            reporter = StatusReporter(self.client, self.journal, nursery)
            for child in self.config.child_id:
                worker = ChildWorker(
                    child,
                    self._operation_factory(reporter),
                    reporter,
                    executing_interval=self.settings.executing_interval,
                )
                self.workers[child] = worker
                await nursery.start(worker.run)
            await self._recover(reporter)  # its publishes wait in the client's outbox
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._journal_retry, reporter)
            topics = [
                (child, dialect, topic)
                for child in self.config.child_id
                for dialect in self.dialects
                for topic in dialect.subscriptions(child)
            ]
            for child, dialect, topic in topics:
                await nursery.start(self._listen, child, dialect, topic, reporter)
            await nursery.start(self._run_client)
            if any(d.name == "te" for d in self.dialects):
                self._register_te_children(reporter)
            await self.client.wait_connected()
            # A subscribe while connected returns after its SUBACK, which the broker sends
            # after handling the SUBSCRIBE of our connect: from here on, requests reach us.
            async with self.client.subscribe(topics[0][2], qos=1):
                pass
            log_event(log, "serving", children=",".join(self.config.child_id))
            task_status.started()

    def _operation_factory(
        self, reporter: StatusReporter
    ) -> Callable[[FirmwareRequest, bool], Operation]:
        def make(request: FirmwareRequest, resumed: bool) -> Operation:
            return Operation(
                request,
                reporter=reporter,
                fetcher=self.downloads,
                installer=self.installer,
                settings=self.settings,
                resumed=resumed,
            )

        return make

    async def _recover(self, reporter: StatusReporter) -> None:
        await trio.to_thread.run_sync(self.journal.rename_records)
        pruned = await trio.to_thread.run_sync(self.journal.prune, KEEP_FINISHED_FOR)
        records = await trio.to_thread.run_sync(self.journal.records)
        resuming: set[str] = set()
        for record in records:
            req = record.request
            fields: dict[str, Any] = {
                "child": req.child_id,
                "op": req.op_id,
                "phase": record.phase.value,
            }
            worker = self.workers.get(req.child_id)
            if worker is None or req.dialect not in {d.name for d in self.dialects}:
                if record.phase is not Phase.FINISHED:
                    log_event(
                        log,
                        "journal record for a child or dialect not served; ignored",
                        logging.WARNING,
                        **fields,
                    )
                continue
            if record.phase is Phase.FINISHED:
                if not record.final_acked:
                    log_event(
                        log,
                        "re-sending unacknowledged final status",
                        **fields,
                        status=record.final_status,
                    )
                    reporter.send_final(record)
            elif record.phase is Phase.INSTALLING:
                log_event(
                    log,
                    "operation was installing when the agent stopped",
                    logging.WARNING,
                    **fields,
                )
                await reporter.finish(req, "failed", RESTARTED_DURING_INSTALL)
            elif (age := age_of(record, time.time())) is not None and (
                age > self.settings.operation_timeout
            ):
                # thin-edge gave up on it long ago and would ignore a late "successful":
                # installing now would leave the device and the cloud disagreeing. (An
                # age that an unset clock makes unknown is not taken for expiry.)
                log_event(log, "operation expired while the agent was stopped", **fields)
                await reporter.finish(
                    req,
                    "failed",
                    f"operation expired while the agent was not running (started "
                    f"{age:.0f} s ago, operation_timeout "
                    f"{self.settings.operation_timeout:g} s); request the update again",
                )
            elif not worker.enqueue(req, resumed=True):
                await reporter.finish(
                    req, "failed", f"too many queued requests for child {req.child_id}"
                )
            else:
                log_event(log, "resuming operation", **fields)
                resuming.add(download_name(req))
        log_event(log, "journal recovered", records=len(records), pruned=pruned)
        try:
            swept = await trio.to_thread.run_sync(self.downloads.sweep, resuming)
        except OSError as exc:
            log_event(log, "cannot remove download leftovers", logging.WARNING, error=exc)
        else:
            if swept:
                log_event(log, "download leftovers removed", files=swept)

    async def _housekeeping(self) -> None:
        """Once a day: prune old journal records and leftover partial downloads."""
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await trio.to_thread.run_sync(self.journal.prune, KEEP_FINISHED_FOR)
                await trio.to_thread.run_sync(
                    functools.partial(
                        self.downloads.sweep, (), older_than=KEEP_LEFTOVER_DOWNLOADS_FOR
                    )
                )
            except OSError as exc:  # tidying up must never stop the agent
                log_event(log, "housekeeping failed", logging.WARNING, error=exc)

    async def _journal_retry(self, reporter: StatusReporter) -> None:
        """Every minute: journal the final statuses a full disk refused, once it can."""
        while True:
            await trio.sleep(JOURNAL_RETRY_INTERVAL)
            await reporter.retry_unjournaled()

    async def _run_client(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.client.run(task_status=task_status)
        finally:
            self._client_stopped.set()

    async def _listen(
        self,
        child: str,
        dialect: Dialect,
        topic: str,
        reporter: StatusReporter,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # manual_ack: the broker gets its PUBACK only once a request is journaled (or
        # answered): one still in this channel or being handled when the agent stops or
        # dies is re-sent by the broker after the next start, never lost.
        async with self.client.subscribe(topic, qos=1, manual_ack=True) as messages:
            log_event(
                log,
                "subscription registered",
                logging.DEBUG,
                child=child,
                dialect=dialect.name,
                topic=topic,
            )
            task_status.started()
            try:
                async for message in messages:
                    try:
                        await self._on_message(child, dialect, message, reporter)
                    except Exception:
                        # Never stop serving because of one message.
                        log.error(
                            "request handling crashed",
                            exc_info=True,
                            extra={"fields": {"child": child, "topic": message.topic}},
                        )
                    message.ack()  # (not when cancelled: then the broker re-sends it)
            finally:
                # Leaving the subscription while connected would UNSUBSCRIBE and so empty
                # our persistent session: requests sent while we are down would be lost.
                # At shutdown, let the client disconnect first.
                with trio.move_on_after(_GOODBYE_WAIT, shield=True):
                    await self._client_stopped.wait()

    async def _on_message(
        self, child: str, dialect: Dialect, message: Message, reporter: StatusReporter
    ) -> None:
        try:
            request = dialect.parse(child, message.topic, message.payload)
        except InvalidRequest as exc:
            log_event(
                log,
                "invalid request",
                logging.WARNING,
                child=child,
                op=exc.op_id,
                reason=exc.reason,
                topic=message.topic,
            )
            if exc.op_id is not None:
                worker = self.workers[child]
                key = operation_key(dialect.name, exc.op_id)
                known = key in worker.active or (await reporter.get(child, key)) is not None
                if known:
                    # A garbled copy of a request we know must not fail the real one.
                    log_event(
                        log, "invalid copy of a known operation ignored", child=child, op=exc.op_id
                    )
                    return
            answer = dialect.invalid(child, message.topic, exc)
            if answer is not None:
                reporter.publish_soon(answer)
            return
        if request is not None:
            await self.workers[child].submit(request)

    def _register_te_children(self, reporter: StatusReporter) -> None:
        for child in self.config.child_id:
            for message in registration_messages(child):
                reporter.publish_soon(message)


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
