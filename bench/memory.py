"""Memory: peak RSS while downloading a large file (4 GiB; target at most 64 MiB).

``python bench/memory.py [--quick] [--size 4G]``

Each peer downloads the same file from a private nginx to disk in its own fresh process;
its peak RSS comes from ``os.wait4`` on that process. Next to trio-fwagent: a
non-streaming ``requests.get`` (the whole body in memory, as the old reference connector
does: its RSS grows with the file), streaming requests and curl as references. The
non-streaming peer gets a smaller file when the machine has too little free memory for
the full size (said in the table).

Owns: the memory table. Must not touch: the peers (bench/peers.py) or the services.
"""

from __future__ import annotations

import shutil

from common import (
    GIB,
    MIB,
    REPO_DIR,
    BenchError,
    Options,
    Report,
    Skipped,
    Workspace,
    digest_of,
    fmt_size,
    fwagent_cli,
    fwagent_env,
    fwagent_feature,
    log,
    mem_available,
    nginx_server,
    peer_argv,
    run_measured,
    sync_fs,
    table,
)

FULL_SIZE = 4 * GIB
QUICK_SIZE = 32 * MIB
TARGET_RSS_MIB = 64


def run(opts: Options, ws: Workspace) -> Report:
    """Download once per peer and record each process's peak RSS."""
    size = QUICK_SIZE if opts.quick else FULL_SIZE
    failures: list[str] = []
    skipped: list[str] = []
    # requests.get holds the body (and briefly a copy of it): keep well clear of the limit.
    greedy_size = size
    room = mem_available() - 512 * MIB
    while greedy_size > 64 * MIB and 3 * greedy_size > room:
        greedy_size //= 2
    if greedy_size != size:
        skipped.append(
            f"non-streaming requests.get uses {fmt_size(greedy_size)}, not {fmt_size(size)}"
            f" ({fmt_size(mem_available())} available)"
        )
    runs: list[tuple[str, int, list[str] | None, str]] = []
    try:
        fwagent_feature("trio_fwagent.download", "download")
        runs.append(("trio-fwagent download() API", size, ["fwagent-api"], "streaming, verified"))
    except Skipped as exc:
        skipped.append(f"trio-fwagent download() API: {exc}")
    cli = fwagent_cli()
    has_cli = cli is not None and (REPO_DIR / "trio_fwagent" / "cli" / "download.py").exists()
    if has_cli:
        runs.append(("trio-fwagent download (CLI)", size, None, "streaming, verified"))
    runs += [
        ("requests stream+hashlib", size, ["requests-stream"], "iter_content(1 MiB)"),
        ("requests.get (non-streaming)", greedy_size, ["requests-get"], "body in memory"),
        ("curl -o", size, [], "no hashing"),
    ]
    rows = []
    data: dict[str, dict[str, object]] = {}
    www = ws.data_file(size)[0].parent
    with nginx_server(www) as nginx:
        for label, n, kind, how in runs:
            source, sha = ws.data_file(n)
            url = f"{nginx.base_url}/{source.name}"
            dest_dir = ws.target_dir("disk")
            dest = dest_dir / "image.bin"
            if kind is None:
                assert cli is not None
                argv = [*cli, "download", url, "-o", str(dest), "--sha256", sha]
            elif not kind:
                argv = ["curl", "-sS", "--fail", "-o", str(dest), url]
            elif kind == ["fwagent-api"]:
                argv = peer_argv("fwagent-api", url, str(dest), "--sha256", sha)
            else:
                argv = peer_argv(*kind, url, str(dest))
            try:
                res = run_measured(argv, env=fwagent_env()).check(label)
                if kind != [] and digest_of(res) != sha:  # curl reports no digest
                    raise BenchError(f"{label}: wrong SHA-256 {digest_of(res)!r}")
            except BenchError as exc:
                failures.append(f"memory {label}: {exc}")
                continue
            finally:
                shutil.rmtree(dest_dir, ignore_errors=True)
                sync_fs()
            rss = res.maxrss_kib / 1024
            fw = label.startswith("trio-fwagent")
            verdict = ("ok" if rss <= TARGET_RSS_MIB else "OVER") if fw else ""
            rows.append([label, fmt_size(n), f"{rss:.1f}", verdict, f"{res.wall:.2f}", how])
            data[label] = {"size": n, "maxrss_kib": res.maxrss_kib, "wall_s": res.wall}
            log(f"memory: {label}: {rss:.1f} MiB peak RSS")
    for n in {size, greedy_size}:
        ws.drop_file(n)
    text = table(
        ["peer", "file", "peak RSS MiB", f"<= {TARGET_RSS_MIB} MiB", "wall s", "how"], rows
    )
    return Report("memory", text, {"size": size, "runs": data}, failures, skipped)


if __name__ == "__main__":
    from common import main_for

    main_for(run, "memory")
