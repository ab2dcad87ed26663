"""Command-line entry points (asyncclick): run, update, download, declare, demo.

Each command lives in its own module and only parses options, sets up logging and
calls into the agent, the downloader or the demo; none holds protocol or download logic.
"""

from __future__ import annotations

import asyncclick as click

from trio_fwagent._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-fwagent")
async def cli() -> None:
    """Firmware-update agent for thin-edge.io child devices."""


def main() -> None:
    """Console-script entry point."""
    cli(_anyio_backend="trio")
