"""One operation's lifecycle under cancel scopes, the single-flight download sharing, the
request dedupe of a child worker, and the log line format. Units with fakes for the
publisher, fetcher and installer (a real journal on tmp_path); ``autojump_clock`` where
timing matters."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_fwagent.agent import ChildWorker, SharedDownloads, download_name
from trio_fwagent.contract import FirmwareRequest
from trio_fwagent.download import DownloadError, DownloadResult, Progress, RetryPolicy
from trio_fwagent.install import InstallError
from trio_fwagent.journal import Journal, OperationRecord, Phase
from trio_fwagent.logs import format_value, log_event, setup_logging
from trio_fwagent.operation import (
    STOPPED_DURING_INSTALL,
    Operation,
    OperationSettings,
    StatusReporter,
    host_allowed,
)

SHA = "a" * 64
DEFAULT_RETRY = RetryPolicy()


def make_request(
    op_id: str = "op1",
    *,
    child: str = "c1",
    sha256: str | None = SHA,
    url: str = "http://files.local/fw.bin",
) -> FirmwareRequest:
    return FirmwareRequest(
        dialect="legacy",
        child_id=child,
        op_id=op_id,
        attempt=1,
        name="fw",
        version="1.0",
        url=url,
        sha256=sha256,
        topic=f"tedge/{child}/commands/req/firmware_update",
    )


class FakePublisher:
    """Records publishes; while ``down`` is set, publishes wait (a broker that is away)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.up = trio.Event()
        self.up.set()
        self.on_publish: Callable[[dict[str, Any]], None] | None = None

    def go_down(self) -> None:
        self.up = trio.Event()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        await self.up.wait()
        body = json.loads(payload)
        if self.on_publish is not None:
            self.on_publish(body)
        self.sent.append((topic, body))
        await trio.lowlevel.checkpoint()

    def statuses(self) -> list[str]:
        return [body["status"] for _, body in self.sent]


class RecordingJournal(Journal):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.phases: list[str] = []

    def put(self, record: OperationRecord) -> None:
        self.phases.append(record.phase.value + ("+acked" if record.final_acked else ""))
        super().put(record)


class FakeFetcher:
    def __init__(
        self, tmp_path: Path, *, delay: float = 0.0, error: Exception | None = None
    ) -> None:
        self.file = tmp_path / "image.bin"
        self.file.write_bytes(b"firmware")
        self.delay = delay
        self.error = error
        self.calls = 0

    @asynccontextmanager
    async def lease(
        self, request: FirmwareRequest, on_progress: Callable[[Progress], None]
    ) -> AsyncIterator[Path]:
        self.calls += 1
        on_progress(Progress(0, 100, 0.0, 0, 0, 1))
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        on_progress(Progress(100, 100, 1e6, 0, 0, 1))
        yield self.file


