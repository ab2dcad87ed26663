"""The agent's configuration: one frozen :class:`Config`, loaded from a TOML file, flags and
environment variables.

Precedence, per key: command-line flag > environment variable ``TRIO_FWAGENT_<KEY>`` >
TOML file (top-level keys) > default. Every value, whatever its source, goes through one
validation path; a bad value raises :class:`ConfigError` naming the key (and the source it
came from), which the CLI turns into exit status 2.

This module owns parsing and validation only. It does not open connections, create
directories or read anything but the config file, the MQTT password file and the TLS files
(loaded once, so that a wrong one is a configuration error at start).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from trio_fwagent.contract.model import check_child_id
from trio_fwagent.install import split_command
from trio_fwagent.mqtt.transport import tls_context

__all__ = ["ENV_PREFIX", "KEYS", "Config", "ConfigError", "load_config"]

ENV_PREFIX = "TRIO_FWAGENT_"
DEFAULT_DATA_DIR = Path("/var/lib/trio-fwagent")

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
DialectName = Literal["legacy", "te", "both"]

# An MQTT topic level we will put a child id into: no separators, no wildcards, no NUL.
_CHILD_ID_RE = re.compile(r"^[^/+#\x00\s]{1,128}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")


class ConfigError(Exception):
    """A configuration value is missing or wrong.

    Attributes:
        key: the configuration key (TOML spelling) that is wrong, or ``"config"`` for the
            file itself.
        message: what is wrong, for a person.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration of ``trio-fwagent run``; field names are the TOML keys."""

    child_id: tuple[str, ...]
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_transport: Literal["tcp", "websockets"] = "tcp"
    mqtt_ws_path: str = "/mqtt"
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_server_name: str | None = None
    mqtt_client_id: str = ""
    mqtt_username: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_keepalive: int = 60
    data_dir: Path = DEFAULT_DATA_DIR
    dialect: DialectName = "legacy"
    install_command: tuple[str, ...] = ()
    install_target: Path | None = None
    install_timeout: float = 600.0
    operation_timeout: float = 3600.0
    stall_timeout: float = 60.0
    executing_interval: float = 300.0
    download_attempts: int = 20
    keep_downloads: bool = False
    allowed_hosts: tuple[str, ...] = ()
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    # Not a key: read from mqtt_password_file at load time, never logged.
    mqtt_password: str | None = dataclasses.field(default=None, repr=False)

    def redacted(self) -> dict[str, object]:
        """Returns the configuration as a plain dict for logging, without secrets."""
        out: dict[str, object] = {}
        for name in KEYS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


# ---------------------------------------------------------------------------------------
# Coercion: each key has one parser that accepts the native TOML type or a string (env and
# flags), and raises ValueError with a short explanation.


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: object) -> str | None:
    s = _str(value).strip()
    return s or None


def _int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    raise ValueError(f"expected an integer, got {type(value).__name__}")


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds, got a boolean")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
    else:
        raise ValueError(f"expected a number of seconds, got {type(value).__name__}")
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return result


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    raise ValueError(f"expected a boolean, got {type(value).__name__}")


def _str_list(value: object) -> tuple[str, ...]:
    """A TOML list of strings, or a comma-separated string (env), or a tuple (flags)."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = []
        for item in value:  # a repeated flag may itself carry commas
            items.extend(item.split(",") if isinstance(item, str) else [item])
    else:
        raise ValueError(f"expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of strings, got an item of {type(item).__name__}")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return tuple(out)


def _path(value: object) -> Path:
    s = _str(value).strip()
    if not s:
        raise ValueError("must not be empty")
    if "\x00" in s:
        raise ValueError("must not contain NUL")
    return Path(s).expanduser()


def _opt_path(value: object) -> Path | None:
    s = _str(value).strip()
    return _path(s) if s else None


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        s = _str(value).strip().lower()
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return s

    return parse


def _child_ids(value: object) -> tuple[str, ...]:
    ids = _str_list(value)
    for child in ids:
        try:
            check_child_id(child)  # the rule the MQTT topics are built with
            usable = bool(_CHILD_ID_RE.match(child))
        except ValueError:
            usable = False
        if not usable:
            raise ValueError(
                f"{child!r} is not a usable child id (1-128 characters, no '/', '+', '#', "
                "whitespace or control characters)"
            )
    return ids


def _port(value: object) -> int:
    port = _int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be between 1 and 65535, got {port}")
    return port


