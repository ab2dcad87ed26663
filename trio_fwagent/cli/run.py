"""``trio-fwagent run``: serve firmware updates for child devices until SIGTERM/SIGINT.

Owns the command's options (one flag per configuration key), turning a bad configuration
into exit status 2 with a message naming the key, and the signal handling: SIGTERM or
SIGINT cancels the agent, which shuts down within a bounded time, and the command exits 0.
Configuration rules live in :mod:`trio_fwagent.config`, the service in
:mod:`trio_fwagent.agent`; this module must not hold either.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import asyncclick as click
import trio

from trio_fwagent.agent import Agent
from trio_fwagent.cli import cli
from trio_fwagent.config import KEYS, Config, ConfigError, load_config
from trio_fwagent.logs import log_event, setup_logging

log = logging.getLogger("trio_fwagent.run")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

_BOOL_KEYS = ("mqtt_tls", "keep_downloads")
_MULTI_KEYS = ("child_id", "allowed_hosts")
_HELP = {
    "child_id": "Child device id to serve (repeatable, or comma-separated).",
    "mqtt_host": "MQTT broker host [127.0.0.1].",
    "mqtt_port": "MQTT broker port [1883].",
    "mqtt_transport": "tcp or websockets [tcp].",
    "mqtt_ws_path": "WebSocket path [/mqtt].",
    "mqtt_tls": "Use TLS to the broker.",
    "mqtt_ca_file": "CA certificate file (PEM) for the broker (implies TLS).",
    "mqtt_cert_file": "Client certificate file (PEM) (implies TLS).",
    "mqtt_key_file": "Client private key file (PEM).",
    "mqtt_server_name": "TLS server name, if not the host.",
    "mqtt_client_id": "MQTT client id [trio-fwagent-<first child id>].",
    "mqtt_username": "MQTT user name.",
    "mqtt_password_file": "File holding the MQTT password.",
    "mqtt_keepalive": "MQTT keep-alive seconds [60].",
    "data_dir": "Journal and downloads [/var/lib/trio-fwagent].",
    "dialect": "legacy (tedge/...), te (te/...) or both [legacy].",
    "install_command": "Installer command, split like a shell would, never run by one.",
    "install_target": "Built-in installer: copy the image to this file.",
    "install_timeout": "Seconds before the installer's process group is killed [600].",
    "operation_timeout": "Seconds for a whole operation [3600].",
    "stall_timeout": "Seconds without download progress before a retry [60].",
    "executing_interval": "Seconds between re-sent 'executing' statuses [300].",
    "download_attempts": "Download attempts before giving up [20].",
    "keep_downloads": "Keep downloaded files after installing.",
    "allowed_hosts": "Allowed download hosts (repeatable; default: any).",
    "log_level": "debug, info, warning or error [info].",
    "log_format": "text (key=value) or json [text].",
}


def _options(func: Any) -> Any:
    """Adds one option per configuration key (values are validated by load_config)."""
    for key in reversed(KEYS):
        flag = "--" + key.replace("_", "-")
        if key in _BOOL_KEYS:
            decl = f"{flag}/--no-{key.replace('_', '-')}"
            func = click.option(decl, key, default=None, help=_HELP[key])(func)
        elif key in _MULTI_KEYS:
            func = click.option(flag, key, multiple=True, metavar="TEXT", help=_HELP[key])(func)
        else:
            func = click.option(flag, key, default=None, metavar="VALUE", help=_HELP[key])(func)
    return func


@cli.command("run")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRIO_FWAGENT_CONFIG",
    help="TOML configuration file (top-level keys as below, with underscores).",
)
@_options
@click.pass_context
async def run_command(ctx: click.Context, /, config_file: Path | None, **flags: Any) -> None:
    """Serve firmware update requests for one or more child devices.

    Every option is also a key of the TOML file (--mqtt-host is mqtt_host) and an
    environment variable (TRIO_FWAGENT_MQTT_HOST). A flag beats the environment,
    which beats the file. Exit status: 0 after SIGTERM/SIGINT, 2 for a bad
    configuration (the message names the key).

    \b
    Example:
      trio-fwagent run --child-id pump1 --data-dir /var/lib/trio-fwagent \\
          --install-command "/usr/local/bin/flash-pump --verbose"
    """
    parent = ctx.parent
    if parent is not None:
        # `trio-fwagent --log-level debug run`: the group's flags count as flags here too.
        for key in ("log_level", "log_format"):
            source = parent.get_parameter_source(key)
            if flags.get(key) is None and source == click.core.ParameterSource.COMMANDLINE:
                flags[key] = parent.params.get(key)
    try:
        config = load_config(config_file, flags, os.environ)
        _prepare_data_dir(config)
    except ConfigError as error:
        click.echo(f"trio-fwagent run: configuration error: {error}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None
    setup_logging(config.log_level, config.log_format)
    log_event(log, "configuration loaded", logging.DEBUG, **config.redacted())
    code = await serve(config)
    if code:
        raise click.exceptions.Exit(code)


def _prepare_data_dir(config: Config) -> None:
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = config.data_dir / ".write-test"
        probe.touch(mode=0o600)
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            "data_dir", f"{config.data_dir} is not a writable directory: {error.strerror}"
        ) from None


async def serve(config: Config) -> int:
    """Runs the agent until SIGTERM or SIGINT.

    Returns:
        The exit status: 0 after a signal, 1 if the agent failed.
    """
    agent = Agent(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log_event(log, "shutting down", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                await agent.run()
                # agent.run only returns when its nursery is done, i.e. never by itself.
                nursery.cancel_scope.cancel()
        except Exception as error:
            log.critical("agent failed", exc_info=error)
            return EXIT_FAILED
    log_event(log, "stopped")
    return EXIT_OK
