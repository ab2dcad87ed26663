"""Throughput: one large verified download from a local nginx, trio-fwagent next to its peers.

``python bench/throughput.py [--quick] [--size 1G] [--reps 3] [--targets disk,tmpfs]``

Every peer downloads the same file from a private nginx on loopback, in its own fresh
process, to a directory on disk (the filesystem that holds the repository) and on tmpfs
(/dev/shm). Rounds are interleaved (A B C, B C A, ...), each measured run follows an
unmeasured run of the same peer (full runs: see bench/README.md), and the table shows medians,
with speed ratios against ``curl -o`` and ``requests`` measured in the same run:
``x curl`` = curl's time / this row's time, so above 1.0 is faster than curl.

Owns: the throughput peers' command lines and this table. Must not touch: the peers'
code (bench/peers.py) or the services (bench/common.py).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MIB,
    PYTHON,
    REPO_DIR,
    BenchError,
    Options,
    ProcResult,
    Report,
    Skipped,
    Workspace,
    bar_png,
    digest_of,
    fmt_size,
    fwagent_cli,
    fwagent_env,
    fwagent_feature,
    interleave,
    log,
    main_for,
    median,
    nginx_server,
    peer_argv,
    run_measured,
    sync_fs,
    table,
)

FULL_SIZE = 1 << 30
QUICK_SIZE = 16 * MIB
CURL = "curl -o"
CURL_VERIFY = "curl -o, then fsync+hashlib"
REQUESTS = "requests stream+hashlib"


@dataclass(frozen=True, slots=True)
class Peer:
    """One way to fetch the file: a chain of commands run back to back.

    ``rows`` are (row name, how many leading steps of the chain it covers, what it
    does), so one curl run gives both "curl -o" (step 1) and "curl -o, then hashlib"
    (steps 1-2).
    """

    name: str
    build: Callable[[str, Path, str], list[list[str]]]
    rows: tuple[tuple[str, int, str], ...]


def _curl(url: str, dest: Path, sha: str) -> list[list[str]]:
    return [
        ["curl", "-sS", "--fail", "-o", str(dest), url],
        peer_argv("hashlib", "--fsync", str(dest)),
    ]


def _one(*args: str) -> Callable[[str, Path, str], list[list[str]]]:
    def build(url: str, dest: Path, sha: str) -> list[list[str]]:
        return [peer_argv(*[a.format(url=url, dest=dest, sha=sha) for a in args])]

    return build


def peers(source: Path) -> tuple[list[Peer], list[str]]:
    """The peers that can run here, and the reasons for the ones that cannot."""
    skipped: list[str] = []
    found = [
        Peer(
            "curl",
            _curl,
            (
                (CURL, 1, "curl writes the file, nothing else (the issue's baseline)"),
                (CURL_VERIFY, 2, "then a second process fsyncs and hashes it with hashlib"),
            ),
        ),
        Peer(
            "requests",
            _one("requests-stream", "{url}", "{dest}"),
            ((REQUESTS, 1, "stream=True, iter_content(1 MiB), hash+write inline, no fsync"),),
        ),
        Peer(
            "httpx-trio",
            _one("httpx-trio", "{url}", "{dest}"),
            (
                (
                    "httpx on Trio, plain loop",
                    1,
                    "aiter_bytes() (64 KiB reads), hash+write inline on the event loop",
                ),
            ),
        ),
        Peer(
            "hashlib",
            lambda url, dest, sha: [peer_argv("hashlib", str(source))],
            (("hashlib SHA-256 alone", 1, "hash the page-cached source: the verify limit"),),
        ),
    ]
    try:
        fwagent_feature("trio_fwagent.download", "download")
    except Skipped as exc:
        skipped.append(f"trio-fwagent download() API: {exc}")
    else:
        found.append(
            Peer(
                "fwagent-api",
                _one("fwagent-api", "{url}", "{dest}", "--sha256", "{sha}"),
                (("trio-fwagent download() API", 1, "download() with defaults, verified"),),
            )
        )
    cli = fwagent_cli()
    if cli is None or not (REPO_DIR / "trio_fwagent" / "cli" / "download.py").exists():
        skipped.append("trio-fwagent download CLI: trio_fwagent/cli/download.py not written yet")
    else:
        run_measured([*cli, "download", "--help"], env=fwagent_env()).check(
            "trio-fwagent download --help"
        )
        found.append(
            Peer(
                "fwagent-cli",
                lambda url, dest, sha: [[*cli, "download", url, "-o", str(dest), "--sha256", sha]],
                (("trio-fwagent download (CLI)", 1, "the CLI command, verified"),),
            )
        )
    return found, skipped


def startup_costs(reps: int) -> dict[str, list[float]]:
    """Wall time of each peer's start-up alone (imports, no transfer), ``reps`` times."""
    argvs: dict[str, list[str]] = {
        "python, import requests": [PYTHON, "-c", "import requests"],
        "python, import httpx + trio": [PYTHON, "-c", "import httpx, trio"],
    }
    with contextlib.suppress(Skipped, BenchError):
        fwagent_feature("trio_fwagent.download", "download")
        argvs["python, import trio_fwagent.download"] = [
            PYTHON,
            "-c",
            "import trio, trio_fwagent.download",
        ]
    cli = fwagent_cli()
    if cli is not None:
        argvs["trio-fwagent --version"] = [*cli, "--version"]
    names = list(argvs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _r, name in interleave(names, reps):
        res = run_measured(argvs[name], env=fwagent_env())
        if res.returncode == 0:
            times[name].append(res.wall)
    return {name: t for name, t in times.items() if t}


def run_chain(argvs: Sequence[Sequence[str]], what: str) -> list[ProcResult]:
    """Run the steps of one peer back to back; every step must succeed."""
    results = []
    for argv in argvs:
        results.append(run_measured(argv, env=fwagent_env()).check(f"{what}: {argv[0]}"))
    return results


def run(opts: Options, ws: Workspace) -> Report:
    """Run every peer on every target for ``reps`` interleaved rounds."""
    size = opts.size or (QUICK_SIZE if opts.quick else FULL_SIZE)
    reps = opts.reps or (1 if opts.quick else 3)
    source, sha = ws.data_file(size)
    found, skipped = peers(source)
    failures: list[str] = []
    # samples[target][row] = list of (wall seconds, peak RSS KiB, inner seconds or None)
    samples: dict[str, dict[str, list[tuple[float, int, float | None]]]] = {}
    notes = {row: note for p in found for row, _, note in p.rows}
    with nginx_server(source.parent) as nginx:
        url = f"{nginx.base_url}/{source.name}"
        targets = []
        for target in opts.targets:
            try:
                ws.target_dir(target)
                targets.append(target)
            except Skipped as exc:
                skipped.append(str(exc))
        # Rounds outermost, so slow drifts of the machine spread over every target and peer.
        for r in range(reps):
            for target in targets:
                rows = samples.setdefault(target, {})
                for i in range(len(found)):
                    peer = found[(i + r) % len(found)]
                    if not opts.quick:
                        # Unmeasured, so that every measured run follows a run of its
                        # own kind: on this VM a writer's disk time depends on what the
                        # previous process did (requests to disk: 1.1 s after itself,
                        # 2.2 s after curl or trio-fwagent), and a fixed order would
                        # hand one peer the slow case every round.
                        warm_dir = ws.target_dir(target)
                        try:
                            run_chain(peer.build(url, warm_dir / "image.bin", sha), peer.name)
                        except BenchError:
                            pass  # the measured run below reports it
                        finally:
                            shutil.rmtree(warm_dir, ignore_errors=True)
                            sync_fs()
                    dest_dir = ws.target_dir(target)
                    dest = dest_dir / "image.bin"
                    try:
                        results = run_chain(peer.build(url, dest, sha), peer.name)
                        _check_digest(results[-1], sha, peer.name)
                    except BenchError as exc:
                        failures.append(f"throughput {target} {peer.name}: {exc}")
                        continue
                    finally:
                        shutil.rmtree(dest_dir, ignore_errors=True)
                        sync_fs()
                    for row, steps, _ in peer.rows:
                        part = results[:steps]
                        wall = sum(p.wall for p in part)
                        rss = max(p.maxrss_kib for p in part)
                        inner = part[-1].json_line().get("elapsed") if steps == 1 else None
                        rows.setdefault(row, []).append((wall, rss, inner))
                        if opts.verbose:
                            log(f"{target} round {r + 1} {row}: {wall:.3f} s, {rss // 1024} MiB")
                log(f"throughput: {target} round {r + 1}/{reps} done")
    ws.drop_file(size)  # frees its page cache for the next benchmark
    startup = startup_costs(max(reps, 3))
    text, data = _tables(samples, size, notes)
    if startup:
        text += "\n\nStart-up alone (median wall s, no transfer): " + ", ".join(
            f"{name} {median(t):.3f}" for name, t in startup.items()
        )
        data["startup_s"] = startup
    if opts.png and samples:
        labels, values = [], []
        for target, rows in samples.items():
            for row, vals in rows.items():
                labels.append(f"{target}: {row}")
                values.append(size / MIB / median([v[0] for v in vals]))
        bar_png("throughput", f"verified download of {fmt_size(size)}", labels, values, "MiB/s")
    data.update(size=size, reps=reps, sha256=sha)
    return Report("throughput", text, data, failures, skipped)


def _check_digest(result: ProcResult, sha: str, what: str) -> None:
    got = digest_of(result)
    if got != sha:
        raise BenchError(f"{what}: wrong SHA-256 {got!r}, expected {sha}")


def _tables(
    samples: dict[str, dict[str, list[tuple[float, int, float | None]]]],
    size: int,
    notes: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    parts = []
    data: dict[str, Any] = {"targets": {}}
    for target, rows in samples.items():
        med = {row: median([v[0] for v in vals]) for row, vals in rows.items()}
        curl = med.get(CURL)
        req = med.get(REQUESTS)
        lines = []
        tdata = {}
        for row, vals in rows.items():
            walls = [v[0] for v in vals]
            inners = [v[2] for v in vals if v[2] is not None]
            t = med[row]
            lines.append(
                [
                    row,
                    f"{t:.3f}",
                    f"{min(walls):.3f}-{max(walls):.3f}",
                    size / MIB / t,
                    f"{median(inners):.3f}" if inners else "-",
                    (curl / t) if curl else None,
                    (req / t) if req else None,
                    round(median([float(v[1]) for v in vals]) / 1024, 1),
                ]
            )
            tdata[row] = {
                "wall_s": walls,
                "inner_s": inners,
                "maxrss_kib": [v[1] for v in vals],
                "median_s": t,
                "mib_per_s": size / MIB / t,
                "x_curl": curl / t if curl else None,
                "x_requests": req / t if req else None,
                "how": notes.get(row, ""),
            }
        parts.append(
            f"### to {target}, {fmt_size(size)}, {len(next(iter(rows.values()), []))} round(s)\n\n"
            + table(
                [
                    "peer",
                    "median s",
                    "min-max s",
                    "MiB/s",
                    "inner s",
                    "x curl",
                    "x requests",
                    "peak RSS MiB",
                ],
                lines,
            )
        )
        data["targets"][target] = tdata
    legend = "\n".join(f"- {row}: {how}" for row, how in notes.items())
    text = "\n\n".join(parts) + (
        "\n\nTimes are wall clock per process (start-up included); `inner s` is the"
        " transfer alone as the peer timed it. `x curl` / `x requests`: their median time"
        " divided by this row's (above 1 = faster).\n" + legend
    )
    return text, data


if __name__ == "__main__":
    main_for(run, "throughput")
