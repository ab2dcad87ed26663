"""A private nginx on loopback, for the tests and the benchmarks.

Owns starting and stopping Debian's nginx as one process (``master_process off``) with
its configuration, pid, logs and temp directories under a given prefix, serving one
directory with sendfile, Range and ETag as nginx does by default, and reading its
access log (status, body bytes, Range and If-Range per request). It never touches a
system-wide nginx and knows nothing about downloads or firmware.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AccessLogEntry", "Nginx", "find_nginx", "running_nginx"]

HOST = "127.0.0.1"

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format probe escape=none
        '$request_method\t$status\t$body_bytes_sent\t$http_range\t$http_if_range';
    access_log {prefix}/access.log probe;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One request as nginx logged it."""

    method: str
    status: int
    body_bytes: int
    range: str | None
    if_range: str | None


@dataclass(frozen=True, slots=True)
class Nginx:
    """A running private nginx serving ``root`` at :attr:`base_url`."""

    root: Path
    port: int
    access_log_path: Path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:port`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    def url(self, name: str) -> str:
        """URL of ``root / name``."""
        return f"{self.base_url}/{name}"

    def access_log(self) -> list[AccessLogEntry]:
        """The requests served so far (nginx writes the line when a request ends)."""
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.access_log_path.read_text().splitlines():
                method, status, sent, range_, if_range = line.split("\t")
                entries.append(
                    AccessLogEntry(
                        method=method,
                        status=int(status),
                        body_bytes=int(sent),
                        range=None if range_ == "-" else range_,
                        if_range=None if if_range == "-" else if_range,
                    )
                )
        return entries

    def served(self) -> tuple[int, int]:
        """(requests answered, body bytes sent) so far."""
        entries = self.access_log()
        return len(entries), sum(e.body_bytes for e in entries)


def find_nginx() -> str | None:
    """Path of the nginx executable (Debian puts it in /usr/sbin), or None."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop nginx quickly (SIGQUIT would wait for downloads; SIGTERM does not)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@contextlib.contextmanager
def running_nginx(root: Path, prefix: Path) -> Iterator[Nginx]:
    """Run nginx serving ``root`` on a free loopback port, its files under ``prefix``.

    Raises:
        RuntimeError: nginx is not installed or did not start.
    """
    binary = find_nginx()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = _free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            _CONF.format(
                # Harmless without a master process; kept for a root master if enabled.
                user="user root;" if os.geteuid() == 0 else "",
                prefix=prefix,
                host=HOST,
                port=port,
                root=root,
            )
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            try:
                yield Nginx(root, port, prefix / "access.log")
            finally:
                _stop(proc)
            return
        exited = proc.poll() is not None
        err = proc.stderr.read().decode(errors="replace") if exited and proc.stderr else ""
        _stop(proc)
        if attempt == 4:
            raise RuntimeError(f"nginx did not start: {err.strip() or 'no answer in 10 s'}")
    raise AssertionError("unreachable")
