"""The download loop: HTTP requests, body streaming, retries, verification, final rename.

This module owns the I/O side of a download: it sends each request with httpx, asks
:mod:`~trio_fwagent.download.decisions` what the response means, streams the body in
large reads on the event loop while two worker threads hash and write batches
(:class:`~trio_fwagent.download.pipeline.BodySink`, into a
:class:`~trio_fwagent.download.writer.PartFile`) and another thread has the kernel write
back to disk as it goes, keeps the sidecar current,
sleeps between attempts as the retry budget says, and finally verifies and renames.
Memory stays constant: at most a few batches are in flight.
Timeouts are cancel scopes: one around waiting for response headers and one around
each body read (the stall timeout), never around the whole download. It must not
decide resume semantics itself, nor choose file names from the URL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from trio_fwagent.download.decisions import (
    Complete,
    Fail,
    Refetch,
    Retry,
    RetryBudget,
    Validators,
    Write,
    decide,
    request_headers,
    resume_point,
)
from trio_fwagent.download.model import DownloadError, DownloadResult, Progress, RetryPolicy
from trio_fwagent.download.pipeline import BodySink
from trio_fwagent.download.sidecar import (
    Sidecar,
    load_sidecar,
    remove_quietly,
    save_sidecar,
    sidecar_path,
)
from trio_fwagent.download.transport import create_client
from trio_fwagent.download.writer import (
    PartFile,
    Stopped,
    check_free_space,
    fsync_directory,
    os_error,
)

__all__ = ["download", "redact_url"]

log = logging.getLogger(__name__)

# Bytes handed to the hashing and writing threads per batch (amortises the hand-off) and
# in flight at most between the network and those threads: memory stays constant
# whatever the file size. (1 GiB on 2 cores: 2 or 4 MiB batches within 8 or 12 MiB ran
# equally fast; 2 MiB keeps peak RSS about 5 MiB lower.)
_BATCH_BYTES = 2 << 20
_BUFFER_BYTES = 8 << 20
# fdatasync in the background after this many new bytes (one at a time, so a slow disk
# gets fewer, larger ones). Starting early keeps the disk busy from the first seconds:
# measured on a virtio disk at 1 GiB, 16 MiB left 0.05-0.15 s less for the final fsync
# than 64 MiB.
_SYNC_BYTES = 16 << 20
_FLUSH_INTERVAL = 0.25  # hand a partial batch to the writer at least this often (slow links)
_PROGRESS_INTERVAL = 0.1
_CHECKPOINT_INTERVAL = 1.0
_CLOSE_GRACE = 5.0
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

ProgressCallback = Callable[[Progress], None]
DEFAULT_RETRY_POLICY = RetryPolicy()


async def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    client: httpx.AsyncClient | None = None,
    retry: RetryPolicy = DEFAULT_RETRY_POLICY,
    stall_timeout: float = 60.0,
    on_progress: ProgressCallback | None = None,
    chunk_size: int = 1 << 20,
) -> DownloadResult:
    """Download ``url`` to ``dest``, resumably, verified, atomically.

    Bytes go to ``<dest>.part`` (mode 0600) beside a sidecar ``<dest>.part.json``. A
    later call for the same ``dest`` continues a partial file (re-hashing its prefix),
    with ``Range`` and ``If-Range``; a server that ignores ranges makes it restart
    from byte 0 on the same response. Transient failures are retried as ``retry``
    says. On success the file is fsynced, checked against ``sha256`` (when given) and
    renamed to ``dest``. The partial file and sidecar are kept on cancellation and on
    retryable failures, and removed on a checksum mismatch.

    Args:
        url: http(s) URL, used exactly as given.
        dest: Final path; its directory must exist.
        sha256: Expected lowercase (or uppercase) hex SHA-256, or None to skip the check.
        client: An httpx client to use; by default one from
            :func:`~trio_fwagent.download.transport.create_client` (large socket reads).
        retry: Retry limits.
        stall_timeout: Seconds without a byte (headers or body) before an attempt is
            abandoned and retried.
        on_progress: Called with a :class:`Progress` at most ~10 times a second and once
            at the end, from the event loop; keep it quick.
        chunk_size: Socket read size and the size of the batches handed to the writer.

    Returns:
        The verified file.

    Raises:
        DownloadError: With ``permanent`` telling whether retrying later can help.
    """
    expected = _normalise_sha256(sha256)
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DownloadError(f"invalid URL {url!r}: {exc}", permanent=True) from None
    job = _Download(
        url=url,
        dest=Path(dest),
        expected=expected,
        policy=retry,
        stall_timeout=stall_timeout,
        on_progress=on_progress,
        chunk_size=max(chunk_size, 1 << 16),
    )
    if client is not None:
        return await job.run(client)
    async with create_client(read_size=chunk_size) as own:
        return await job.run(own)


def redact_url(url: str) -> str:
    """The URL without user info and with the query elided, for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?..." if parts.query else "")


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_HEX.match(value):
        raise DownloadError(f"invalid SHA-256 {sha256!r}: need 64 hex digits", permanent=True)
    return value


