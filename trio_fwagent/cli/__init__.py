"""Command-line entry points (asyncclick): run, update, download, declare, demo.

Each command lives in its own module and only parses options, sets up logging and
calls into the agent, the downloader or the demo; none holds protocol or download logic.
"""

from __future__ import annotations

import importlib

import asyncclick as click

from trio_fwagent._version import __version__
from trio_fwagent.logs import setup_logging

#: Each command's module, imported when the command is asked for: ``--version`` and
#: ``declare`` need not import Trio, httpx and the agent (a third of a second on a small
#: device), and ``run`` need not import the demo.
_COMMAND_MODULES = ("declare", "demo", "download", "run", "update")


class _LazyGroup(click.Group):
    """A group whose commands register themselves when their module is imported."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMAND_MODULES and cmd_name not in self.commands:
            importlib.import_module(f"{__name__}.{cmd_name}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-fwagent")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    envvar="TRIO_FWAGENT_LOG_LEVEL",
    help="Log level of every command [default: info; the demo: error].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="TRIO_FWAGENT_LOG_FORMAT",
    help="Log lines as key=value text or as JSON objects [default: text].",
)
async def cli(log_level: str | None, log_format: str | None) -> None:
    """Firmware-update agent for thin-edge.io child devices.

    Logs go to stderr, one line per event. Run a command with --help for its
    options and examples.

    \b
    Examples:
      trio-fwagent demo
      trio-fwagent run --config /etc/trio-fwagent/agent.toml
      trio-fwagent --log-level debug download https://example.com/fw.bin -o fw.bin
    """
    setup_logging(log_level or "info", log_format or "text")


def main() -> None:
    """Console-script entry point."""
    cli(_anyio_backend="trio")
