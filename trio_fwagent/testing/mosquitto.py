"""A private mosquitto broker on loopback, for tests, the demo and the benchmarks.

This module owns one mosquitto process at a time per :class:`MosquittoBroker`: its
configuration file, free ports (plain TCP, WebSocket, TLS), TLS material (made with
``trustme`` on demand), its persistence directory and its log file. It starts, stops
(SIGTERM: mosquitto saves its persistence), kills (SIGKILL: it does not) and restarts
the broker on the same ports with the same persistence. Process management is
synchronous (``subprocess``); async callers use ``trio.to_thread.run_sync``. It must
not touch any system-wide mosquitto, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["BrokerStartError", "MosquittoBroker", "TlsFiles", "find_mosquitto", "free_port"]

HOST = "127.0.0.1"
_START_ATTEMPTS = 5


class BrokerStartError(RuntimeError):
    """mosquitto could not be started (missing binary, port clash, bad config)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of the broker's TLS listener and of a client certificate it trusts."""

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    Args:
        directory: Where the PEM files are written.

    Returns:
        The paths of the files written.
    """
    import trustme  # a test dependency: imported only when TLS is wanted

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("trio-fwagent-client@example.invalid")
    files = TlsFiles(
        ca_file=directory / "ca.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server.key",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert_file))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(files.server_cert_file), append=True)
    server.private_key_pem.write_to_path(str(files.server_key_file))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert_file))
    client.private_key_pem.write_to_path(str(files.client_key_file))
    for path in (files.server_key_file, files.client_key_file):
        path.chmod(0o600)
    return files


class MosquittoBroker:
    """A private mosquitto on loopback: MQTT over TCP, WebSocket, TLS and WebSocket+TLS.

    Ports are chosen on the first :meth:`start` and kept for the broker's lifetime, so a
    restarted broker is found where it was. Use as a context manager or call
    :meth:`close` so that no process outlives its user.

    Args:
        directory: A private directory for the config, the persistence and the log.
        websockets: Open a WebSocket listener (``ws_port``).
        tls: Open a TLS listener (``tls_port``) and, with ``websockets``, a WebSocket
            over TLS one (``wss_port``); needs ``trustme``.
        require_certificate: Make the TLS listener demand a client certificate.
        persistence: Keep sessions and queued messages across restarts.
        tcp_nodelay: Set ``set_tcp_nodelay true``. mosquitto's default (and so thin-edge's)
            is false: Nagle's algorithm then holds a message to a client until that client
            acknowledged the broker's previous segment, up to its delayed-ACK time (40 ms
            on Linux) when messages follow each other closely.
    """

    def __init__(
        self,
        directory: Path,
        *,
        websockets: bool = True,
        tls: bool = True,
        require_certificate: bool = False,
        persistence: bool = True,
        tcp_nodelay: bool = False,
    ) -> None:
        self.directory = directory
        self.host = HOST
        self.websockets = websockets
        self.tls = tls
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.tcp_nodelay = tcp_nodelay
        self.tcp_port = 0
        self.ws_port = 0
        self.tls_port = 0
        self.wss_port = 0
        self.tls_files: TlsFiles | None = None
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self.persistence_dir = directory / "persistence"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start mosquitto and wait until every listener accepts connections.

        Raises:
            BrokerStartError: the binary is missing or the broker did not come up.
        """
        if self.running:
            return
        executable = find_mosquitto()
        if executable is None:
            raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence_dir.mkdir(exist_ok=True)
        if self.tls and self.tls_files is None:
            self.tls_files = make_tls_files(self.directory / "tls")
        first_start = self.tcp_port == 0
        last_error = "no attempt"
        for _ in range(_START_ATTEMPTS):
            if first_start:
                self._pick_ports()
            self._write_config()
            error = self._spawn_and_wait(executable)
            if error is None:
                self.starts += 1
                return
            last_error = error
            if not first_start:
                # Same ports are part of the contract of a restart: retry them a bit.
                time.sleep(0.2)
        raise BrokerStartError(f"mosquitto did not start: {last_error} (log: {self.log_file})")

    def stop(self) -> None:
        """Stop the broker with SIGTERM (it saves its persistence) and reap it."""
        self._signal_and_reap(signal.SIGTERM, grace=10.0)

    def kill(self) -> None:
        """Kill the broker with SIGKILL (no persistence save) and reap it."""
        self._signal_and_reap(signal.SIGKILL, grace=10.0)

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same ports."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker if it runs; safe to call more than once."""
        self.stop()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_text(self) -> str:
        """Return what the broker has logged so far (for test failure messages)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- internals ---------------------------------------------------------------

    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        self.tcp_port, self.ws_port, self.tls_port, self.wss_port = sorted(ports)

    def _listener_ports(self) -> list[int]:
        ports = [self.tcp_port]
        if self.websockets:
            ports.append(self.ws_port)
        if self.tls:
            ports.append(self.tls_port)
        if self.tls and self.websockets:
            ports.append(self.wss_port)
        return ports

    def _write_config(self) -> None:
        lines = [
            "# written by trio_fwagent.testing.mosquitto",
            "per_listener_settings false",
            "allow_anonymous true",
            # Not stdout: mosquitto does not flush it, and a SIGKILL would lose the tail.
            f"log_dest file {self.log_file}",
            "log_type all",
            "log_timestamp_format %H:%M:%S",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to the "mosquitto" user, who cannot write here.
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                # Save after every change, so that a SIGKILL loses as little as possible.
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        lines += [f"listener {self.tcp_port} {HOST}", "protocol mqtt"]
        if self.websockets:
            lines += [f"listener {self.ws_port} {HOST}", "protocol websockets"]
        if self.tls:
            assert self.tls_files is not None
            tls_lines = [
                f"cafile {self.tls_files.ca_file}",
                f"certfile {self.tls_files.server_cert_file}",
                f"keyfile {self.tls_files.server_key_file}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
            lines += [f"listener {self.tls_port} {HOST}", "protocol mqtt", *tls_lines]
            if self.websockets:
                lines += [f"listener {self.wss_port} {HOST}", "protocol websockets", *tls_lines]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _spawn_and_wait(self, executable: str) -> str | None:
        with self.log_file.open("ab") as log:
            log.write(f"=== start {self.starts + 1} ===\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10.0
        pending = self._listener_ports()
        while pending:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                return f"exited with code {code}"
            pending = [port for port in pending if not _port_accepts(port)]
            if not pending:
                break
            if time.monotonic() > deadline:
                self._signal_and_reap(signal.SIGKILL, grace=5.0)
                return f"ports {pending} did not accept within 10 s"
            time.sleep(0.02)
        return None

    def _signal_and_reap(self, signum: signal.Signals, *, grace: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