def _keepalive(value: object) -> int:
    keepalive = _int(value)
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"must be between 0 and 65535 seconds, got {keepalive}")
    return keepalive


def _attempts(value: object) -> int:
    attempts = _int(value)
    if attempts < 1:
        raise ValueError(f"must be at least 1, got {attempts}")
    return attempts


def _ws_path(value: object) -> str:
    s = _str(value).strip()
    if not s.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    if not all("!" <= c <= "~" for c in s):
        raise ValueError(
            f"must be printable ASCII without spaces or control characters (percent-encode "
            f"anything else), got {value!r}"
        )
    return s


def _host_problem(host: str) -> str | None:
    """Why ``host`` cannot be looked up as a host name or address, or None if it can."""
    if not _HOST_RE.match(host):
        return "is not a host name or address"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if any(c in host for c in ":[]"):
        return "has a port or brackets"
    try:
        host.encode("idna")  # what the resolver does: every label 1-63 characters
    except UnicodeError:
        return "is not a valid host name (a dot-separated label is empty or over 63 characters)"
    return None


def _host(value: object) -> str:
    s = _str(value).strip()
    problem = _host_problem(s)
    if problem == "has a port or brackets":
        raise ValueError(
            f"{value!r} has a port or brackets: give the bare host name or address "
            "(an IPv6 address without brackets; the port goes in mqtt_port)"
        )
    if problem:
        raise ValueError(f"{problem}: {value!r}")
    return s


def _opt_host(value: object) -> str | None:
    s = _opt_str(value)
    return _host(s) if s is not None else None


def _hosts(value: object) -> tuple[str, ...]:
    hosts = tuple(h.lower() for h in _str_list(value))
    for h in hosts:
        # ".example.com" and "*.example.com" also allow subdomains.
        problem = _host_problem(h[2:] if h.startswith("*.") else h[1:] if h[:1] == "." else h)
        if problem == "has a port or brackets":
            raise ValueError(
                f"{h!r} has a port or brackets, so it never matches: list host names or "
                "addresses without ports (e.g. '127.0.0.1', '::1', 'files.example.com')"
            )
        if problem:
            raise ValueError(f"{h!r} {problem}")
    return hosts


def _command(value: object) -> tuple[str, ...]:
    if isinstance(value, list | tuple):  # TOML may give an argv list
        argv = tuple(_str(v) for v in value)
        if argv and not argv[0]:
            raise ValueError("the program (first word) must not be empty")
    else:
        s = _str(value)
        if not s.strip():
            return ()
        try:
            argv = tuple(split_command(s))
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into words: {exc}") from None
    if any("\x00" in word for word in argv):
        raise ValueError("must not contain NUL (a program argument cannot hold one)")
    return argv


_PARSERS: dict[str, Callable[[object], Any]] = {
    "child_id": _child_ids,
    "mqtt_host": _host,
    "mqtt_port": _port,
    "mqtt_transport": _choice("tcp", "websockets"),
    "mqtt_ws_path": _ws_path,
    "mqtt_tls": _bool,
    "mqtt_ca_file": _opt_path,
    "mqtt_cert_file": _opt_path,
    "mqtt_key_file": _opt_path,
    "mqtt_server_name": _opt_host,
    "mqtt_client_id": _str,
    "mqtt_username": _opt_str,
    "mqtt_password_file": _opt_path,
    "mqtt_keepalive": _keepalive,
    "data_dir": _path,
    "dialect": _choice("legacy", "te", "both"),
    "install_command": _command,
    "install_target": _opt_path,
    "install_timeout": _seconds,
    "operation_timeout": _seconds,
    "stall_timeout": _seconds,
    "executing_interval": _seconds,
    "download_attempts": _attempts,
    "keep_downloads": _bool,
    "allowed_hosts": _hosts,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("text", "json"),
}

#: Every configuration key, in documentation order.
KEYS: tuple[str, ...] = tuple(_PARSERS)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _env(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "config", f"{path} is not valid UTF-8 (byte {exc.start}): save it as UTF-8"
        ) from None
    for key in data:
        if key not in _PARSERS:
            hint = " (did you mean child_id?)" if key in ("child_ids", "children") else ""
            raise ConfigError(key, f"unknown key in {path}{hint}")
    return data


