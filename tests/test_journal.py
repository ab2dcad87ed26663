"""The operation journal on a real file system.

Protects: records survive a round trip; writes are atomic and private (0600 files in a
0700 directory); network-supplied ids never become path components; a corrupt or
half-written file never crashes recovery; pruning forgets only old finished work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from trio_fwagent.contract import FirmwareRequest, operation_key
from trio_fwagent.journal import (
    PLAUSIBLE_SINCE,
    Journal,
    OperationRecord,
    Phase,
    age_of,
    record_name,
)

T0 = PLAUSIBLE_SINCE + 1_000_000.0  # a time a set clock can show
SHA = "c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29"


def K(op_id: str) -> str:
    """The journal key of a te/ request's id (see ``FirmwareRequest.key``)."""
    return operation_key("te", op_id)


def make_request(op_id: str = "op-1", child_id: str = "child1") -> FirmwareRequest:
    return FirmwareRequest(
        dialect="te",
        child_id=child_id,
        op_id=op_id,
        attempt=2,
        name="OpenWRT",
        version="22.03",
        url="http://127.0.0.1:8000/f",
        sha256=SHA,
        topic=f"te/device/{child_id}///cmd/firmware_update/{op_id}",
        extra={"remoteUrl": "https://cloud/f", "tedgeUrl": "http://127.0.0.1:8000/f"},
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    record = OperationRecord(
        make_request(),
        Phase.FINISHED,
        final_status="failed",
        reason="installer exited with code 3: boom",
        final_acked=True,
        updated_at=1234.5,
    )
    journal.put(record)
    assert journal.get("child1", K("op-1")) == record
    # A fresh Journal object (as after a restart) reads the same thing.
    assert Journal(tmp_path / "journal").records() == [record]


def test_put_replaces_the_previous_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first = OperationRecord(make_request(), Phase.RECEIVED, updated_at=1.0)
    journal.put(first)
    second = first.replace(phase=Phase.DOWNLOADING)
    journal.put(second)
    assert journal.get("child1", K("op-1")) == second
    assert journal.records() == [second]
    assert len(list(tmp_path.iterdir())) == 1


def test_replace_stamps_the_time_unless_given() -> None:
    record = OperationRecord(make_request(), Phase.RECEIVED)
    before = time.time()
    assert record.replace(phase=Phase.INSTALLING).updated_at >= before
    assert record.replace(updated_at=5.0).updated_at == 5.0


def test_unknown_operation_is_none(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.put(OperationRecord(make_request("a"), Phase.RECEIVED))
    assert journal.get("child1", K("b")) is None
    assert journal.get("child2", K("a")) is None


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "journal"
    journal = Journal(directory)
    journal.put(OperationRecord(make_request(), Phase.RECEIVED))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (path,) = directory.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("child_id", "op_id"),
    [("child1", "../../etc/passwd"), ("../x", "/abs"), ("c", ".json"), ("c", "a\\b")],
)
def test_file_name_never_contains_the_raw_ids(tmp_path: Path, child_id: str, op_id: str) -> None:
    journal = Journal(tmp_path / "j")
    journal.put(OperationRecord(make_request(op_id, child_id), Phase.RECEIVED))
    names = os.listdir(tmp_path / "j")
    assert names == [record_name(child_id, K(op_id))]
    assert len(names[0]) == 32 + len(".json")
    assert all(c in "0123456789abcdef" for c in names[0][:32])
    assert sorted(os.listdir(tmp_path)) == ["j"]  # nothing escaped the directory
    assert journal.get(child_id, K(op_id)) is not None


def test_child_and_op_id_cannot_be_confused(tmp_path: Path) -> None:
    # "a" + "bc" and "ab" + "c" must not share a file.
    assert record_name("a", "bc") != record_name("ab", "c")


def test_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = OperationRecord(make_request(), Phase.DOWNLOADING, updated_at=1.0)
    journal.put(record)
    # What a crash in the middle of put() leaves behind: a torn temporary file.
    (tmp_path / ".tmp-abc.tmp").write_bytes(b'{"format":1,"requ')
    assert journal.records() == [record]
    assert journal.get("child1", K("op-1")) == record


def test_corrupt_files_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    good = OperationRecord(make_request("good"), Phase.FINISHED, "successful", updated_at=T0 + 2)
    journal.put(good)
    bad_path = journal.path_for("child1", K("bad"))
    bad_path.write_bytes(b"\x00garbage")
    (tmp_path / ("0" * 32 + ".json")).write_text(json.dumps({"format": 1, "phase": "nope"}))
    (tmp_path / ("1" * 32 + ".json")).write_text("[" * 100000)
    with caplog.at_level(logging.WARNING, logger="trio_fwagent.journal"):
        assert journal.records() == [good]
        assert journal.get("child1", K("bad")) is None
    assert "corrupt" in caplog.text
    assert journal.prune(0.0, now=T0 + 10) == 1  # corrupt files don't break pruning either


def test_records_are_oldest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    records = [
        OperationRecord(make_request(f"op-{i}"), Phase.RECEIVED, updated_at=t)
        for i, t in enumerate([30.0, 10.0, 20.0])
    ]
    for record in records:
        journal.put(record)
    assert [r.updated_at for r in journal.records()] == [10.0, 20.0, 30.0]


def test_prune_deletes_only_old_finished_records(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    old_done = OperationRecord(
        make_request("old"), Phase.FINISHED, "successful", updated_at=T0 + 100
    )
    new_done = OperationRecord(make_request("new"), Phase.FINISHED, "failed", updated_at=T0 + 950)
    old_running = OperationRecord(make_request("run"), Phase.DOWNLOADING, updated_at=T0 + 100)
    for record in (old_done, new_done, old_running):
        journal.put(record)
    assert journal.prune(keep_finished_for=500.0, now=T0 + 1000) == 1
    assert journal.get("child1", K("old")) is None
    assert journal.get("child1", K("new")) == new_done
    assert journal.get("child1", K("run")) == old_running


def test_records_stamped_by_an_unset_clock_are_not_pruned_but_restamped(tmp_path: Path) -> None:
    """No RTC: a record written at boot says 1970. Once NTP set the clock it must not look
    56 years old (pruned at once, a re-sent request would install again)."""
    journal = Journal(tmp_path)
    at_boot = OperationRecord(make_request("boot"), Phase.FINISHED, "successful", updated_at=42.0)
    journal.put(at_boot)
    assert age_of(at_boot, T0 + 5) is None and age_of(at_boot, 43.0) is None
    assert journal.prune(keep_finished_for=500.0, now=99.0) == 0  # clock still unset
    assert journal.prune(keep_finished_for=500.0, now=T0 + 1000) == 0
    restamped = journal.get("child1", K("boot"))
    assert restamped == at_boot.replace(updated_at=T0 + 1000)
    # From then on it ages like any other record.
    assert journal.prune(keep_finished_for=500.0, now=T0 + 1600) == 1


def test_prune_removes_stale_temp_files(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    leftover = tmp_path / ".tmp-x.tmp"
    leftover.write_bytes(b"{")
    os.utime(leftover, (100.0, 100.0))
    journal.prune(keep_finished_for=10.0, now=1000.0)
    assert not leftover.exists()


def test_delete_forgets_an_operation(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.put(OperationRecord(make_request(), Phase.RECEIVED))
    journal.delete("child1", K("op-1"))
    journal.delete("child1", K("op-1"))  # idempotent
    assert journal.records() == []


def test_one_id_in_two_dialects_is_two_records(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    te = make_request("42")
    legacy = dataclasses.replace(te, dialect="legacy", topic="tedge/child1/commands/req/x")
    assert legacy.key == "42" and te.key != legacy.key
    journal.put(OperationRecord(te, Phase.RECEIVED, updated_at=1.0))
    journal.put(OperationRecord(legacy, Phase.FINISHED, "successful", updated_at=2.0))
    got_te, got_legacy = journal.get("child1", te.key), journal.get("child1", legacy.key)
    assert got_te is not None and got_te.phase is Phase.RECEIVED
    assert got_legacy is not None and got_legacy.final_status == "successful"
    # Legacy records keep the name they had before dialects were part of the key.
    assert (tmp_path / record_name("child1", "42")).exists()


def test_records_under_an_older_name_are_renamed_and_a_newer_record_wins(tmp_path: Path) -> None:
    """te/ records written before the key held the dialect are named by the bare id."""
    journal = Journal(tmp_path)
    moved = OperationRecord(make_request("m"), Phase.DOWNLOADING, updated_at=T0)
    stale = OperationRecord(make_request("s"), Phase.RECEIVED, updated_at=T0)
    newer = OperationRecord(make_request("s"), Phase.FINISHED, "successful", updated_at=T0 + 9)
    for record in (moved, stale):  # as the previous release named them
        data = json.dumps(record.to_json())
        (tmp_path / record_name("child1", record.request.op_id)).write_text(data)
    journal.put(newer)  # journaled under the new name after the upgrade
    assert journal.get("child1", K("m")) is None
    assert journal.rename_records() == 2
    assert journal.get("child1", K("m")) == moved
    assert journal.records() == [moved, newer]  # the stale copy of "s" is gone
    assert journal.rename_records() == 0
