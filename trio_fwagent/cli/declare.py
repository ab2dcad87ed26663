"""``trio-fwagent declare``: declare firmware support for a child on the thin-edge device.

Owns only the operations-file bootstrapping step of the thin-edge contract (an empty
``<operations-dir>/<child>/c8y_Firmware`` file). It never talks MQTT or HTTP and never
touches anything outside the operations directory it is given.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import asyncclick as click

from trio_fwagent.cli import cli

DEFAULT_OPERATIONS_DIR = Path("/etc/tedge/operations/c8y")
OPERATION_FILE = "c8y_Firmware"

_FORBIDDEN = frozenset("/\\+#*?")


def child_id_problem(child_id: str) -> str | None:
    """Say why ``child_id`` cannot be used as a child id (and so a directory name).

    Args:
        child_id: the id as given by the user.

    Returns:
        None when the id is acceptable, else a one-line reason.
    """
    if not child_id:
        return "must not be empty"
    if child_id in {".", ".."} or ".." in child_id:
        return "must not contain '..'"
    bad = sorted(set(child_id) & _FORBIDDEN)
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"must not contain {shown} (the id becomes a directory and a topic level)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c.isspace() for c in child_id):
        return "must not contain whitespace or control characters"
    return None


def _validate_child_ids(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for child_id in value:
        problem = child_id_problem(child_id)
        if problem is not None:
            raise click.BadParameter(f"{child_id!r} {problem}", ctx=ctx, param=param)
    return value


def _explain(error: OSError, path: Path) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot create {path}: permission denied. Run it as root (sudo) or as the "
            "user that owns the thin-edge operations directory, or choose another "
            "--operations-dir."
        )
    if error.errno == errno.ENOTDIR:
        return f"cannot create {path}: a part of that path is a file, not a directory."
    if error.errno == errno.EROFS:
        return f"cannot create {path}: the file system is read-only."
    return f"cannot create {path}: {error.strerror or error}"


def declare_child(operations_dir: Path, child_id: str) -> tuple[Path, bool]:
    """Create ``operations_dir/child_id/c8y_Firmware`` if it does not exist.

    Args:
        operations_dir: thin-edge's c8y operations directory.
        child_id: a child id already checked with :func:`child_id_problem`.

    Returns:
        The operation file's path and whether it was created now (False: it existed).

    Raises:
        OSError: when the directory or the file cannot be created.
    """
    path = operations_dir / child_id / OPERATION_FILE
    if path.is_file():
        return path, False
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    return path, True


@cli.command()
@click.option(
    "--child-id",
    "child_ids",
    required=True,
    multiple=True,
    callback=_validate_child_ids,
    metavar="ID",
    help="Child device id (repeat for several children).",
)
@click.option(
    "--operations-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OPERATIONS_DIR,
    show_default=True,
    help="thin-edge's Cumulocity operations directory.",
)
async def declare(child_ids: tuple[str, ...], operations_dir: Path) -> None:
    """Declare firmware-update support for child devices (run on the thin-edge device).

    Creates the empty file OPERATIONS_DIR/<child-id>/c8y_Firmware, which makes
    thin-edge announce c8y_Firmware as a supported operation of that child.
    Running it again is harmless. (thin-edge 1.x can also take this declaration
    over MQTT: a retained {} on te/device/<child-id>///cmd/firmware_update.)

    Exit status: 0 declared (or already declared), 1 not permitted or failed,
    2 bad arguments.

    \b
    Examples:
      sudo trio-fwagent declare --child-id pump-7
      trio-fwagent declare --child-id pump-7 --child-id pump-8 \\
          --operations-dir /tmp/ops
    """
    failed = False
    for child_id in child_ids:
        target = operations_dir / child_id / OPERATION_FILE
        try:
            path, created = declare_child(operations_dir, child_id)
        except OSError as error:
            click.echo(f"error: {_explain(error, target)}", err=True)
            failed = True
            continue
        state = "declared" if created else "already declared"
        click.echo(f"{state}: firmware updates for child {child_id!r} ({path})")
    if failed:
        raise click.exceptions.Exit(1)
