"""``trio-fwagent update``: a one-off firmware update without MQTT.

Owns the command's options, the layout of its files in the data directory, the order of
its steps (download, verify, install, clean up) and its exit codes. Downloading is
:mod:`trio_fwagent.download`'s job and installing is :mod:`trio_fwagent.install`'s; this
module only strings them together for a person at a terminal. It never talks MQTT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncclick as click
import trio

from trio_fwagent.cli import cli
from trio_fwagent.cli.download import (
    EXIT_USAGE,
    Interrupted,
    attempts_option,
    check_sha256,
    check_url,
    download_or_exit,
    fail,
    run_interruptible,
    stall_timeout_option,
)
from trio_fwagent.contract import FirmwareRequest
from trio_fwagent.download.verify import file_sha256
from trio_fwagent.install import (
    InstallError,
    install_copy,
    installer_env,
    run_installer,
    split_command,
)
from trio_fwagent.progress import format_bytes

DIALECT = "cli"


def default_data_dir() -> Path:
    """The agent's data dir for root, else a per-user cache directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/trio-fwagent")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trio-fwagent"


def download_path(data_dir: Path, sha256: str) -> Path:
    """Where the image with this checksum is downloaded (the same command finds it again).

    Not in ``downloads/``: that is the agent's, and its start-up sweep deletes partial
    files no operation of its own will resume.
    """
    return data_dir / "cli-downloads" / f"update-{sha256}.bin"


def _file_sha256(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


async def _already_downloaded(dest: Path, sha256: str) -> bool:
    """True if a verified earlier download (e.g. install interrupted) can be reused."""
    # A pure hash: on Ctrl-C the thread may be abandoned (it only reads).
    return await trio.to_thread.run_sync(_file_sha256, dest, abandon_on_cancel=True) == sha256


@cli.command()
@click.option("--url", required=True, callback=check_url, help="Firmware image URL.")
@click.option(
    "--sha256",
    required=True,
    callback=check_sha256,
    metavar="HEX",
    help="Expected SHA-256 of the image; nothing is installed unless it matches.",
)
@click.option("--name", default="firmware", show_default=True, help="Firmware name (FW_NAME).")
@click.option(
    "--version",
    "fw_version",
    default="",
    help="Firmware version (FW_VERSION).",
)
@click.option(
    "--install-command",
    metavar="CMD",
    help="Installer command line (split like a shell would, never run through one). "
    "It gets FW_FILE, FW_NAME, FW_VERSION, FW_SHA256, FW_OP_ID, FW_CHILD_ID; exit 0 = installed.",
)
@click.option(
    "--install-target",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Built-in installer: copy the verified image to this file atomically.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TRIO_FWAGENT_DATA_DIR",
    help="Where the download is kept (in DIR/cli-downloads) while it is incomplete "
    "[default: /var/lib/trio-fwagent as root, else ~/.cache/trio-fwagent].",
)
@click.option("--child-id", default="", help="Value of FW_CHILD_ID for the installer.")
@click.option(
    "--install-timeout",
    type=click.FloatRange(min=0.1),
    default=600.0,
    show_default=True,
    help="Seconds the installer may run before its process group is killed.",
)
@stall_timeout_option
@attempts_option
@click.option("--keep-download", is_flag=True, help="Keep the image in the data dir afterwards.")
async def update(
    url: str,
    sha256: str,
    name: str,
    fw_version: str,
    install_command: str | None,
    install_target: Path | None,
    data_dir: Path | None,
    child_id: str,
    install_timeout: float,
    stall_timeout: float,
    attempts: int,
    keep_download: bool,
) -> None:
    """Update this device once, without MQTT: download, verify, install.

    The image is downloaded resumably into the data dir, its SHA-256 checked, then
    handed to the installer: --install-command (your script) or --install-target
    (an atomic copy to that file). Ctrl-C leaves the partial download in the data
    dir and says where; running the same command again continues it.

    Exit status: 0 installed, 1 update failed (reason printed), 2 bad arguments or
    configuration, 130 interrupted.

    \b
    Examples:
      trio-fwagent update --url http://192.168.1.2:8000/fw/os-2.1.img \\
          --sha256 c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29 \\
          --name os --version 2.1 --install-command '/usr/local/bin/flash --slot B'
      trio-fwagent update --url https://example.com/app.bin --sha256 HEX \\
          --install-target /opt/app/app.bin
    """
    if (install_command is None) == (install_target is None):
        raise fail("give exactly one of --install-command or --install-target", EXIT_USAGE)
    argv: list[str] | None = None
    if install_command is not None:
        try:
            argv = split_command(install_command)
        except ValueError as error:
            raise fail(f"--install-command: {error}", EXIT_USAGE) from None
    if install_target is not None and not install_target.parent.is_dir():
        raise fail(
            f"--install-target: directory {install_target.parent} does not exist", EXIT_USAGE
        )
    data_dir = data_dir if data_dir is not None else default_data_dir()
    dest = download_path(data_dir, sha256)
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise fail(
            f"cannot use data dir {data_dir}: {error.strerror}; choose one with --data-dir",
            EXIT_USAGE,
        ) from None

    started = time.monotonic()
    try:
        reuse = await run_interruptible(lambda: _already_downloaded(dest, sha256))
    except Interrupted as stop:
        click.echo(
            f"interrupted while checking the earlier download {dest}; nothing was installed",
            err=True,
        )
        raise click.exceptions.Exit(stop.exit_code) from None
    if reuse:
        click.echo(f"using the verified download from an earlier run: {dest}", err=True)
    else:
        await _download(url, dest, sha256, attempts, stall_timeout)

    request = FirmwareRequest(
        dialect=DIALECT,
        child_id=child_id,
        op_id=f"cli-{int(time.time())}",
        attempt=1,
        name=name,
        version=fw_version,
        url=url,
        sha256=sha256,
        topic="",
    )
    label = " ".join(part for part in (name, fw_version) if part)
    click.echo(f"installing {label}", err=True)
    try:
        if argv is not None:
            env = installer_env(request, dest)
            await run_interruptible(lambda: _bounded_install(argv, env, install_timeout))
        else:
            assert install_target is not None
            await run_interruptible(lambda: install_copy(dest, install_target))
    except Interrupted as stop:
        click.echo(
            f"interrupted during installation: the installer was stopped and the device "
            f"state is unknown; the verified image is kept in {dest}, so running the same "
            "command again installs it without downloading",
            err=True,
        )
        raise click.exceptions.Exit(stop.exit_code) from None
    except InstallError as error:
        click.echo(f"the verified image is kept in {dest}", err=True)
        raise fail(f"update failed: {error.reason}") from None
    except OSError as error:
        raise fail(f"update failed: cannot install to {install_target}: {error}") from None

    if not keep_download:
        dest.unlink(missing_ok=True)
    click.echo(
        f"updated: {label} installed in {time.monotonic() - started:.1f} s (sha256 {sha256})"
    )


async def _bounded_install(argv: list[str], env: dict[str, str], limit: float) -> None:
    with trio.move_on_after(limit) as scope:
        await run_installer(argv, env)
    if scope.cancelled_caught:
        raise InstallError(f"installer timed out after {limit:g} s and was killed", None)


async def _download(url: str, dest: Path, sha256: str, attempts: int, stall: float) -> None:
    result = await download_or_exit(
        url, dest, sha256=sha256, attempts=attempts, stall_timeout=stall, command="update"
    )
    click.echo(
        f"downloaded and verified {format_bytes(result.size)} in {result.elapsed:.1f} s "
        f"({result.resumes} resumes, {result.restarts} restarts)",
        err=True,
    )