def load_config(
    config_file: Path | None = None,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Builds the configuration from its three sources.

    Args:
        config_file: a TOML file (top-level keys), or None.
        flags: key -> value for the flags given on the command line; a value of None (or an
            empty tuple, for repeatable flags) means "not given".
        env: the environment (usually ``os.environ``); only ``TRIO_FWAGENT_<KEY>`` are read.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the first key that is wrong.
    """
    flags = flags or {}
    env = env if env is not None else {}
    file_values = _read_file(config_file) if config_file is not None else {}
    values: dict[str, object] = {}
    for key, parse in _PARSERS.items():
        raw: object = None
        source = ""
        flag_value = flags.get(key)
        if flag_value is not None and flag_value != ():
            raw, source = flag_value, f"flag {_flag(key)}"
        elif _env(key) in env:
            raw, source = env[_env(key)], f"environment {_env(key)}"
        elif key in file_values:
            raw, source = file_values[key], f"file {config_file}"
        if source:
            try:
                _check_utf8(raw)
                values[key] = parse(raw)
            except ValueError as exc:
                raise ConfigError(key, f"{exc} (from {source})") from None
    for key in flags:
        if key not in _PARSERS:
            raise ConfigError(key, "unknown key")
    return _finish(values)


def _check_utf8(raw: object) -> None:
    """Rejects strings that cannot be encoded as UTF-8 (undecodable bytes in the
    environment or on the command line arrive as lone surrogates)."""
    for item in raw if isinstance(raw, list | tuple) else (raw,):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the value is not valid UTF-8 text") from None


def _check_tls_files(values: dict[str, object]) -> None:
    """Loads the TLS files once, so a wrong one stops the start (exit 2) instead of
    every connection attempt failing forever."""
    ca, cert, key = (
        cast(Path | None, values.get(k))
        for k in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
    )
    if ca is not None:
        try:
            tls_context(ca, None, None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                "mqtt_ca_file", f"{ca} holds no usable CA certificate: {exc}"
            ) from None
    if cert is not None:
        try:
            tls_context(None, cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            what = f"{cert} with the key in {key}" if key else f"{cert} (certificate and key)"
            raise ConfigError(
                "mqtt_cert_file", f"cannot load the client certificate {what}: {exc}"
            ) from None


def _finish(values: dict[str, object]) -> Config:
    """Cross-key checks and derived defaults."""
    children = cast(tuple[str, ...], values.get("child_id", ()))
    if not children:
        raise ConfigError(
            "child_id",
            "at least one child id is needed (--child-id, TRIO_FWAGENT_CHILD_ID or child_id "
            "in the config file)",
        )
    if not values.get("mqtt_client_id"):
        values["mqtt_client_id"] = f"trio-fwagent-{children[0]}"
    client_id = cast(str, values["mqtt_client_id"])
    if len(client_id.encode()) > 65535 or any(c in client_id for c in "\x00+#/"):
        raise ConfigError("mqtt_client_id", f"{client_id!r} is not a usable MQTT client id")

    if not values.get("install_command") and values.get("install_target") is None:
        raise ConfigError(
            "install_command",
            "set install_command (a program run with FW_FILE etc. in its environment) or "
            "install_target (a file the firmware image is copied to)",
        )

    target = cast(Path | None, values.get("install_target"))
    if target is not None and not values.get("install_command"):
        if target.is_dir():
            raise ConfigError(
                "install_target", f"{target} is a directory; give the file to copy the image to"
            )
        if not target.parent.is_dir():
            raise ConfigError(
                "install_target", f"directory {target.parent} (of {target}) does not exist"
            )

    if values.get("mqtt_key_file") is not None and values.get("mqtt_cert_file") is None:
        raise ConfigError("mqtt_key_file", "needs mqtt_cert_file (the client certificate)")
    for key in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file"):
        path = cast(Path | None, values.get(key))
        if path is not None:
            if not path.is_file():
                raise ConfigError(key, f"{path} is not a readable file")
            values["mqtt_tls"] = True  # certificates only make sense with TLS

    _check_tls_files(values)

    password_file = cast(Path | None, values.get("mqtt_password_file"))
    if password_file is not None:
        try:
            values["mqtt_password"] = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("mqtt_password_file", f"cannot read {password_file}: {exc}") from None
        if values.get("mqtt_username") is None:
            raise ConfigError("mqtt_password_file", "needs mqtt_username")

    data_dir = cast(Path, values.get("data_dir", DEFAULT_DATA_DIR))
    values["data_dir"] = Path(os.path.abspath(data_dir))
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError("data_dir", f"{data_dir} exists and is not a directory")

    return Config(**values)  # type: ignore[arg-type]
