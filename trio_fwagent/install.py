"""Installers: hand a verified firmware file to the device.

Owns the two ways firmware gets applied:

* :func:`run_installer`: an external command (an argv, never a shell) run in its own
  session/process group with ``FW_*`` environment variables. Exit 0 means installed;
  anything else is an :class:`InstallError` with the exit code (or signal) and the last
  lines of stderr. When the caller's cancel scope fires (a timeout), the whole process
  group gets SIGTERM, then SIGKILL after a grace period, and the installer is reaped
  before the cancellation propagates.
* :func:`install_copy`: the built-in installer, an atomic copy of the file to a target
  path (temp file beside it, fsync, rename, fsync dir). The result is mode 0644 and owned
  by the agent's user; nothing of the source but its content is kept.

It must not know about MQTT, the journal or downloads; deadlines are the caller's
cancel scopes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import unicodedata
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from trio_fwagent.contract.model import FirmwareRequest

__all__ = [
    "InstallError",
    "install_copy",
    "installer_env",
    "run_installer",
    "split_command",
]

#: Bytes kept of one stderr line (the start of a line usually names the error).
MAX_STDERR_LINE_BYTES = 512
#: How long to keep reading stderr after the installer exited (a daemon it started may
#: hold the pipe open forever).
_DRAIN_AFTER_EXIT = 1.0
#: Bound on waiting for a SIGKILLed process group to disappear.
_AFTER_KILL_WAIT = 5.0
_POLL_INTERVAL = 0.05
_COPY_CHUNK = 1 << 20
_COPY_CHUNKS_PER_HOP = 16


class InstallError(Exception):
    """The firmware could not be installed.

    Attributes:
        reason: One line a person can act on (also ``str(error)``).
        exit_code: The installer's exit status: a code >= 1, or ``-N`` when it was
            killed by signal N; ``None`` when it never ran (or for :func:`install_copy`).
    """

    def __init__(self, reason: str, exit_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.reason


def split_command(command: str) -> list[str]:
    """Split a configured install command with shell-like quoting (no shell is used).

    Raises:
        ValueError: The command is empty or its quotes are unbalanced.
    """
    argv = shlex.split(command)
    if not argv:
        raise ValueError("install command is empty")
    return argv


def installer_env(request: FirmwareRequest, file: Path) -> dict[str, str]:
    """The installer's environment: ``os.environ`` plus the ``FW_*`` variables.

    ``FW_FILE`` (path of the verified file), ``FW_NAME``, ``FW_VERSION``, ``FW_SHA256``
    (empty when the request had none), ``FW_OP_ID``, ``FW_CHILD_ID`` and ``FW_URL``.
    """
    env = dict(os.environ)
    env.update(
        FW_FILE=str(file),
        FW_NAME=request.name,
        FW_VERSION=request.version,
        FW_SHA256=request.sha256 or "",
        FW_OP_ID=request.op_id,
        FW_CHILD_ID=request.child_id,
        FW_URL=request.url,
    )
    return env


async def run_installer(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stderr_lines: int = 10,
    kill_grace: float = 5.0,
) -> None:
    """Run an installer command to completion.

    stdin and stdout are ``/dev/null``; stderr is read as it comes and only its last
    ``stderr_lines`` lines (each cut to 512 bytes) are kept, so a chatty installer cannot
    exhaust memory.

    Args:
        argv: Program and arguments (``argv[0]`` is looked up on ``PATH`` if it has no
            slash).
        env: The complete environment (see :func:`installer_env`).
        stderr_lines: How many stderr lines to quote in a failure reason.
        kill_grace: Seconds between SIGTERM and SIGKILL when cancelled.

    Raises:
        InstallError: It could not be started, exited non-zero or died by a signal.
        trio.Cancelled: The caller's scope was cancelled; the process group has been
            terminated and the installer reaped first.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("installer argv is empty")
    try:
        proc = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except FileNotFoundError:
        raise InstallError(f"installer not found: {argv[0]}") from None
    except PermissionError:
        raise InstallError(f"installer not executable: {argv[0]} (permission denied)") from None
    except (OSError, ValueError) as exc:
        raise InstallError(f"installer could not start: {argv[0]}: {exc}") from None

    tail = _StderrTail(stderr_lines)
    assert proc.stderr is not None
    exited: list[int] = []
    try:
        await _wait_collecting(proc, proc.stderr, tail, exited)
    except BaseException as exc:
        if not (exited and _is_cancellation(exc)):
            with trio.CancelScope(shield=True):
                await _stop_group(proc, kill_grace)
            raise
        # The installer had already exited when the caller's deadline came (while its
        # stderr was drained): its exit status is the truth, not a timeout. The
        # caller's scope stays cancelled and cancels its next checkpoint.
    finally:
        with trio.CancelScope(shield=True):
            await proc.stderr.aclose()
    code = exited[0]
    if code == 0:
        return
    if code < 0:
        what = f"installer killed by signal {_signal_name(-code)}"
    else:
        what = f"installer exited with code {code}"
    quoted = tail.text()
    raise InstallError(f"{what}: {quoted}" if quoted else what, exit_code=code)


