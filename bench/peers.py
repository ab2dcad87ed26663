"""The programs the benchmarks time: each runs alone in a fresh interpreter.

``python bench/peers.py KIND ARGS...`` downloads (or hashes) one file and prints one
JSON line: ``{"sha256": ..., "bytes": ..., "elapsed": ...}`` where ``elapsed`` is the
time of the transfer itself, without interpreter start-up and imports. Each kind imports
only what it uses, so a peer's start-up cost and peak RSS are its own.

Owns: the peer implementations (requests streaming and non-streaming, a plain httpx
loop on Trio, hashlib alone, and trio-fwagent's own ``download()`` API). Must not
touch: anything but the destination file it was given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

MIB = 1 << 20


def _emit(sha256: str, size: int, elapsed: float, **extra: object) -> None:
    print(json.dumps({"sha256": sha256, "bytes": size, "elapsed": elapsed, **extra}))


def hash_file(path: Path, *, fsync: bool) -> None:
    """hashlib's SHA-256 of a file in 1 MiB reads (optionally fsync it first)."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(MIB):
            digest.update(chunk)
            size += len(chunk)
    _emit(digest.hexdigest(), size, time.perf_counter() - start)


def requests_stream(url: str, dest: Path, chunk: int) -> None:
    """requests with stream=True, iter_content(chunk), hashlib inline, plain writes."""
    import requests

    start = time.perf_counter()
    digest = hashlib.sha256()
    size = 0
    with requests.get(url, stream=True, timeout=60) as r, dest.open("wb") as f:
        r.raise_for_status()
        for piece in r.iter_content(chunk_size=chunk):
            digest.update(piece)
            f.write(piece)
            size += len(piece)
    _emit(digest.hexdigest(), size, time.perf_counter() - start)


def requests_get(url: str, dest: Path) -> None:
    """requests.get without streaming: the whole body in memory, then hash and write."""
    import requests

    start = time.perf_counter()
    r = requests.get(url, timeout=600)
    r.raise_for_status()
    body = r.content
    dest.write_bytes(body)
    _emit(hashlib.sha256(body).hexdigest(), len(body), time.perf_counter() - start)


def httpx_trio(url: str, dest: Path) -> None:
    """The loop anyone would write first: httpx on Trio, default reads, hash+write inline."""
    import httpx
    import trio

    async def main() -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        async with httpx.AsyncClient() as client, client.stream("GET", url) as r:
            r.raise_for_status()
            with dest.open("wb") as f:
                async for piece in r.aiter_bytes():
                    digest.update(piece)
                    f.write(piece)  # the naive loop, on purpose: blocking write on the event loop
                    size += len(piece)
        return digest.hexdigest(), size

    start = time.perf_counter()
    sha, size = trio.run(main)
    _emit(sha, size, time.perf_counter() - start)


def fwagent_api(url: str, dest: Path, sha256: str | None) -> None:
    """trio-fwagent's ``download()`` API with its defaults."""
    import trio

    from trio_fwagent.download import download

    start = time.perf_counter()
    result = trio.run(lambda: download(url, dest, sha256=sha256))
    elapsed = time.perf_counter() - start
    _emit(
        result.sha256,
        result.size,
        elapsed,
        bytes_received=result.bytes_received,
        resumes=result.resumes,
        restarts=result.restarts,
    )


def main(argv: list[str] | None = None) -> None:
    """Dispatch on the peer kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("hashlib")
    p.add_argument("file", type=Path)
    p.add_argument("--fsync", action="store_true")
    p = sub.add_parser("requests-stream")
    p.add_argument("url")
    p.add_argument("dest", type=Path)
    p.add_argument("--chunk", type=int, default=MIB)
    for kind in ("requests-get", "httpx-trio"):
        p = sub.add_parser(kind)
        p.add_argument("url")
        p.add_argument("dest", type=Path)
    p = sub.add_parser("fwagent-api")
    p.add_argument("url")
    p.add_argument("dest", type=Path)
    p.add_argument("--sha256")
    args = parser.parse_args(argv)
    if args.kind == "hashlib":
        hash_file(args.file, fsync=args.fsync)
    elif args.kind == "requests-stream":
        requests_stream(args.url, args.dest, args.chunk)
    elif args.kind == "requests-get":
        requests_get(args.url, args.dest)
    elif args.kind == "httpx-trio":
        httpx_trio(args.url, args.dest)
    elif args.kind == "fwagent-api":
        fwagent_api(args.url, args.dest, args.sha256)


if __name__ == "__main__":
    main()
