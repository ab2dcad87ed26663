"""Durable operation records: one small JSON file per operation, written atomically.

Owns the on-disk journal the agent uses to never install twice (a re-sent request finds
its record), to recover after a crash (resume a download, report an interrupted
install as failed, re-send an unacknowledged final status) and to forget old work.

Each record lives in ``<directory>/<sha256(child_id + "\\0" + key)[:32]>.json`` (``key``: the
operation id within its dialect, ``FirmwareRequest.key``): names
from the network never become paths. Writes go to a temporary file in the same
directory, are fsynced and renamed over the old file, then the directory is fsynced,
so a crash leaves either the old or the new record, never a torn one. Files are 0600,
the directory 0700.

Synchronous on purpose (files are tiny); async callers may use
``trio.to_thread.run_sync``. It must not know about MQTT, downloads or installers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from trio_fwagent.contract.model import FirmwareRequest

__all__ = ["Journal", "OperationRecord", "Phase", "record_name"]

log = logging.getLogger(__name__)

_FORMAT = 1
_SUFFIX = ".json"
_TEMP_PREFIX = ".tmp-"


class Phase(StrEnum):
    """Where an operation is; recorded before the phase starts."""

    RECEIVED = "received"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class OperationRecord:
    """What the journal knows about one operation.

    Attributes:
        request: The request that started it.
        phase: The phase it entered last.
        final_status: ``successful`` or ``failed`` once finished, else ``None``.
        reason: Failure reason that was (or must be) reported.
        final_acked: The broker acknowledged the final status (QoS 1).
        updated_at: Wall-clock time (``time.time()``) of the last change.
    """

    request: FirmwareRequest
    phase: Phase
    final_status: Literal["successful", "failed"] | None = None
    reason: str | None = None
    final_acked: bool = False
    updated_at: float = 0.0

    def replace(self, **changes: Any) -> OperationRecord:
        """Return a copy with ``changes``; ``updated_at`` becomes now unless given."""
        changes.setdefault("updated_at", time.time())
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of this record."""
        return {
            "format": _FORMAT,
            "request": self.request.to_json(),
            "phase": self.phase.value,
            "final_status": self.final_status,
            "reason": self.reason,
            "final_acked": self.final_acked,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> OperationRecord:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: ``data`` is not a record this version understands.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a journal record of a known format")
        final_status = data.get("final_status")
        if final_status not in (None, "successful", "failed"):
            raise ValueError(f"bad final_status {final_status!r}")
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("bad reason")
        final_acked = data.get("final_acked")
        if not isinstance(final_acked, bool):
            raise ValueError("bad final_acked")
        updated_at = data.get("updated_at")
        if not isinstance(updated_at, int | float) or isinstance(updated_at, bool):
            raise ValueError("bad updated_at")
        request = data.get("request")
        if not isinstance(request, dict):
            raise ValueError("bad request")
        phase = data.get("phase")
        if not isinstance(phase, str):
            raise ValueError("bad phase")
        return cls(
            request=FirmwareRequest.from_json(request),
            phase=Phase(phase),
            final_status=final_status,
            reason=reason,
            final_acked=final_acked,
            updated_at=float(updated_at),
        )


#: 2026-01-01 UTC. A device without a real-time clock starts in 1970 until NTP sets the
#: time: a record stamped before this was written by an unset clock, and its age is
#: unknown (neither "expired" nor "old enough to forget").
PLAUSIBLE_SINCE = 1_767_225_600.0


def age_of(record: OperationRecord, now: float) -> float | None:
    """Seconds since ``record`` last changed, or None when either clock reading is
    implausible (see :data:`PLAUSIBLE_SINCE`)."""
    if record.updated_at < PLAUSIBLE_SINCE or now < PLAUSIBLE_SINCE:
        return None
    return max(0.0, now - record.updated_at)


def record_name(child_id: str, key: str) -> str:
    """File name of the record for (``child_id``, ``key``): a hash, never the raw ids.

    ``key`` is :attr:`FirmwareRequest.key` (the operation id within its dialect).
    """
    digest = hashlib.sha256(f"{child_id}\0{key}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32] + _SUFFIX


class Journal:
    """A directory of operation records.

    Args:
        directory: Where records live; created (mode 0700) if missing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)

    def path_for(self, child_id: str, key: str) -> Path:
        """The file that holds (or would hold) this operation's record (``key``:
        :attr:`FirmwareRequest.key`)."""
        return self.directory / record_name(child_id, key)

    def get(self, child_id: str, key: str) -> OperationRecord | None:
        """The record of this operation, or ``None`` (missing or unreadable)."""
        record = self._load(self.path_for(child_id, key))
        if record is None:
            return None
        if (record.request.child_id, record.request.key) != (child_id, key):
            log.warning("journal record %r belongs to another operation; ignored", key)
            return None
        return record

    def put(self, record: OperationRecord) -> None:
        """Store ``record`` atomically, replacing any earlier record of the operation.

        Raises:
            OSError: The record could not be written (the old record is intact).
        """
        data = json.dumps(record.to_json(), ensure_ascii=True, separators=(",", ":"))
        target = self.path_for(record.request.child_id, record.request.key)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data.encode("ascii"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.directory)

    def delete(self, child_id: str, key: str) -> None:
        """Forget this operation (no error if there is no record)."""
        with contextlib.suppress(OSError):
            self.path_for(child_id, key).unlink()
        _fsync_dir(self.directory)

    def rename_records(self) -> int:
        """Move records stored under another name than :meth:`path_for` gives them now.

        ``te/`` records written before the key included the dialect are named by the
        bare id: left there, one would be resumed at every start (its later phases are
        journaled under the new name) and its installer run again. A record already
        under the new name is newer and wins. Returns how many files were moved or
        removed.
        """
        changed = 0
        for path in self._record_paths():
            record = self._load(path)
            if record is None:
                continue
            target = self.path_for(record.request.child_id, record.request.key)
            if path == target:
                continue
            try:
                if target.exists():
                    path.unlink()
                else:
                    os.replace(path, target)
            except OSError as exc:
                log.warning("cannot rename journal record %s: %s", path.name, exc)
                continue
            changed += 1
        if changed:
            _fsync_dir(self.directory)
        return changed

    def records(self) -> list[OperationRecord]:
        """All readable records, oldest change first; corrupt files are logged and skipped."""
        found = [r for p in self._record_paths() if (r := self._load(p)) is not None]
        found.sort(key=lambda r: r.updated_at)
        return found

    def prune(self, keep_finished_for: float, *, now: float | None = None) -> int:
        """Delete finished records (and stale temp files) older than ``keep_finished_for``.

        A finished record whose final status was never acknowledged is pruned too once
        it is this old: thin-edge stopped waiting for it long ago. A record stamped by an
        unset clock (:func:`age_of` is None) is re-stamped with ``now`` once the clock is
        set, and kept: forgetting it early could let a re-sent request install again.

        Args:
            keep_finished_for: Age in seconds (by ``updated_at``) to keep finished records.
            now: The current time (``time.time()`` if ``None``).

        Returns:
            The number of records deleted.
        """
        now = time.time() if now is None else now
        cutoff = now - keep_finished_for
        deleted = 0
        for path in self._record_paths():
            record = self._load(path)
            if record is None or record.phase is not Phase.FINISHED:
                continue
            age = age_of(record, now)
            if age is None:
                if now >= PLAUSIBLE_SINCE:
                    with contextlib.suppress(OSError):
                        self.put(record.replace(updated_at=now))
                continue
            if age > keep_finished_for:
                with contextlib.suppress(OSError):
                    path.unlink()
                    deleted += 1
        for path in self.directory.glob(_TEMP_PREFIX + "*"):
            # Leftovers of a crash during put(); never read, removed once old.
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        if deleted:
            _fsync_dir(self.directory)
        return deleted

    def _record_paths(self) -> list[Path]:
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.name.endswith(_SUFFIX) and not p.name.startswith(".")
        )

    def _load(self, path: Path) -> OperationRecord | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("journal record %s unreadable: %s", path.name, exc)
            return None
        try:
            return OperationRecord.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.warning("journal record %s is corrupt, skipped: %s", path.name, exc)
            return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
