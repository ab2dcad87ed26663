"""Command-line entry points (asyncclick): run, update, download, declare, demo.

Each command lives in its own module and only parses options, sets up logging and
calls into the agent, the downloader or the demo; none holds protocol or download logic.
"""

from __future__ import annotations

import asyncclick as click

from trio_fwagent._version import __version__
from trio_fwagent.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
      trio-fwagent run --config /etc/trio-fwagent.toml
      trio-fwagent --log-level debug download https://example.com/fw.bin -o fw.bin
    """
    setup_logging(log_level or "info", log_format or "text")


def main() -> None:
    """Console-script entry point."""
    cli(_anyio_backend="trio")


from trio_fwagent.cli import declare as _declare  # noqa: F401,E402
from trio_fwagent.cli import demo as _demo  # noqa: F401,E402
from trio_fwagent.cli import download as _download  # noqa: F401,E402
from trio_fwagent.cli import run as _run  # noqa: F401,E402
from trio_fwagent.cli import update as _update  # noqa: F401,E402
