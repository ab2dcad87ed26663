"""Shared harness for the benchmarks in bench/: services, measured runs, statistics, output.

Owns: private loopback services (nginx, mosquitto, the fault-injecting file server as a
child process), test-file generation, running one measured command in a fresh child
process (wall time, exit status and that child's own peak RSS from ``os.wait4``),
interleaved rounds, medians and ratio tables, the machine description, and writing JSON
(and a PNG when matplotlib happens to be installed) to bench/out/.

Must not touch: anything outside bench/out/ and the temporary directories it creates; it
never imports trio_fwagent at module level (the benchmarks must still run, and say what
is missing, while parts of the package are being written).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trio_fwagent.testing.mosquitto import BrokerStartError, MosquittoBroker, find_mosquitto
from trio_fwagent.testing.nginx import Nginx, find_nginx, running_nginx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PYTHON = sys.executable
PEERS = str(BENCH_DIR / "peers.py")
MIB = 1 << 20
GIB = 1 << 30


class BenchError(Exception):
    """A benchmark could not run or produced a wrong result (a failure, not a slow run)."""


class Skipped(Exception):
    """A benchmark (or one of its rows) cannot run here; the reason says why."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class Options:
    """What run_all.py (or one script run alone) was asked to do."""

    quick: bool = False
    reps: int | None = None
    size: int | None = None
    targets: tuple[str, ...] = ("disk", "tmpfs")
    png: bool = True
    verbose: bool = False


