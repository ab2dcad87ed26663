"""Resume: a download whose connection drops every 32 MiB, with and without Range support.

``python bench/resume.py [--quick] [--reps 3]``

trio-fwagent's ``download()`` (in its own process) fetches a 256 MiB file (16 MiB with
--quick, drops every 4 MiB) from trio-fwagent's fault-injecting file server
(``trio_fwagent.testing.fileserver``, run in a thread of this process) four ways:
Range honoured or ignored (like thin-edge's file server), each fault-free and with the
connection closed each time another 32 MiB has been sent. Without Range every drop
forces a restart from byte 0, so a drop every 32 MiB forever would never finish a larger
file: the link heals after as many drops as the Range-capable case gets
(size / 32 MiB - 1), which is what makes the two comparable.

Reported: bytes the server sent / file size, requests, resumes and restarts the
downloader counted, and throughput against the fault-free run from the same server.

Owns: the resume table. Must not touch: the server's or the downloader's code.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import threading
from collections.abc import Iterator
from typing import Any

from common import (
    MIB,
    BenchError,
    Options,
    Report,
    Workspace,
    fmt_size,
    fwagent_env,
    fwagent_feature,
    log,
    median,
    peer_argv,
    run_measured,
    sync_fs,
    table,
)

FULL_SIZE = 256 * MIB
FULL_DROP = 32 * MIB
QUICK_SIZE = 16 * MIB
QUICK_DROP = 4 * MIB
CASES = (
    ("Range on, no faults", True, False),
    ("Range on, drops", True, True),
    ("Range off, no faults", False, False),
    ("Range off, drops", False, True),
)


@contextlib.contextmanager
def heal_after(stats: Any, faults: Any, limit: int) -> Iterator[None]:
    """Clear ``faults.drop_every`` once ``limit`` body bytes were sent.

    The next drop would be a whole drop interval (tens of ms of sending) later, and this
    checks every millisecond, so the number of drops is exact.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.001):
            if stats.body_bytes >= limit:
                faults.drop_every = None
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run(opts: Options, ws: Workspace) -> Report:
    """Four cases, ``reps`` interleaved rounds."""
    fwagent_feature("trio_fwagent.download", "download")
    fwagent_feature("trio_fwagent.testing.fileserver", "FaultyFileServer", "Faults")
    from trio_fwagent.testing.fileserver import Faults, FaultyFileServer

    size = QUICK_SIZE if opts.quick else FULL_SIZE
    drop = QUICK_DROP if opts.quick else FULL_DROP
    reps = opts.reps or (1 if opts.quick else 3)
    drops = max(1, size // drop - 1)
    source, sha = ws.data_file(size, seed=3)
    content = source.read_bytes()  # served from memory: the server is not the bottleneck
    server = FaultyFileServer()
    _port, stop = server.start_in_thread()
    counter = itertools.count()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in CASES}
    failures: list[str] = []
    try:
        for r in range(reps):
            for i in range(len(CASES)):
                name, ranges, faulty = CASES[(i + r) % len(CASES)]
                path = f"/image-{next(counter)}.bin"
                faults = Faults(ranges=ranges, drop_every=drop if faulty else None)
                url = server.add_file(path, content, faults)
                stats = server.stats_for(path)
                dest_dir = ws.target_dir("disk")
                try:
                    with heal_after(stats, faults, drops * drop):
                        argv = peer_argv(
                            "fwagent-api", url, str(dest_dir / "image.bin"), "--sha256", sha
                        )
                        res = run_measured(argv, env=fwagent_env()).check(f"resume {name}")
                    out = res.json_line()
                    if out.get("sha256") != sha:
                        raise BenchError(f"{name}: wrong SHA-256 {out.get('sha256')!r}")
                except BenchError as exc:
                    failures.append(f"resume {name}: {exc}")
                    continue
                finally:
                    shutil.rmtree(dest_dir, ignore_errors=True)
                    sync_fs()
                samples[name].append(
                    {
                        "wall_s": res.wall,
                        "inner_s": out.get("elapsed"),
                        "server_bytes": stats.body_bytes,
                        "requests": stats.requests,
                        "statuses": list(stats.statuses),
                        "resumes": out.get("resumes"),
                        "restarts": out.get("restarts"),
                        "maxrss_kib": res.maxrss_kib,
                    }
                )
            log(f"resume: round {r + 1}/{reps} done")
    finally:
        stop()
    ws.drop_file(size, seed=3)
    text, rows = _table(samples, size, drop, drops)
    data = {"size": size, "drop_every": drop, "drops": drops, "reps": reps, "cases": rows}
    return Report("resume", text, data, failures)


def _table(
    samples: dict[str, list[dict[str, Any]]], size: int, drop: int, drops: int
) -> tuple[str, dict[str, Any]]:
    lines = []
    rows: dict[str, Any] = {}
    inner_med: dict[str, float] = {}
    for name, vals in samples.items():
        if vals:
            inner_med[name] = median([float(v["inner_s"] or v["wall_s"]) for v in vals])
    for name, ranges, _faulty in CASES:
        vals = samples[name]
        if not vals:
            continue
        base = inner_med.get(f"Range {'on' if ranges else 'off'}, no faults")
        t = inner_med[name]
        sent = median([v["server_bytes"] / size for v in vals])
        row = {
            "sent_over_size": sent,
            "requests": median([v["requests"] for v in vals]),
            "resumes": median([v["resumes"] or 0 for v in vals]),
            "restarts": median([v["restarts"] or 0 for v in vals]),
            "median_inner_s": t,
            "mib_per_s": size / MIB / t,
            "x_fault_free": (base / t) if base else None,
            "runs": vals,
        }
        rows[name] = row
        lines.append(
            [
                name,
                f"{sent:.3f}",
                row["requests"],
                row["resumes"],
                row["restarts"],
                f"{t:.3f}",
                row["mib_per_s"],
                row["x_fault_free"],
            ]
        )
    text = table(
        [
            "case",
            "sent / size",
            "requests",
            "resumes",
            "restarts",
            "median s",
            "MiB/s",
            "x fault-free",
        ],
        lines,
    ) + (
        f"\n\n{fmt_size(size)} file; 'drops' = the connection is closed each time another"
        f" {fmt_size(drop)} has been sent, {drops} times. Times are the download itself"
        " (inside the process, retry back-off included); `x fault-free` = the fault-free"
        " time of the same server mode / this time."
    )
    return text, rows


if __name__ == "__main__":
    from common import main_for

    main_for(run, "resume")
