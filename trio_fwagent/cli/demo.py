"""``trio-fwagent demo``: a complete firmware update on this machine, nothing to configure.

Owns the command's options (and parsing sizes like ``32MiB``), the demo's default log
level and its exit status. The orchestration itself is :mod:`trio_fwagent.demo`; this
module must not start services on its own.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import asyncclick as click
import trio

from trio_fwagent.cli import cli
from trio_fwagent.cli.download import Interrupted, fail, run_interruptible
from trio_fwagent.demo import FAULT_PATTERNS, DemoOptions, DemoSummary, run_demo
from trio_fwagent.logs import setup_logging

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

#: The demo gives up after this long (it normally takes well under 30 seconds).
DEMO_DEADLINE = 120.0


class ByteSize(click.ParamType[int]):
    """A byte count: ``1048576``, ``512k``, ``32MiB``, ``1.5G`` (binary units)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE_RE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size like 4096, 512k or 32MiB", param, ctx)
        number = float(match.group(1)) * _FACTORS[match.group(2).lower()]
        if number < 1:
            self.fail("must be at least 1 byte", param, ctx)
        return int(number)


_FAULTS_HELP = "; ".join(f"{name}: {what}" for name, what in FAULT_PATTERNS.items())


@cli.command()
@click.option(
    "--size", type=ByteSize(), default="32MiB", show_default=True, help="Firmware image size."
)
@click.option(
    "--faults",
    type=click.Choice(list(FAULT_PATTERNS)),
    default="drops",
    show_default=True,
    help=f"What goes wrong on the link. {_FAULTS_HELP}.",
)
@click.option(
    "--transport",
    type=click.Choice(["tcp", "websockets"]),
    default="tcp",
    show_default=True,
    help="MQTT transport.",
)
@click.option(
    "--broker",
    type=click.Choice(["auto", "mosquitto", "builtin"]),
    default="auto",
    show_default=True,
    help="auto: mosquitto if it is installed and can serve the transport, "
    "else the built-in Trio broker.",
)
@click.option(
    "--rate",
    type=ByteSize(),
    default="8MiB",
    show_default=True,
    help="Link speed per second (the file server is throttled to it).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the temporary directory (image, journal, mosquitto's log) and print its path.",
)
async def demo(size: int, faults: str, transport: str, broker: str, rate: int, keep: bool) -> None:
    """Run a whole firmware update on this machine, over a flaky simulated link.

    Starts, all on 127.0.0.1 and in a temporary directory: a private MQTT broker,
    a file server serving a generated image through injected faults, the agent,
    and a simulated thin-edge c8y-firmware-plugin that requests the update. Shows
    the download progress and each status as it passes, then a summary.

    Exit status: 0 the update succeeded and the installed file verified, 1 it
    did not (or a service could not start), 2 bad arguments, 130 interrupted.

    \b
    Examples:
      trio-fwagent demo
      trio-fwagent demo --size 256MiB --rate 64MiB --faults range-less
      trio-fwagent demo --transport websockets --faults stalls --keep
    """
    root = click.get_current_context().find_root()
    if root.params.get("log_level") is None:
        setup_logging("error", root.params.get("log_format") or "text")
    options = DemoOptions(
        size=size,
        faults=faults,
        transport="websockets" if transport == "websockets" else "tcp",
        broker="mosquitto"
        if broker == "mosquitto"
        else "builtin"
        if broker == "builtin"
        else "auto",
        rate=rate,
        keep=keep,
    )
    summary: DemoSummary | None = None

    async def bounded() -> DemoSummary | None:
        with trio.move_on_after(DEMO_DEADLINE):
            return await run_demo(options, sys.stdout)
        return None

    try:
        summary = await run_interruptible(bounded)
    except Interrupted as stop:
        click.echo("interrupted: the demo stopped and cleaned up", err=True)
        raise click.exceptions.Exit(stop.exit_code) from None
    except Exception as error:  # a service did not come up: say which, without a traceback
        raise fail(f"the demo could not run: {_describe(error)}") from None
    if summary is None:
        raise fail(f"the demo did not finish within {DEMO_DEADLINE:g} s")
    click.echo(summary.render())
    if not summary.succeeded:
        raise click.exceptions.Exit(1)


def _describe(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"