def parse_size(text: str) -> int:
    """Parse ``16M``, ``1G``, ``512k`` or a plain byte count (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": MIB, "G": GIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def fmt_size(n: float) -> str:
    """Format a byte count with a binary unit."""
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.4g} {unit}"
    return f"{int(n)} B"


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries the tables)."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workspace


@dataclass
class Workspace:
    """Temporary directories for one benchmark session, removed at the end.

    ``disk`` lives under bench/out/ (the same filesystem as the repository, i.e. as
    /work); ``tmpfs`` is under /dev/shm when that exists and has room, else None.
    Test files are created once per size and shared by the benchmarks of the session.
    """

    root: Path
    disk: Path
    tmpfs: Path | None
    _files: dict[tuple[int, int], tuple[Path, str]] = field(default_factory=dict)

    def target_dir(self, target: str) -> Path:
        """A fresh empty directory for downloads on ``target`` ("disk" or "tmpfs")."""
        base = self.disk if target == "disk" else self.tmpfs
        if base is None:
            raise Skipped(f"no tmpfs for target {target!r}")
        return Path(tempfile.mkdtemp(prefix="dl-", dir=base))

    def data_file(self, size: int, seed: int = 0) -> tuple[Path, str]:
        """A file of ``size`` incompressible bytes under ``disk/www``, and its SHA-256."""
        key = (size, seed)
        if key not in self._files:
            www = self.disk / "www"
            www.mkdir(exist_ok=True)
            path = www / f"image-{size}-{seed}.bin"
            self._files[key] = (path, make_file(path, size, seed))
        return self._files[key]

    def drop_file(self, size: int, seed: int = 0) -> None:
        """Delete a data file that is no longer needed (frees disk and page cache)."""
        entry = self._files.pop((size, seed), None)
        if entry is not None:
            entry[0].unlink(missing_ok=True)


@contextlib.contextmanager
def workspace(need_tmpfs: int = 0) -> Iterator[Workspace]:
    """Create the session's temporary directories; remove them whatever happens."""
    OUT_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="tmp-", dir=OUT_DIR))
    disk = root / "disk"
    disk.mkdir()
    tmpfs: Path | None = None
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        free = shutil.disk_usage(shm).free
        if free > need_tmpfs:
            tmpfs = Path(tempfile.mkdtemp(prefix="trio-fwagent-bench-", dir=shm))
        else:
            log(f"/dev/shm has {fmt_size(free)} free, {fmt_size(need_tmpfs)} needed: no tmpfs")
    try:
        yield Workspace(root=root, disk=disk, tmpfs=tmpfs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if tmpfs is not None:
            shutil.rmtree(tmpfs, ignore_errors=True)


def make_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their SHA-256 (hex).

    A random 1 MiB block is repeated with a block counter stamped into each copy, so the
    content is incompressible and distinct per MiB without paying for os.urandom per byte.
    """
    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    tag = f"seed={seed};".encode()
    block[8 : 8 + len(tag)] = tag
    with path.open("wb") as f:
        done = 0
        index = 0
        while done < size:
            block[0:8] = index.to_bytes(8, "little")
            piece = memoryview(block)[: min(MIB, size - done)]
            f.write(piece)
            digest.update(piece)
            done += len(piece)
            index += 1
    return digest.hexdigest()


# --------------------------------------------------------------------------- ports, waiting


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- services


@contextlib.contextmanager
def nginx_server(root: Path, *, count_bytes: bool = False) -> Iterator[Nginx]:
    """Serve ``root`` with a private nginx on a free loopback port.

    The same nginx the tests use (:func:`trio_fwagent.testing.nginx.running_nginx`): one
    process, all its paths inside a private temp dir, sendfile, Range and ETag as nginx
    does by default; ``Nginx.served()`` counts requests and body bytes from its access
    log (``count_bytes`` is kept for the callers' sake: the log is always written).
    """
    del count_bytes
    if find_nginx() is None:
        raise Skipped("nginx is not installed (apt-get install nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="nginx-"))
    try:
        with running_nginx(root, tmp) as nginx:
            yield nginx
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def mosquitto_broker(*, tcp_nodelay: bool = False) -> Iterator[int]:
    """A private mosquitto on a free loopback port (anonymous, no persistence); yield port.

    The same broker the tests use (:class:`trio_fwagent.testing.mosquitto.MosquittoBroker`),
    with only its TCP listener; ``tcp_nodelay`` sets mosquitto's ``set_tcp_nodelay``
    (default false, as on thin-edge).
    """
    if find_mosquitto() is None:
        raise Skipped("mosquitto is not installed (apt-get install mosquitto)")
    tmp = Path(tempfile.mkdtemp(prefix="mosquitto-"))
    try:
        broker = MosquittoBroker(
            tmp, websockets=False, tls=False, persistence=False, tcp_nodelay=tcp_nodelay
        )
        try:
            broker.start()
        except BrokerStartError as exc:
            raise BenchError(str(exc)) from None
        try:
            yield broker.tcp_port
        finally:
            broker.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- measured runs


@dataclass(frozen=True, slots=True)
class ProcResult:
    """One finished child process."""

    argv: tuple[str, ...]
    returncode: int
    wall: float
    maxrss_kib: int
    stdout: str
    stderr: str

    def json_line(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object ({} if none)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        return value
        return {}

    def check(self, what: str) -> ProcResult:
        """Raise BenchError (with stderr's tail) unless the process exited 0."""
        if self.returncode != 0:
            tail = "\n    ".join(self.stderr.strip().splitlines()[-8:])
            raise BenchError(f"{what} exited with {self.returncode}:\n    {tail}")
        return self


def digest_of(result: ProcResult) -> str | None:
    """The SHA-256 a peer reported: its JSON line, or sha256sum-style "<hex>  FILE"."""
    got = result.json_line().get("sha256")
    if isinstance(got, str):
        return got
    lines = result.stdout.strip().splitlines()
    return lines[-1].split()[0] if lines and lines[-1].split() else None


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    limit: float = 600.0,
) -> ProcResult:
    """Run ``argv`` in a fresh child; return wall time and that program's own peak RSS.

    Linux charges a child's ``ru_maxrss`` with the memory of the process that forked it
    (the pre-exec image counts), so ``os.wait4`` from this Python process would report
    at least the harness's own size. The command therefore runs under GNU ``time``
    (about 1 MiB, itself measuring with wait4) when installed; otherwise a thread samples
    ``VmHWM`` in /proc every 5 ms after the exec (exact for steady peaks, a lower bound
    for a peak in the last few ms). Output goes to temp files, never pipes. The child
    runs in its own session and is killed (the whole group) after ``limit`` seconds.
    """
    gnu_time = _gnu_time()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file,
    ):
        full = [gnu_time, "-f", "%M", "-o", rss_file.name, *argv] if gnu_time else list(argv)
        start = time.perf_counter()
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        killed: list[bool] = []

        def kill() -> None:
            killed.append(True)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Timer(limit, kill)
        killer.start()
        sampler = None if gnu_time else _HwmSampler(proc.pid)
        try:
            _pid, status, _usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if gnu_time:
            lines = rss_file.read().strip().splitlines()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
            if proc.returncode != 0 and lines and lines[0].startswith("Command terminated"):
                proc.returncode = -1
        else:
            assert sampler is not None
            maxrss = sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if killed:
        stderr += f"\n[bench] killed after {limit} s"
    return ProcResult(
        argv=tuple(argv),
        returncode=proc.returncode,
        wall=wall,
        maxrss_kib=maxrss,
        stdout=stdout,
        stderr=stderr,
    )


_gnu_time_path: list[str | None] = []


def _gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (it understands -f %M -o FILE), else None."""
    if not _gnu_time_path:
        found: str | None = None
        path = "/usr/bin/time"
        if Path(path).exists():
            with tempfile.NamedTemporaryFile("r") as f:
                res = subprocess.run(
                    [path, "-f", "%M", "-o", f.name, "true"], capture_output=True, check=False
                )
                if res.returncode == 0 and f.read().strip().isdigit():
                    found = path
        _gnu_time_path.append(found)
    return _gnu_time_path[0]


class _HwmSampler:
    """Samples a child's VmHWM until stopped; ignores samples from before its exec.

    Before the exec the child still shows this process's command line (and memory).
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._parent_cmdline = Path("/proc/self/cmdline").read_bytes()
        self._peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                if Path(f"/proc/{self._pid}/cmdline").read_bytes() != self._parent_cmdline:
                    self._peak = max(self._peak, read_vm_hwm_kib(self._pid) or 0)
            except OSError:
                pass
            self._done.wait(0.005)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self._peak


def read_vm_hwm_kib(pid: int) -> int | None:
    """Peak RSS so far (VmHWM) of a running process, from /proc; None if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def sync_fs() -> None:
    """Flush dirty pages so one run's write-back does not land in the next run's time."""
    os.sync()


def peer_argv(*args: str) -> list[str]:
    """argv to run one peer of bench/peers.py in a fresh interpreter."""
    return [PYTHON, PEERS, *args]


def fwagent_env() -> dict[str, str]:
    """Environment for children that import trio_fwagent from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def fwagent_feature(module: str, *names: str) -> None:
    """Check that ``from <module> import <names>`` works in a fresh interpreter.

    Raises Skipped while the package directory has no ``__init__.py`` yet (the part is
    not written: the row is left out and said so), BenchError when it exists but does
    not import (broken: CI must notice).
    """
    package = REPO_DIR / Path(*module.split("."))
    if not (package / "__init__.py").exists() and not package.with_suffix(".py").exists():
        raise Skipped(f"{module} is not written yet")
    stmt = f"from {module} import {', '.join(names)}" if names else f"import {module}"
    res = run_measured([PYTHON, "-c", stmt], env=fwagent_env(), limit=60)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        raise BenchError(f"`{stmt}` fails: {lines[-1] if lines else res.returncode}")


def fwagent_cli() -> list[str] | None:
    """argv prefix for the trio-fwagent CLI of this checkout, or None if missing."""
    exe = Path(PYTHON).parent / "trio-fwagent"
    if exe.exists():
        return [str(exe)]
    if (REPO_DIR / "trio_fwagent" / "__main__.py").exists():
        return [PYTHON, "-m", "trio_fwagent"]
    return None


# --------------------------------------------------------------------------- rounds, stats


def interleave(names: Sequence[str], reps: int) -> Iterator[tuple[int, str]]:
    """(round, name) pairs: every name once per round, the order rotated each round.

    A B C, B C A, C A B, ... so that no peer always runs first (cold) or right after
    the heaviest writer.
    """
    n = len(names)
    for r in range(reps):
        for i in range(n):
            yield r, names[(i + r) % n]


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text (and Markdown-compatible) table."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# --------------------------------------------------------------------------- machine, output


def machine() -> dict[str, Any]:
    """What the figures came from: CPU, memory, filesystems, versions, load, date."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_total": _meminfo("MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": _loadavg(),
        "fs_disk": _fs_type(OUT_DIR),
        "fs_tmpfs": _fs_type(Path("/dev/shm")),
    }
    for mod in ("trio", "httpx", "httpcore", "h11", "requests"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    for tool, argv in (("curl", ["curl", "--version"]), ("nginx", [_which_nginx(), "-v"])):
        with contextlib.suppress(Exception):
            res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
            first = (res.stdout or res.stderr).strip().splitlines()[0]
            info[tool] = first
    return info


def _which_nginx() -> str:
    return find_nginx() or "nginx"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo(key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return fmt_size(int(line.split()[1]) * 1024)
    return None


def mem_available() -> int:
    """MemAvailable in bytes (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _loadavg() -> str | None:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return None


def _fs_type(path: Path) -> str | None:
    """Filesystem type and device of the mount that holds ``path``."""
    best: tuple[int, str] | None = None
    target = str(path.resolve()) if path.exists() else str(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and (
                best is None or len(mnt) > best[0]
            ):
                best = (len(mnt), f"{parts[2]} ({parts[0]} on {mnt})")
    return best[1] if best else None


def write_json(name: str, payload: Mapping[str, Any], *, keep: bool = True) -> Path:
    """Write bench/out/<name>-latest.json and (``keep``) bench/out/<name>-<timestamp>.json."""
    OUT_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    latest = OUT_DIR / f"{name}-latest.json"
    latest.write_text(text)
    if not keep:
        return latest
    path = OUT_DIR / f"{name}-{stamp}.json"
    path.write_text(text)
    return path


def write_markdown(name: str, text: str, *, keep: bool = True) -> Path:
    """Write bench/out/<name>-latest.md and (``keep``) a dated copy."""
    OUT_DIR.mkdir(exist_ok=True)
    latest = OUT_DIR / f"{name}-latest.md"
    latest.write_text(text)
    if not keep:
        return latest
    path = OUT_DIR / f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text)
    return path


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def bar_png(
    name: str, title: str, labels: Sequence[str], values: Sequence[float], xlabel: str
) -> Path | None:
    """A horizontal bar chart in bench/out/<name>.png if matplotlib is installed."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except Exception:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(list(labels), list(values))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    path = OUT_DIR / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- bench protocol


@dataclass
class Report:
    """What one benchmark hands back to run_all.py."""

    name: str
    text: str
    data: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


BenchFn = Callable[[Options, Workspace], Report]


def main_for(fn: BenchFn, name: str) -> None:
    """Run one benchmark as a script: ``python bench/<name>.py [--quick] ...``."""
    import argparse

    parser = argparse.ArgumentParser(description=f"trio-fwagent benchmark: {name}")
    add_common_args(parser)
    opts = options_from_args(parser.parse_args())
    with workspace() as ws:
        report = run_one(fn, name, opts, ws)
    emit(report, opts)
    sys.exit(1 if report.failures else 0)


def run_one(fn: BenchFn, name: str, opts: Options, ws: Workspace) -> Report:
    """Run one benchmark; turn Skipped and any exception into a Report saying so."""
    try:
        return fn(opts, ws)
    except Skipped as exc:
        return Report(name, "", {}, skipped=[str(exc)])
    except BenchError as exc:
        return Report(name, "", {}, failures=[str(exc)])
    except Exception:
        return Report(name, "", {}, failures=[traceback.format_exc()])


def add_common_args(parser: Any) -> None:
    """Options shared by run_all.py and the single-benchmark scripts."""
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (CI)")
    parser.add_argument("--reps", type=int, help="rounds per benchmark (default: 3, quick: 1)")
    parser.add_argument("--size", type=parse_size, help="throughput file size, e.g. 256M, 1G")
    parser.add_argument(
        "--targets", default="disk,tmpfs", help="download targets: disk,tmpfs (default both)"
    )
    parser.add_argument("--no-png", action="store_true", help="never draw PNG charts")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")


def options_from_args(args: Any) -> Options:
    """Options from parsed argparse arguments."""
    targets = tuple(t.strip() for t in str(args.targets).split(",") if t.strip())
    bad = set(targets) - {"disk", "tmpfs"}
    if bad:
        raise SystemExit(f"unknown target(s): {', '.join(sorted(bad))}")
    return Options(
        quick=bool(args.quick),
        reps=args.reps,
        size=args.size,
        targets=targets,
        png=not args.no_png,
        verbose=bool(args.verbose),
    )


def emit(report: Report, opts: Options) -> str:
    """Print a report's table, write its JSON, say what failed or was skipped.

    Returns:
        The Markdown that was printed (run_all.py collects it into one report file).
    """
    parts = [f"## {report.name}{' (quick)' if opts.quick else ''}", report.text]
    parts += [f"SKIPPED: {reason}" for reason in report.skipped]
    parts += [f"FAILED: {reason}" for reason in report.failures]
    text = "\n\n".join(p for p in parts if p)
    print("\n" + text)
    payload = {
        "benchmark": report.name,
        "quick": opts.quick,
        "machine": machine(),
        "failures": report.failures,
        "skipped": report.skipped,
        **report.data,
    }
    # Quick runs (CI, development) keep only -latest; full runs keep a dated copy too.
    path = write_json(report.name + ("-quick" if opts.quick else ""), payload, keep=not opts.quick)
    print(f"\n(JSON: {path.relative_to(REPO_DIR)})")
    return text