async def _wait_collecting(
    proc: trio.Process, stream: trio.abc.ReceiveStream, tail: _StderrTail, exited: list[int]
) -> None:
    """Waits for the installer while collecting stderr; appends its exit code to
    ``exited`` as soon as it is known, so a cancellation after that cannot lose it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tail.pump, stream)
        exited.append(await proc.wait())
        with trio.move_on_after(_DRAIN_AFTER_EXIT, shield=True):
            await tail.finished.wait()
        nursery.cancel_scope.cancel()


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


async def _stop_group(proc: trio.Process, kill_grace: float) -> None:
    """SIGTERM the installer's process group, SIGKILL it after ``kill_grace``, reap it."""
    pgid = proc.pid  # start_new_session: the installer leads its own group
    _killpg(pgid, signal.SIGTERM)
    with trio.move_on_after(kill_grace):
        await _wait_group_gone(proc, pgid)
        return
    _killpg(pgid, signal.SIGKILL)
    with trio.move_on_after(_AFTER_KILL_WAIT):
        await _wait_group_gone(proc, pgid)


async def _wait_group_gone(proc: trio.Process, pgid: int) -> None:
    """Reap the installer, then wait until no live process is left in its group."""
    await proc.wait()
    # Grandchildren are not our children: there is nothing to wait on but polling.
    while True:
        if not _group_alive(pgid):
            return
        await trio.sleep(_POLL_INTERVAL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for kill(); in a container nobody may reap them. Look closer.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class _StderrTail:
    """The last lines of a stream, in bounded memory."""

    def __init__(self, max_lines: int) -> None:
        self._lines: deque[bytes] = deque(maxlen=max(max_lines, 0))
        self._partial = bytearray()
        self.finished = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                self.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.finished.set()

    def feed(self, data: bytes | bytearray) -> None:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._extend(piece)
            # Blank lines must not push the installer's error out of the tail.
            if _printable(self._partial.decode("utf-8", "replace")):
                self._lines.append(bytes(self._partial))
            self._partial.clear()
        self._extend(rest)

    def _extend(self, piece: bytes | bytearray) -> None:
        room = MAX_STDERR_LINE_BYTES - len(self._partial)
        if room > 0:
            self._partial += piece[:room]

    def text(self) -> str:
        """The kept lines (and an unfinished last line), joined with `` | ``."""
        raw = [*self._lines, bytes(self._partial)] if self._partial else list(self._lines)
        lines = (_printable(line.decode("utf-8", "replace")) for line in raw)
        kept = [line for line in lines if line]
        return " | ".join(kept[-self._lines.maxlen :] if self._lines.maxlen else [])


def _printable(text: str) -> str:
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text).strip()


# --- built-in installer: atomic copy ---


class _Copy:
    def __init__(self, src: Path, target: Path) -> None:
        self.src = src
        self.target = target
        self.src_fd = -1
        self.tmp_fd = -1
        self.tmp_path: str | None = None
        self.buffer = bytearray(_COPY_CHUNK)

    def open(self) -> None:
        self.src_fd = os.open(self.src, os.O_RDONLY | os.O_CLOEXEC)
        self.tmp_fd, self.tmp_path = tempfile.mkstemp(
            prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent
        )

    def copy_some(self) -> bool:
        """Copy up to a batch of chunks; True at end of file."""
        view = memoryview(self.buffer)
        for _ in range(_COPY_CHUNKS_PER_HOP):
            n = os.readv(self.src_fd, [view])
            if n == 0:
                return True
            written = 0
            while written < n:
                written += os.write(self.tmp_fd, view[written:n])
        return False

    def commit(self) -> None:
        assert self.tmp_path is not None
        os.fchmod(self.tmp_fd, 0o644)
        os.fsync(self.tmp_fd)
        os.replace(self.tmp_path, self.target)
        self.tmp_path = None
        dir_fd = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        for fd in (self.src_fd, self.tmp_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.src_fd = self.tmp_fd = -1
        if self.tmp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_path)
            self.tmp_path = None


async def install_copy(src: Path, target: Path) -> None:
    """Atomically replace ``target`` with a copy of ``src`` (the built-in installer).

    The copy runs in worker threads in batches (cancellable between batches); the
    final fsync and rename are shielded so they are never left half done. A cancelled
    or failed copy leaves ``target`` untouched and no temporary file behind. The
    result has mode 0644; the target's directory must exist.

    Raises:
        InstallError: ``src`` cannot be read or ``target`` cannot be written.
    """
    job = _Copy(Path(src), Path(target))
    try:
        await trio.to_thread.run_sync(job.open)
        while not await trio.to_thread.run_sync(job.copy_some):
            pass
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(job.commit)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        where = exc.filename or target
        raise InstallError(f"copy to {target} failed: {where}: {detail}") from exc
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(job.close)