class _Transient(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(
        self, reason: str, *, retry_after: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status_code = status_code


def _describe_transport_error(exc: httpx.TransportError, shown: str) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect to {shown}: {detail}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"incomplete response from {shown}: {detail}"
    return f"connection to {shown} failed: {detail}"


class _Download:
    """One call of :func:`download`: its state across attempts."""

    def __init__(
        self,
        *,
        url: str,
        dest: Path,
        expected: str | None,
        policy: RetryPolicy,
        stall_timeout: float,
        on_progress: ProgressCallback | None,
        chunk_size: int,
    ) -> None:
        self._url = url
        self._shown = redact_url(url)
        self._dest = dest
        self._part_path = dest.with_name(dest.name + ".part")
        self._sidecar_path = sidecar_path(self._part_path)
        self._expected = expected
        self._policy = policy
        self._stall_timeout = stall_timeout
        self._on_progress = on_progress
        self._batch_size = max(chunk_size, _BATCH_BYTES)
        self._queue_depth = max(1, _BUFFER_BYTES // self._batch_size)
        self._validators = Validators()
        self._part: PartFile | None = None
        self._attempt = 0
        self._resumes = 0
        self._restarts = 0
        self._received = 0
        self._started = 0.0
        self._last_progress = -math.inf
        self._last_checkpoint = -math.inf
        self._saved: Sidecar | None = None
        self._rate_mark: tuple[float, int] | None = None
        self._rate = 0.0

    @property
    def _file(self) -> PartFile:
        assert self._part is not None
        return self._part

    async def run(self, client: httpx.AsyncClient) -> DownloadResult:
        self._started = trio.current_time()
        try:
            await self._open_part_stoppable()
            await self._transfer(client)
            return await self._finish()
        finally:
            if self._part is not None:
                self._part.close()

    # -- opening, finishing ----------------------------------------------------------

    async def _open_part_stoppable(self) -> None:
        """:meth:`_open_part` in a worker thread that a cancellation stops within a block.

        (Re-hashing a 1 GiB partial file from a slow eMMC takes tens of seconds: a
        SIGTERM must not wait for it, nor abandon a thread holding the file open.)
        """
        stop = threading.Event()

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_cancelled)
            try:
                await trio.to_thread.run_sync(self._open_part, stop)
            except Stopped:
                await trio.lowlevel.checkpoint()  # raises the Cancelled that set `stop`
                raise  # pragma: no cover - `stop` is only set by a cancellation
            except Exception as exc:
                failure = exc  # raised below, not wrapped in the nursery's group
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _open_part(self, stop: threading.Event | None = None) -> None:
        """Worker thread: continue or discard what an earlier run left."""
        saved = load_sidecar(self._sidecar_path)
        try:
            part_size = self._part_path.stat().st_size
        except FileNotFoundError:
            part_size = 0
        except OSError as exc:
            raise os_error("inspect", self._part_path, exc) from exc
        point = resume_point(
            part_size=part_size,
            saved_url=saved.url if saved else None,
            saved_sha256=saved.sha256 if saved else None,
            saved=saved.validators if saved else None,
            url=self._url,
            sha256=self._expected,
        )
        if point.discarded is not None:
            log.info("discarding %s: %s", self._part_path, point.discarded)
        self._part = PartFile.open(self._part_path, point.offset, stop)
        self._validators = point.validators
        if point.offset:
            log.info("continuing %s at byte %d of %s", self._shown, point.offset, self._dest)

    async def _finish(self) -> DownloadResult:
        digest = await trio.to_thread.run_sync(self._file.finish)
        self._file.close()
        if self._expected is not None and digest != self._expected:
            await trio.to_thread.run_sync(remove_quietly, self._part_path, self._sidecar_path)
            raise DownloadError(
                f"SHA-256 mismatch: expected {self._expected}, got {digest}", permanent=True
            )
        await trio.to_thread.run_sync(self._install)
        size = self._file.size
        self._report(trio.current_time(), total=size)
        return DownloadResult(
            path=self._dest,
            size=size,
            sha256=digest,
            bytes_received=self._received,
            resumes=self._resumes,
            restarts=self._restarts,
            elapsed=trio.current_time() - self._started,
        )

    def _install(self) -> None:
        """Worker thread: atomic rename into place, sidecar gone, directory synced."""
        try:
            os.replace(self._part_path, self._dest)
        except OSError as exc:
            raise os_error("rename into", self._dest, exc) from exc
        remove_quietly(self._sidecar_path)
        fsync_directory(self._dest.parent)

    # -- attempts ----------------------------------------------------------------------

    async def _transfer(self, client: httpx.AsyncClient) -> None:
        if self._complete_on_disk():
            log.info("%s: partial file already complete and verified", self._dest)
            return
        budget = RetryBudget(self._policy, started_at=self._started, random=random.random)
        high_water = self._file.size
        while True:
            self._attempt += 1
            try:
                done = await self._one_attempt(client)
            except _Transient as exc:
                failure: _Transient | None = exc
                done = False
            else:
                failure = None
            if self._file.size > high_water:
                high_water = self._file.size
                budget.progressed()
            if done:
                return
            if failure is None:
                continue  # a 206 that covered less than the rest: ask for more
            delay = budget.failed(trio.current_time(), retry_after=failure.retry_after)
            if delay is None:
                elapsed = trio.current_time() - self._started
                raise DownloadError(
                    f"{failure.reason} (gave up after {self._attempt} "
                    f"attempt{'' if self._attempt == 1 else 's'} in {elapsed:.0f} s)",
                    permanent=False,
                    status_code=failure.status_code,
                )
            log.warning("%s; retrying in %.1f s (attempt %d)", failure.reason, delay, self._attempt)
            await self._checkpoint()
            await trio.sleep(delay)

    def _complete_on_disk(self) -> bool:
        """A partial file as long as the file whose checksum already matches needs no request."""
        return (
            self._expected is not None
            and self._validators.length is not None
            and self._file.size == self._validators.length
            and self._file.hexdigest() == self._expected
        )

    async def _one_attempt(self, client: httpx.AsyncClient) -> bool:
        """One request. True: the partial file is complete. Raises _Transient to retry."""
        offset = self._file.size
        request = client.build_request(
            "GET", self._url, headers=request_headers(offset, self._validators)
        )
        response: httpx.Response | None = None
        with trio.move_on_after(self._stall_timeout):
            response = await self._send(client, request)
        if response is None:
            raise _Transient(f"no response from {self._shown} in {self._stall_timeout:g} s")
        try:
            return await self._handle(response, offset)
        finally:
            with (
                trio.move_on_after(_CLOSE_GRACE, shield=True),
                contextlib.suppress(httpx.HTTPError),
            ):
                await response.aclose()

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        try:
            return await client.send(request, stream=True, follow_redirects=True)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise DownloadError(f"cannot download {self._shown}: {exc}", permanent=True) from None
        except httpx.TransportError as exc:
            raise _Transient(_describe_transport_error(exc, self._shown)) from None
        except httpx.HTTPError as exc:  # too many redirects and the like
            raise DownloadError(f"cannot download {self._shown}: {exc}", permanent=True) from None

    async def _handle(self, response: httpx.Response, offset: int) -> bool:
        decision = decide(
            offset,
            self._validators,
            response.status_code,
            response.headers,
            url=self._shown,
            now=time.time(),
        )
        match decision:
            case Complete():
                log.info("%s: server says the partial file is complete", self._dest)
                return True
            case Fail(reason=reason, status_code=status):
                raise DownloadError(reason, permanent=True, status_code=status)
            case Retry(reason=reason, retry_after=retry_after, status_code=status):
                raise _Transient(reason, retry_after=retry_after, status_code=status)
            case Refetch(reason=reason):
                await self._restart(reason, Validators())
                raise _Transient(reason)
            case Write(start=start, validators=validators, restart_reason=why):
                if validators.length is not None:
                    await trio.to_thread.run_sync(
                        check_free_space,
                        self._part_path.parent,
                        validators.length - start,
                        self._file.size - start,
                    )
                if start == 0 and self._file.size > 0:
                    await self._restart(why or "server sent the whole file", validators)
                elif start > 0:
                    self._resumes += 1
                    log.info("resuming %s at byte %d", self._shown, start)
                self._validators = validators
                await self._checkpoint()
                await self._stream_body(response)
                length = self._validators.length
                return length is None or self._file.size >= length
        raise AssertionError(f"unhandled decision {decision!r}")  # pragma: no cover

    async def _restart(self, reason: str, validators: Validators) -> None:
        log.warning("restarting download of %s from byte 0: %s", self._shown, reason)
        await trio.to_thread.run_sync(self._file.restart)
        self._restarts += 1
        self._validators = validators

    # -- the body: network on the event loop, hashing and writing in a thread --------

    async def _stream_body(self, response: httpx.Response) -> None:
        """Receive on the event loop; hash and write in two threads; fdatasync in a third.

        The pump (network reads, batching) hands batches to a
        :class:`~trio_fwagent.download.pipeline.BodySink`, whose threads hash and write
        without waiting for each other; the watcher reports progress as batches finish
        and, every _SYNC_BYTES, starts a flush (the kernel writes back while downloading
        goes on, instead of all at the final fsync).
        """
        sink = BodySink(self._file, max_batches=self._queue_depth)
        write_error: DownloadError | None = None
        read_error: _Transient | None = None
        flushing = False
        flushed = self._file.size

        async def flush(nursery: trio.Nursery, upto: int) -> None:
            nonlocal flushing, write_error
            try:
                await trio.to_thread.run_sync(self._file.sync_data, upto)
            except DownloadError as exc:
                write_error = write_error or exc
                nursery.cancel_scope.cancel()
            finally:
                flushing = False

        async def watch(nursery: trio.Nursery) -> None:
            nonlocal flushing, flushed
            async for _ in sink.done:
                await self._after_write()
                if not flushing and self._file.size - flushed >= _SYNC_BYTES:
                    flushing, flushed = True, self._file.size
                    nursery.start_soon(flush, nursery, flushed)

        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            nursery.start_soon(watch, nursery)
            try:
                await self._pump(response, sink)
            except DownloadError:
                pass  # the writer failed; its error is raised below
            except _Transient as exc:
                read_error = exc
            finally:
                sink.close()
        write_error = sink.error or write_error
        if write_error is not None:
            raise write_error
        if read_error is not None:
            raise read_error

    async def _pump(self, response: httpx.Response, sink: BodySink) -> None:
        """Read the body; hand batches of about ``batch_size`` bytes to the sink.

        Raises:
            _Transient: The body stopped (stall, reset, truncation).
            DownloadError: Writing failed.
        """
        batch: list[bytes] = []
        pending = 0
        last_flush = trio.current_time()
        error: _Transient | None = None
        chunks = response.aiter_raw()
        try:
            while True:
                stalled = True
                with trio.move_on_after(self._stall_timeout):
                    chunk = await anext(chunks, None)
                    stalled = False
                if stalled:
                    raise _Transient(f"no data from {self._shown} for {self._stall_timeout:g} s")
                if chunk is None:
                    break
                self._received += len(chunk)
                batch.append(chunk)
                pending += len(chunk)
                now = trio.current_time()
                if pending >= self._batch_size or now - last_flush >= _FLUSH_INTERVAL:
                    await sink.put(batch)
                    batch, pending, last_flush = [], 0, now
        except httpx.TransportError as exc:
            error = _Transient(_describe_transport_error(exc, self._shown))
        except _Transient as exc:
            error = exc
        if batch:
            await sink.put(batch)
        if error is not None:
            raise error

    # -- progress and checkpoints ------------------------------------------------------

    async def _after_write(self) -> None:
        now = trio.current_time()
        if now - self._last_progress >= _PROGRESS_INTERVAL:
            self._report(now, total=self._validators.length)
        if now - self._last_checkpoint >= _CHECKPOINT_INTERVAL:
            await self._checkpoint()

    def _report(self, now: float, *, total: int | None) -> None:
        self._last_progress = now
        if self._rate_mark is not None:
            then, received = self._rate_mark
            if now > then:
                instant = (self._received - received) / (now - then)
                self._rate = instant if self._rate == 0.0 else 0.5 * self._rate + 0.5 * instant
        self._rate_mark = (now, self._received)
        if self._on_progress is not None:
            self._on_progress(
                Progress(
                    done=self._file.size,
                    total=total,
                    rate=self._rate,
                    resumes=self._resumes,
                    restarts=self._restarts,
                    attempt=self._attempt,
                )
            )

    async def _checkpoint(self) -> None:
        """Record what the partial file is (a failure here only costs resumability)."""
        self._last_checkpoint = trio.current_time()
        sidecar = Sidecar(
            url=self._url,
            sha256=self._expected,
            etag=self._validators.etag,
            last_modified=self._validators.last_modified,
            length=self._validators.length,
            offset=self._file.size,
        )
        if sidecar == self._saved:
            return
        try:
            await trio.to_thread.run_sync(save_sidecar, self._sidecar_path, sidecar)
        except OSError as exc:
            log.warning("cannot save download sidecar %s: %s", self._sidecar_path, exc)
        else:
            self._saved = sidecar