class FakeInstaller:
    description = "fake"

    def __init__(self, *, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.installed: list[tuple[str, bytes]] = []
        self.cancelled = False

    async def install(self, request: FirmwareRequest, file: Path) -> None:
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        self.installed.append((request.op_id, file.read_bytes()))  # noqa: ASYNC240


class Harness:
    def __init__(self, tmp_path: Path, nursery: trio.Nursery) -> None:
        self.publisher = FakePublisher()
        self.journal = RecordingJournal(tmp_path / "journal")
        self.reporter = StatusReporter(self.publisher, self.journal, nursery, in_thread=False)
        self.tmp_path = tmp_path

    def operation(
        self,
        *,
        fetcher: Any = None,
        installer: Any = None,
        resumed: bool = False,
        request: FirmwareRequest | None = None,
        **settings: Any,
    ) -> Operation:
        defaults: dict[str, Any] = {"executing_interval": 10.0, "final_ack_wait": 5.0}
        return Operation(
            request or make_request(),
            reporter=self.reporter,
            fetcher=fetcher or FakeFetcher(self.tmp_path),
            installer=installer or FakeInstaller(),
            settings=OperationSettings(**{**defaults, **settings}),
            resumed=resumed,
        )

    async def start_worker(self, nursery: trio.Nursery, installer: FakeInstaller) -> ChildWorker:
        """A running worker for child "c1" whose operations install with ``installer``."""

        def factory(request: FirmwareRequest, resumed: bool) -> Operation:
            return self.operation(request=request, installer=installer)

        worker = ChildWorker("c1", factory, self.reporter)
        await nursery.start(worker.run)
        return worker


@pytest.fixture
async def harness(tmp_path: Path, nursery: trio.Nursery) -> Harness:
    return Harness(tmp_path, nursery)


async def test_happy_path_journals_each_phase_before_it_and_reports_success(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    installer = FakeInstaller()
    record = await harness.operation(installer=installer).run()
    assert record.final_status == "successful"
    assert record.final_acked
    assert installer.installed == [("op1", b"firmware")]
    assert harness.journal.phases == ["downloading", "installing", "finished", "finished+acked"]
    assert harness.publisher.sent == [
        ("tedge/c1/commands/res/firmware_update", {"id": "op1", "status": "successful"})
    ]
    assert harness.journal.get("c1", "op1") == record


async def test_executing_is_resent_every_interval_while_working(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    op = harness.operation(
        fetcher=FakeFetcher(harness.tmp_path, delay=25.0), executing_interval=10.0
    )
    await op.run()
    assert harness.publisher.statuses() == ["executing", "executing", "successful"]


async def test_resumed_operation_sends_executing_at_once(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await harness.operation(resumed=True).run()
    assert harness.publisher.statuses() == ["executing", "successful"]


async def test_download_error_becomes_failed_with_its_reason(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    fetcher = FakeFetcher(
        harness.tmp_path, error=DownloadError("HTTP 404 Not Found for http://x", permanent=True)
    )
    installer = FakeInstaller()
    record = await harness.operation(fetcher=fetcher, installer=installer).run()
    assert record.final_status == "failed"
    assert record.reason == "download failed: HTTP 404 Not Found for http://x"
    assert installer.installed == []
    assert harness.publisher.sent[-1][1] == {
        "id": "op1",
        "status": "failed",
        "reason": record.reason,
    }


async def test_installer_failure_reason_is_reported(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    error = InstallError("installer exited with code 3: flash: bad image")
    record = await harness.operation(installer=FakeInstaller(error=error)).run()
    assert record.final_status == "failed"
    assert record.reason == "install failed: installer exited with code 3: flash: bad image"
    assert harness.journal.phases[:2] == ["downloading", "installing"]


async def test_install_timeout_cancels_the_installer_and_fails(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    installer = FakeInstaller(delay=1000.0)
    record = await harness.operation(installer=installer, install_timeout=30.0).run()
    assert installer.cancelled
    assert record.final_status == "failed"
    assert record.reason is not None
    assert "installer timed out after 30 s (install_timeout)" in record.reason


async def test_operation_deadline_fails_with_the_phase_it_was_in(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    fetcher = FakeFetcher(harness.tmp_path, delay=1000.0)
    start = trio.current_time()
    record = await harness.operation(fetcher=fetcher, operation_timeout=60.0).run()
    assert trio.current_time() - start == pytest.approx(60.0)
    assert record.final_status == "failed"
    assert record.reason == ("operation timed out after 60 s while downloading (operation_timeout)")
    # executing kept coming while it waited (interval 10 s): 5 of them, then failed.
    assert harness.publisher.statuses() == ["executing"] * 5 + ["failed"]


async def test_a_host_outside_allowed_hosts_fails_before_downloading(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    fetcher = FakeFetcher(harness.tmp_path)
    record = await harness.operation(fetcher=fetcher, allowed_hosts=("good.example",)).run()
    assert fetcher.calls == 0
    assert record.reason is not None
    assert "'files.local' is not allowed" in record.reason


async def test_unexpected_exception_is_a_failed_status_not_a_crash(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    installer = FakeInstaller(error=RuntimeError("oops"))
    record = await harness.operation(installer=installer).run()
    assert record.final_status == "failed"
    assert record.reason == "internal error while installing: RuntimeError: oops"


async def test_final_status_is_journaled_before_it_is_published(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[Any] = []

    def check(body: dict[str, Any]) -> None:
        rec = harness.journal.get("c1", "op1")
        seen.append((body["status"], rec.phase if rec else None))

    harness.publisher.on_publish = check
    await harness.operation().run()
    assert seen == [("successful", Phase.FINISHED)]


async def test_unacknowledged_final_waits_bounded_then_is_marked_when_acked(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    harness.publisher.go_down()
    start = trio.current_time()
    record = await harness.operation(final_ack_wait=5.0).run()
    assert trio.current_time() - start == pytest.approx(5.0)  # bounded, not forever
    assert record.final_status == "successful"
    assert not record.final_acked
    assert not harness.journal.get("c1", "op1").final_acked  # type: ignore[union-attr]
    harness.publisher.up.set()  # the broker is back: the queued publish completes
    await trio.sleep(1)
    assert harness.publisher.statuses() == ["successful"]
    assert harness.journal.get("c1", "op1").final_acked  # type: ignore[union-attr]


async def test_shutdown_while_downloading_leaves_it_resumable_and_silent(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    op = harness.operation(fetcher=FakeFetcher(harness.tmp_path, delay=1000.0))
    with trio.move_on_after(3):
        await op.run()
    record = harness.journal.get("c1", "op1")
    assert record is not None and record.phase is Phase.DOWNLOADING
    assert harness.publisher.sent == []


async def test_shutdown_while_installing_reports_failed(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    installer = FakeInstaller(delay=1000.0)
    with trio.move_on_after(3):
        await harness.operation(installer=installer).run()
    assert installer.cancelled
    record = harness.journal.get("c1", "op1")
    assert record is not None and record.phase is Phase.FINISHED
    assert record.reason == STOPPED_DURING_INSTALL
    assert harness.publisher.statuses() == ["failed"]


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://a.example/x", (), True),
        ("http://a.example/x", ("a.example",), True),
        ("http://A.EXAMPLE:8000/x", ("a.example",), True),
        ("http://b.example/x", ("a.example",), False),
        ("http://evil-a.example/x", ("a.example",), False),
        ("http://x.a.example/x", ("*.a.example",), True),
        ("http://a.example/x", ("*.a.example",), True),
        ("http://xa.example/x", ("*.a.example",), False),
        ("http://x.a.example/x", (".a.example",), True),
    ],
)
def test_host_allowed(url: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(url, allowed) is ok


# ----------------------------------------------------------------- shared downloads


class FakeDownload:
    """Writes ``content`` to dest after ``delay`` (counted); can be told to fail."""

    def __init__(self, content: bytes = b"image", delay: float = 10.0) -> None:
        self.content = content
        self.delay = delay
        self.started = 0
        self.cancelled = 0
        self.error: Exception | None = None
        self.dead_urls: set[str] = set()  # these answer 404
        self.urls: list[str] = []

    async def __call__(
        self,
        url: str,
        dest: Path,
        *,
        sha256: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        stall_timeout: float = 60.0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> DownloadResult:
        self.started += 1
        self.urls.append(url)
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        if url in self.dead_urls:
            raise DownloadError(f"HTTP 404 Not Found for {url}", permanent=True)
        if on_progress is not None:
            on_progress(Progress(len(self.content), len(self.content), 1.0, 0, 0, 1))
        dest.write_bytes(self.content)  # noqa: ASYNC240 (tiny test file)
        digest = hashlib.sha256(self.content).hexdigest()
        return DownloadResult(dest, len(self.content), digest, len(self.content), 0, 0, 1.0)


@pytest.fixture
async def shared(tmp_path: Path, nursery: trio.Nursery) -> tuple[SharedDownloads, FakeDownload]:
    fake = FakeDownload()
    downloads = SharedDownloads(
        tmp_path / "dl", retry=RetryPolicy(), stall_timeout=5, download_fn=fake
    )
    await nursery.start(downloads.run)
    return downloads, fake


async def _use(
    downloads: SharedDownloads, request: FirmwareRequest, hold: float, seen: list[bytes]
) -> None:
    async with downloads.lease(request, lambda p: None) as path:
        seen.append(path.read_bytes())
        await trio.sleep(hold)


async def test_same_sha256_at_the_same_time_is_downloaded_once(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    downloads, fake = shared
    seen: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(_use, downloads, make_request("a", child="c1"), 1.0, seen)
        await trio.sleep(3)  # the second arrives mid-download, from another URL
        n.start_soon(_use, downloads, make_request("b", child="c2", url="http://m/x"), 5.0, seen)
    assert fake.started == 1
    assert seen == [b"image", b"image"]
    # The first user let go while the second still held it; removed after the last.
    assert not (downloads.directory / download_name(make_request())).exists()


async def test_different_files_download_separately(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    downloads, fake = shared
    seen: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(_use, downloads, make_request("a", sha256="1" * 64), 0.0, seen)
        n.start_soon(_use, downloads, make_request("b", sha256="2" * 64), 0.0, seen)
    assert fake.started == 2
    assert download_name(make_request(sha256="1" * 64)) != download_name(
        make_request(sha256="2" * 64)
    )


async def test_one_waiter_leaving_does_not_cancel_the_others_download(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    downloads, fake = shared
    seen: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(_use, downloads, make_request("b", child="c2"), 0.0, seen)
        with trio.move_on_after(2):  # this operation hits its deadline mid-download
            await _use(downloads, make_request("a"), 0.0, seen)
    assert fake.started == 1 and fake.cancelled == 0
    assert seen == [b"image"]


async def test_download_nobody_waits_for_is_cancelled(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    downloads, fake = shared
    with trio.move_on_after(2):
        await _use(downloads, make_request("a"), 0.0, [])
    await trio.sleep(1)
    assert fake.cancelled == 1
    # A later request starts a new transfer (which a real downloader would resume).
    seen: list[bytes] = []
    await _use(downloads, make_request("a"), 0.0, seen)
    assert fake.started == 2 and seen == [b"image"]


async def test_download_error_reaches_every_waiter(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    downloads, fake = shared
    fake.error = DownloadError("checksum mismatch", permanent=True)
    errors: list[str] = []

    async def use(op: str) -> None:
        try:
            await _use(downloads, make_request(op), 0.0, [])
        except DownloadError as exc:
            errors.append(exc.reason)

    async with trio.open_nursery() as n:
        n.start_soon(use, "a")
        n.start_soon(use, "b")
    assert errors == ["checksum mismatch", "checksum mismatch"]
    assert fake.started == 1


async def test_a_dead_link_of_one_child_does_not_fail_another_childs_own_link(
    shared: tuple[SharedDownloads, FakeDownload], autojump_clock: trio.testing.MockClock
) -> None:
    """thin-edge gives each child its own URL for the same file: A's link is gone (a
    resumed operation), B's works; B joins A's transfer, then tries its own link."""
    downloads, fake = shared
    dead, alive = "http://gw/file-transfer/A/fw", "http://gw/file-transfer/B/fw"
    fake.dead_urls.add(dead)
    outcome: dict[str, str] = {}

    async def use(op: str, child: str, url: str) -> None:
        try:
            seen: list[bytes] = []
            await _use(downloads, make_request(op, child=child, url=url), 0.0, seen)
            outcome[child] = seen[0].decode()
        except DownloadError as exc:
            outcome[child] = exc.reason

    async with trio.open_nursery() as n:
        n.start_soon(use, "a", "A", dead)
        await trio.sleep(1)
        n.start_soon(use, "b", "B", alive)
    assert fake.urls == [dead, alive]
    assert outcome["B"] == "image"
    # A either failed with its own 404 or got the same file through B's link.
    assert outcome["A"] in ("image", f"HTTP 404 Not Found for {dead}")


async def test_keep_downloads_keeps_and_reuses_a_verified_file(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDownload(content=b"kept image")
    sha = hashlib.sha256(b"kept image").hexdigest()
    downloads = SharedDownloads(
        tmp_path / "dl", retry=RetryPolicy(), stall_timeout=5, keep=True, download_fn=fake
    )
    await nursery.start(downloads.run)
    await _use(downloads, make_request("a", sha256=sha), 0.0, [])
    path = downloads.directory / download_name(make_request(sha256=sha))
    assert path.read_bytes() == b"kept image"
    await _use(downloads, make_request("b", sha256=sha), 0.0, [])
    assert fake.started == 1  # the kept file was verified and reused


def test_download_name_never_contains_network_strings() -> None:
    request = make_request("../../etc/passwd", sha256=None, url="http://x/../../evil name")
    name = download_name(request)
    assert "/" not in name and ".." not in name and "evil" not in name
    assert name.endswith(".bin") and len(name) == 36


# ----------------------------------------------------------------- child worker dedupe


async def test_resent_request_of_a_finished_operation_gets_its_final_status_again(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    made: list[str] = []

    def factory(request: FirmwareRequest, resumed: bool) -> Operation:
        made.append(request.op_id)
        return harness.operation(request=request)

    worker = ChildWorker("c1", factory, harness.reporter)
    harness.journal.put(
        OperationRecord(
            make_request("done"),
            Phase.FINISHED,
            final_status="failed",
            reason="r",
            final_acked=True,
        )
    )
    await worker.submit(make_request("done"))
    await trio.sleep(1)
    assert made == []
    assert harness.publisher.sent == [
        ("tedge/c1/commands/res/firmware_update", {"id": "done", "status": "failed", "reason": "r"})
    ]


async def test_resent_request_while_queued_or_running_joins_it(
    harness: Harness, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    installer = FakeInstaller()
    made: list[str] = []

    def factory(request: FirmwareRequest, resumed: bool) -> Operation:
        made.append(request.op_id)
        return harness.operation(
            request=request, installer=installer, fetcher=FakeFetcher(harness.tmp_path, delay=20.0)
        )

    worker = ChildWorker("c1", factory, harness.reporter)
    await nursery.start(worker.run)
    await worker.submit(make_request("x"))
    await worker.submit(make_request("y"))  # queued behind x
    await trio.sleep(5)
    assert worker.running == "x" and set(worker.active) == {"x", "y"}
    await worker.submit(make_request("x"))  # re-sent while running
    await worker.submit(make_request("y"))  # re-sent while queued
    await trio.sleep(100)
    assert made == ["x", "y"]
    assert [op for op, _ in installer.installed] == ["x", "y"]
    sent = [(body["id"], body["status"]) for _, body in harness.publisher.sent]
    assert sent.count(("x", "executing")) >= 2 and sent.count(("y", "executing")) >= 2
    assert sent.count(("x", "successful")) == 1 and sent.count(("y", "successful")) == 1
    # Operations of one child run one at a time: x finished before y started installing.
    assert sent.index(("x", "successful")) < sent.index(("y", "successful"))
    await worker.submit(make_request("x"))  # after success: no second install
    await trio.sleep(1)
    assert [op for op, _ in installer.installed] == ["x", "y"]
    assert sent.count(("x", "successful")) == 1
    assert [(b["id"], b["status"]) for _, b in harness.publisher.sent].count(
        ("x", "successful")
    ) == 2


async def test_one_id_in_both_dialects_is_two_operations(
    harness: Harness, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """``dialect = both``: legacy id "42" and te/ command "42" are not copies of each other."""
    installer = FakeInstaller()
    worker = await harness.start_worker(nursery, installer)
    legacy = make_request("42")
    te = dataclasses.replace(
        legacy, dialect="te", sha256=None, topic="te/device/c1//cmd/firmware_update/42"
    )
    await worker.submit(legacy)
    await trio.sleep(10)
    await worker.submit(te)
    await trio.sleep(10)
    assert [op for op, _ in installer.installed] == ["42", "42"]
    for request in (legacy, te):
        record = harness.journal.get("c1", request.key)
        assert record is not None and record.request == request
        assert record.final_status == "successful"


class FullFromFinishedJournal(RecordingJournal):
    """The disk fills up between the INSTALLING and the FINISHED record (until ``free``)."""

    full = True

    def put(self, record: OperationRecord) -> None:
        if self.full and record.phase is Phase.FINISHED:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().put(record)


async def test_published_final_status_stands_when_the_journal_could_not_record_it(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    harness = Harness(tmp_path, nursery)
    journal = FullFromFinishedJournal(tmp_path / "full")
    harness.journal = journal
    harness.reporter = StatusReporter(harness.publisher, journal, nursery, in_thread=False)
    installer = FakeInstaller()
    worker = await harness.start_worker(nursery, installer)
    await worker.submit(make_request("x"))
    await trio.sleep(20)
    record = journal.get("c1", "x")
    assert record is not None and record.phase is Phase.INSTALLING  # the disk said no
    await worker.submit(make_request("x"))  # thin-edge re-sends it (attempt 2)
    await trio.sleep(20)
    statuses = [(b["status"], b.get("reason")) for _, b in harness.publisher.sent]
    assert statuses == [("executing", None), ("successful", None), ("successful", None)]
    assert len(installer.installed) == 1
    journal.full = False  # space again: the remembered final record reaches the journal
    assert await harness.reporter.retry_unjournaled() == 0
    record = journal.get("c1", "x")
    assert record is not None and record.final_status == "successful"


async def test_a_resent_request_with_other_values_is_answered_as_the_first_and_logged(
    harness: Harness,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    installer = FakeInstaller()
    worker = await harness.start_worker(nursery, installer)
    await worker.submit(make_request("x"))
    await trio.sleep(10)
    with caplog.at_level(logging.WARNING, logger="trio_fwagent.agent"):
        await worker.submit(make_request("x", url="http://files.local/other.bin"))
        await trio.sleep(1)
    assert len(installer.installed) == 1
    (warning,) = [r for r in caplog.records if "re-sent with other values" in r.getMessage()]
    assert warning.fields["changed"] == "url"  # type: ignore[attr-defined]


async def test_retrying_a_refused_final_record_never_puts_an_older_one_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    journal = FullFromFinishedJournal(tmp_path / "full")
    reporter = StatusReporter(FakePublisher(), journal, nursery, in_thread=False)
    final = OperationRecord(make_request("x"), Phase.FINISHED, "successful", updated_at=1.0)
    with pytest.raises(OSError):
        await reporter.put(final)  # refused: remembered in memory
    journal.full = False
    acked = final.replace(final_acked=True)
    async with reporter._lock:  # both writers queue up: the acknowledgement first
        nursery.start_soon(reporter.put, acked)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reporter.retry_unjournaled)
        await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    assert journal.get("c1", "x") == acked


async def test_queued_request_keepalive_does_not_pile_up_while_the_broker_is_away(
    harness: Harness, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    def factory(request: FirmwareRequest, resumed: bool) -> Operation:
        return harness.operation(
            request=request,
            fetcher=FakeFetcher(harness.tmp_path, delay=1000.0),
            executing_interval=10.0,
        )

    worker = ChildWorker("c1", factory, harness.reporter, executing_interval=10.0)
    await nursery.start(worker.run)
    await worker.submit(make_request("x"))
    await worker.submit(make_request("y"))  # queued behind x for 1000 s
    await trio.sleep(1)
    harness.publisher.go_down()
    await trio.sleep(200)  # 20 keepalive intervals with the broker away
    sent_while_down = len(harness.publisher.sent)
    harness.publisher.up.set()
    await trio.sleep(1)
    flushed = [(b["id"], b["status"]) for _, b in harness.publisher.sent[sent_while_down:]]
    # One keepalive for y waited for the broker, not twenty.
    assert flushed.count(("y", "executing")) == 1
    await trio.sleep(30)  # keepalives go on after the broker is back
    later = [(b["id"], b["status"]) for _, b in harness.publisher.sent[sent_while_down:]]
    assert later.count(("y", "executing")) >= 3


# ----------------------------------------------------------------- logs


def test_text_log_is_one_key_value_line_per_event() -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    try:
        log_event(
            logging.getLogger("trio_fwagent.test"),
            "final status",
            op="a b",
            reason="line1\nline2",
            pct=50,
            status=None,
        )
        logging.getLogger("trio_fwagent.test").debug("hidden")
    finally:
        setup_logging("warning", "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("ts=")
    assert 'level=info logger=trio_fwagent.test event="final status"' in line
    assert 'op="a b" reason="line1\\nline2" pct=50 status=-' in line


def test_json_log_lines_parse_and_carry_fields() -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream=stream)
    try:
        log_event(logging.getLogger("trio_fwagent.test"), "download progress", pct=10)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("trio_fwagent.test").exception("crashed")
    finally:
        setup_logging("warning", "text")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "download progress" and first["pct"] == 10
    assert first["level"] == "info"
    assert second["event"] == "crashed" and "ValueError: boom" in second["exc"]


def test_format_value_quotes_only_when_needed() -> None:
    assert format_value("abc-1.2/x") == "abc-1.2/x"
    assert format_value("") == '""'
    assert format_value('say "hi"') == '"say \\"hi\\""'
    assert format_value(True) == "true"
    assert format_value(1.5) == "1.5"


class FullDiskJournal(RecordingJournal):
    """A journal whose writes fail with ENOSPC from phase ``full_from`` on."""

    def __init__(self, directory: Path, full_from: Phase) -> None:
        super().__init__(directory)
        self.full_from = full_from
        self.order = [Phase.RECEIVED, Phase.DOWNLOADING, Phase.INSTALLING, Phase.FINISHED]

    def put(self, record: OperationRecord) -> None:
        if self.order.index(record.phase) >= self.order.index(self.full_from):
            raise OSError(errno.ENOSPC, "No space left on device")
        super().put(record)


@pytest.mark.parametrize(
    ("full_from", "status"), [(Phase.FINISHED, "successful"), (Phase.INSTALLING, "failed")]
)
async def test_a_journal_that_cannot_be_written_does_not_swallow_the_final_status(
    harness: Harness,
    autojump_clock: trio.testing.MockClock,
    full_from: Phase,
    status: str,
) -> None:
    harness.reporter = StatusReporter(
        harness.publisher,
        FullDiskJournal(harness.tmp_path / "full", full_from),
        harness.reporter._nursery,
        in_thread=False,
    )
    installer = FakeInstaller()
    record = await harness.operation(installer=installer).run()
    assert record.final_status == status
    assert harness.publisher.statuses()[-1] == status
    if status == "failed":
        # Could not record that it was about to install: it must not install.
        assert installer.installed == []
        assert "No space left on device" in (record.reason or "")


class SlowReadingReporter(StatusReporter):
    """Reads the journal, then takes ``delay`` seconds to return it (a busy SD card)."""

    delay = 10.0

    async def get(self, child_id: str, op_id: str) -> OperationRecord | None:
        record = await super().get(child_id, op_id)
        await trio.sleep(self.delay)
        return record


async def test_a_resent_request_never_acts_on_a_record_that_went_stale_while_read(
    harness: Harness, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The operation finishes while the re-sent request's journal read is under way: the
    # record read says DOWNLOADING, but acting on it would install a second time.
    reporter = SlowReadingReporter(harness.publisher, harness.journal, nursery, in_thread=False)
    installer = FakeInstaller()

    def factory(request: FirmwareRequest, resumed: bool) -> Operation:
        return Operation(
            request,
            reporter=reporter,
            fetcher=FakeFetcher(harness.tmp_path, delay=5.0),
            installer=installer,
            settings=OperationSettings(executing_interval=100.0),
        )

    worker = ChildWorker("c1", factory, reporter)
    await nursery.start(worker.run)
    await worker.submit(make_request("x"))  # reads "no record" for 10 s, then queues x
    await trio.sleep(2)  # x is downloading (5 s)
    await worker.submit(make_request("x"))  # re-sent: x finishes during a journal read
    await trio.sleep(50)
    assert [op for op, _ in installer.installed] == ["x"]
    statuses = [body["status"] for _, body in harness.publisher.sent if body["id"] == "x"]
    # It finished during the read, so the re-sent request gets the final status again.
    assert statuses[-1] == "successful" and "failed" not in statuses
