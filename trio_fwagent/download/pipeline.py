"""Two long-lived worker threads per response body: one hashes, one writes.

This module owns the hand-off of received batches from the event loop to a
:class:`~trio_fwagent.download.writer.PartFile`: each batch goes into two queues, one
read by a thread that adds it to the SHA-256, one by a thread that appends it to the
file. The threads never wait for each other nor for the event loop, so on two cores
hashing, writing and receiving all run at once; the event loop only hears that a batch is
done (to free its memory budget and report progress). At most ``max_batches`` batches are
in flight: memory stays constant. A write error stops writing (later batches are
dropped) and is kept for the caller. It must not know about HTTP, retries or sidecars.

(Measured at 1 GiB on 2 cores: one ``trio.to_thread.run_sync`` per batch and per job,
hashing and writing waiting for each other at every batch, cost 0.1-0.3 s more than these
queues with 4 MiB batches, and much more with smaller ones.)
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence

import trio

from trio_fwagent.download.model import DownloadError
from trio_fwagent.download.writer import PartFile

__all__ = ["BodySink"]

_Batch = Sequence[bytes]


class BodySink:
    """Where one response body's batches go; use :meth:`run` in a nursery, then :meth:`put`.

    Args:
        part: The partial file to hash and append to.
        max_batches: Batches handed over but not yet both hashed and written, at most.
    """

    def __init__(self, part: PartFile, *, max_batches: int) -> None:
        self._part = part
        self._credits = trio.Semaphore(max(1, max_batches))
        self._hash_queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._write_queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._hashed = 0
        self._written = 0
        self._released = 0
        self._closed = False
        self._token = trio.lowlevel.current_trio_token()
        self._done_send, self.done = trio.open_memory_channel[None](float("inf"))
        self.error: DownloadError | None = None
        """The write error that stopped writing, if any (set by the writing thread)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run both threads until :meth:`close`; ``done`` gets one item per finished batch.

        It waits for the threads even when cancelled (they finish what is queued, at
        most ``max_batches`` batches, and stop), so call :meth:`close` in a ``finally``.
        """
        async with self._done_send, trio.open_nursery() as nursery:
            nursery.start_soon(self._thread, self._hash_queue, self._part.hash, True)
            nursery.start_soon(self._thread, self._write_queue, self._append, False)
            task_status.started()

    async def put(self, batch: _Batch) -> None:
        """Hand a batch over, waiting while ``max_batches`` are in flight.

        Raises:
            DownloadError: Writing failed (this batch was not taken).
            trio.ClosedResourceError: :meth:`close` was called.
        """
        await self._credits.acquire()
        if self.error is not None or self._closed:
            self._credits.release()
            if self.error is not None:
                raise self.error
            raise trio.ClosedResourceError("body sink closed")
        self._hash_queue.put(batch)
        self._write_queue.put(batch)

    def close(self) -> None:
        """No more batches: the threads finish the queued ones and stop (idempotent)."""
        if not self._closed:
            self._closed = True
            self._hash_queue.put(None)
            self._write_queue.put(None)

    # -- worker threads ----------------------------------------------------------------

    async def _thread(
        self, jobs: queue.SimpleQueue[_Batch | None], work: Callable[[_Batch], None], hashing: bool
    ) -> None:
        await trio.to_thread.run_sync(self._work, jobs, work, hashing)

    def _append(self, batch: _Batch) -> None:
        if self.error is None:
            try:
                self._part.append(batch)
            except DownloadError as exc:
                self.error = exc

    def _work(
        self, jobs: queue.SimpleQueue[_Batch | None], work: Callable[[_Batch], None], hashing: bool
    ) -> None:
        """Worker thread: take batches until the sentinel, report each one done."""
        while (batch := jobs.get()) is not None:
            work(batch)
            self._token.run_sync_soon(self._finished, hashing)

    def _finished(self, hashing: bool) -> None:
        """Event loop: one thread finished a batch; free the batches both have finished."""
        if hashing:
            self._hashed += 1
        else:
            self._written += 1
        while self._released < min(self._hashed, self._written):
            self._released += 1
            self._credits.release()
            self._done_send.send_nowait(None)
