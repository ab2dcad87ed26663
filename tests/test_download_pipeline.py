"""BodySink: hashing and writing threads, bounded memory, and a write error part-way."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import trio

from trio_fwagent.download import DownloadError
from trio_fwagent.download.pipeline import BodySink
from trio_fwagent.download.writer import PartFile


class _FailingPart:
    """Hashes everything; its writes fail from the ``fail_at``-th batch on (disk full)."""

    def __init__(self, fail_at: int) -> None:
        self.digest = hashlib.sha256()
        self.written: list[bytes] = []
        self.fail_at = fail_at

    def hash(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            self.digest.update(chunk)

    def append(self, chunks: Sequence[bytes]) -> None:
        if len(self.written) + 1 >= self.fail_at:
            raise DownloadError("cannot write /x.part: No space left on device", permanent=True)
        self.written.append(b"".join(chunks))


async def test_every_batch_is_hashed_and_written_in_order(tmp_path: Path) -> None:
    part = PartFile.open(tmp_path / "f.part", 0)
    batches = [[bytes([i]) * 1000, bytes([i + 1]) * 24] for i in range(0, 100, 2)]
    sink = BodySink(part, max_batches=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        try:
            for batch in batches:
                await sink.put(batch)
        finally:
            sink.close()
    part.close()
    expected = b"".join(b"".join(batch) for batch in batches)
    assert (tmp_path / "f.part").read_bytes() == expected
    assert part.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert sink.error is None


async def test_a_write_error_part_way_stops_writing_and_reaches_the_caller() -> None:
    part = _FailingPart(fail_at=3)
    sink = BodySink(cast(PartFile, part), max_batches=1)
    caught: DownloadError | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        try:
            for i in range(10):
                await sink.put([bytes([i]) * 100])
        except DownloadError as exc:
            caught = exc
        finally:
            sink.close()
    assert caught is not None and "No space left" in caught.reason
    assert len(part.written) == 2  # nothing after the failing batch was written
    assert isinstance(sink.error, DownloadError) and sink.error.permanent
