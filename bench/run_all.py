"""Run every benchmark in bench/ and print their tables: ``./dev bench [--quick]``.

``--quick`` runs everything small (under a minute; CI runs it so the scripts keep
working) and exits non-zero if any benchmark breaks. Without it, the full sizes of
bench/README.md run (about 15 minutes on 2 cores). ``--only throughput,resume`` picks
some. A benchmark whose part of trio-fwagent is not written yet says SKIPPED; a part that
exists but fails is a failure.

Owns: the order of the benchmarks and the exit status. Must not touch: anything the
benchmarks own.
"""

from __future__ import annotations

import argparse
import sys
import time

import latency
import memory
import resume
import scale
import throughput
from common import (
    REPO_DIR,
    BenchFn,
    add_common_args,
    emit,
    log,
    machine,
    mem_available,
    options_from_args,
    run_one,
    workspace,
    write_markdown,
)

BENCHES: dict[str, BenchFn] = {
    "throughput": throughput.run,
    "resume": resume.run,
    "memory": memory.run,
    "latency": latency.run,
    "scale": scale.run,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; 0 if none failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_args(parser)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    args = parser.parse_args(argv)
    opts = options_from_args(args)
    names = list(BENCHES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    info = machine()
    header = (
        f"# trio-fwagent benchmarks{' (quick)' if opts.quick else ''}: {info['date']}\n\n"
        f"{info['nproc']} x {info['cpu']}, {info['mem_total']} RAM, load {info['loadavg']},"
        f" Python {info['python']}, trio {info.get('trio')}, httpx {info.get('httpx')};"
        f" disk: {info['fs_disk']}"
    )
    print(header)
    sections = [header]
    failed: list[str] = []
    skipped: list[str] = []
    started = time.monotonic()
    # tmpfs holds at most one downloaded copy at a time (plus a little slack).
    with workspace(need_tmpfs=min(mem_available() // 4, 2 << 30)) as ws:
        for name in names:
            t0 = time.monotonic()
            log(f"{name}: start")
            report = run_one(BENCHES[name], name, opts, ws)
            sections.append(emit(report, opts))
            failed += [f"{name}: {f.splitlines()[0]}" for f in report.failures]
            skipped += [f"{name}: {s}" for s in report.skipped]
            log(f"{name}: {time.monotonic() - t0:.1f} s")
    summary = [f"## Summary ({time.monotonic() - started:.0f} s, load at the end {_load()})"]
    summary += [f"SKIPPED {line}" for line in skipped]
    summary += [f"FAILED  {line}" for line in failed]
    if not failed:
        summary.append(f"all {len(names)} benchmark(s) ran" + (" (with skips)" if skipped else ""))
    print("\n" + "\n\n".join(summary))
    sections.append("\n\n".join(summary))
    name = "report-quick" if opts.quick else "report"
    path = write_markdown(name, "\n\n".join(sections) + "\n", keep=not opts.quick)
    print(f"\n(Markdown: {path.relative_to(REPO_DIR)})")
    return 1 if failed else 0


def _load() -> str:
    return str(machine().get("loadavg"))


if __name__ == "__main__":
    sys.exit(main())
