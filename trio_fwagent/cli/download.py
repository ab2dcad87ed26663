"""``trio-fwagent download``: a resumable, verified download, like ``curl -C -`` but safe.

Owns the command's options, its progress display and its exit codes, plus the small
helpers the one-off commands share (running a step so that Ctrl-C cancels it cleanly,
describing a partial file). All download logic (ranges, restarts, retries, hashing)
lives in :mod:`trio_fwagent.download`; this module must not reimplement any of it.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncclick as click
import trio

from trio_fwagent.cli import cli
from trio_fwagent.contract import InvalidRequest
from trio_fwagent.contract.model import check_url as check_request_url
from trio_fwagent.download import DownloadError, DownloadResult, RetryPolicy, download
from trio_fwagent.progress import ProgressDisplay, format_bytes

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class Interrupted(Exception):
    """The user interrupted the command (SIGINT or SIGTERM); the step was cancelled.

    Attributes:
        signum: The signal that arrived.
        exit_code: The conventional shell exit status for it (128 + signal number).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


async def run_interruptible(step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` so that SIGINT (Ctrl-C) or SIGTERM cancels it like a deadline would.

    Cancellation, unlike a ``KeyboardInterrupt`` landing anywhere, lets the step keep its
    promises (the downloader keeps its partial file, the installer's process group is
    killed and reaped) before this function reports the interruption.

    Raises:
        Interrupted: a signal arrived and ``step`` was cancelled.
    """
    received: list[int] = []
    scope = trio.CancelScope()
    error: Exception | None = None

    async def watch(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                received.append(signum)
                scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        try:
            with scope:
                result = await step()
        except Exception as exc:  # re-raised below, outside the nursery's exception group
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if received and scope.cancelled_caught:
        raise Interrupted(received[0])
    if error is not None:
        raise error
    return result


def check_sha256(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback: accept 64 hex digits (any case), return them in lowercase."""
    if value is None:
        return None
    if not _SHA256_RE.fullmatch(value):
        raise click.BadParameter("must be 64 hexadecimal digits", ctx=ctx, param=param)
    return value.lower()


def check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """click callback: accept http:// and https:// URLs with a usable host only (the rule
    the agent applies to requests)."""
    try:
        check_request_url(value, "url", None)
    except InvalidRequest as error:
        reason = error.reason.removeprefix("field 'url' ")
        raise click.BadParameter(
            reason.replace("http or https", "http:// or https://"), ctx=ctx, param=param
        ) from None
    return value


def partial_file(dest: Path) -> Path:
    """Where the downloader keeps the unfinished download for ``dest``."""
    return dest.with_name(dest.name + ".part")


def describe_partial(dest: Path) -> str | None:
    """One line naming the partial file for ``dest`` and its size, if there is one.

    An empty partial file (nothing was received) is removed with its sidecar instead:
    there is nothing to resume, and the user should not have to clean up after us.
    """
    part = partial_file(dest)
    try:
        size = part.stat().st_size
    except OSError:
        return None
    if size == 0:
        for leftover in (part, part.with_name(part.name + ".json")):
            leftover.unlink(missing_ok=True)
        return None
    return f"partial download kept: {part} ({format_bytes(size)})"


def fail(message: str, code: int = EXIT_FAILED) -> click.exceptions.Exit:
    """Print ``error: message`` to stderr and return the Exit to raise."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


async def download_or_exit(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    attempts: int,
    stall_timeout: float,
    command: str = "download",
) -> DownloadResult:
    """``download()`` with a progress display, for a person at a terminal.

    On Ctrl-C (or SIGTERM) or a failed download it says what was kept and how to resume,
    then exits (130/143, or 1 with ``<command> failed: <reason>``).
    """
    display = ProgressDisplay(label="download")
    try:
        try:
            result = await run_interruptible(
                lambda: download(
                    url,
                    dest,
                    sha256=sha256,
                    retry=RetryPolicy(max_attempts=attempts),
                    stall_timeout=stall_timeout,
                    on_progress=display,
                )
            )
        except ExceptionGroup as group:  # a DownloadError raised inside a nursery
            matched, _ = group.split(DownloadError)
            if matched is None:
                raise
            raise _first(matched) from None
    except Interrupted as stop:
        display.finish()
        kept = describe_partial(dest)
        click.echo(f"interrupted: {kept or 'nothing downloaded yet'}", err=True)
        if kept:
            click.echo("run the same command again to resume", err=True)
        raise click.exceptions.Exit(stop.exit_code) from None
    except DownloadError as error:
        display.finish()
        kept = describe_partial(dest)
        if kept:
            click.echo(f"{kept}; run the same command again to resume", err=True)
        raise fail(f"{command} failed: {error.reason}") from None
    display.finish()
    return result


def _first(group: BaseExceptionGroup[E]) -> E:
    """The first leaf exception of a (nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


#: Options shared by every command that downloads (``download`` and ``update``).
attempts_option = click.option(
    "--attempts",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Give up the download after this many failed attempts in a row.",
)
stall_timeout_option = click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds without receiving a byte before the connection is retried.",
)


@cli.command("download")
@click.argument("url", callback=check_url)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the file (FILE.part holds it until it is complete and verified).",
)
@click.option(
    "--sha256",
    callback=check_sha256,
    metavar="HEX",
    help="Expected SHA-256; the file is kept only if it matches.",
)
@attempts_option
@stall_timeout_option
async def download_command(
    url: str, output: Path, sha256: str | None, attempts: int, stall_timeout: float
) -> None:
    """Download URL to FILE, resumably and verified, then print its SHA-256.

    An interrupted download (Ctrl-C, a dropped link, a crash) leaves FILE.part
    behind; running the same command again continues from there. Resumes are
    validated (Content-Range must match); a server that ignores Range (like
    thin-edge's own file server) makes it restart cleanly from byte 0. The last
    line on stdout is "<sha256>  FILE", as sha256sum prints it.

    Exit status: 0 done, 1 failed (reason printed), 2 bad arguments,
    130 interrupted (the partial file is kept).

    \b
    Examples:
      trio-fwagent download https://example.com/fw.bin -o fw.bin
      trio-fwagent download http://192.168.1.2:8000/tedge/file-transfer/c1/firmware_update/x \\
          -o /data/fw.img --sha256 c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29
      trio-fwagent download https://example.com/fw.bin -o fw.bin > fw.bin.sha256
    """
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise fail(f"cannot create {output.parent}: {error.strerror}", EXIT_USAGE) from None
    result = await download_or_exit(
        url, output, sha256=sha256, attempts=attempts, stall_timeout=stall_timeout
    )
    click.echo(
        f"downloaded {format_bytes(result.size)} in {result.elapsed:.1f} s "
        f"({format_bytes(result.bytes_received)} received, {result.resumes} resumes, "
        f"{result.restarts} restarts)",
        err=True,
    )
    click.echo(f"{result.sha256}  {output}")
