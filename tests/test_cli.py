"""The one-off commands (update, download, declare) driven as a user would: subprocesses.

Each test runs ``python -m trio_fwagent ...`` against real loopback services and checks
what a person would notice: exit codes, messages, files on disk, the SHA-256 printed,
the bytes the file server had to send. The pure progress formatting is tested directly.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncclick as click
import pytest
import trio

from trio_fwagent.agent import SharedDownloads
from trio_fwagent.cli import cli
from trio_fwagent.cli.declare import child_id_problem
from trio_fwagent.cli.update import download_path
from trio_fwagent.download import RetryPolicy
from trio_fwagent.progress import (
    ProgressDisplay,
    format_bytes,
    format_duration,
    render_line,
)
from trio_fwagent.testing.fileserver import FaultyFileServer

COMMANDS = ["update", "download", "declare", "demo"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (bounded), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "trio_fwagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_examples(command: str) -> None:
    """Each command's help has an Examples block whose lines click kept as written."""
    parent = click.Context(cli, info_name="trio-fwagent")
    cmd = cli.get_command(parent, command)  # imports the command's module (lazy group)
    assert cmd is not None
    ctx = click.Context(cmd, info_name=command, parent=parent)
    text = cmd.get_help(ctx)
    assert "Examples:" in text
    examples = text.split("Examples:", 1)[1]
    assert f"\n    trio-fwagent {command}" in examples  # not re-wrapped into a paragraph
    assert "Exit status" in text or command == "demo"


def test_help_of_the_real_entry_point_exits_0() -> None:
    """`python -m trio_fwagent update --help` works end to end and lists the examples."""
    result = run_cli("update", "--help")
    assert result.returncode == 0, result.stderr
    assert "Examples:" in result.stdout


def test_version_flag_prints_the_version() -> None:
    """--version names the program and its version."""
    from trio_fwagent import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_version_and_declare_do_not_import_the_agent() -> None:
    """Commands' modules load when asked for: --version stays cheap on a small device."""
    probe = (
        "import sys\n"
        "from trio_fwagent.cli import cli\n"
        "try:\n"
        "    cli.main(['--version'], standalone_mode=False, _anyio_backend='trio')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('trio_fwagent.agent', 'httpx', 'trio_fwagent.demo')"
        " if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout, result.stdout


# ----------------------------------------------------------------------------- declare


def test_declare_twice_is_idempotent(tmp_path: Path) -> None:
    """declare creates DIR/<child>/c8y_Firmware, and a second run succeeds unchanged."""
    ops = tmp_path / "ops"
    first = run_cli("declare", "--child-id", "pump-7", "--operations-dir", str(ops))
    assert first.returncode == 0, first.stderr
    target = ops / "pump-7" / "c8y_Firmware"
    assert target.is_file()
    assert target.stat().st_size == 0
    assert "declared" in first.stdout
    second = run_cli("declare", "--child-id", "pump-7", "--operations-dir", str(ops))
    assert second.returncode == 0, second.stderr
    assert "already declared" in second.stdout
    assert sorted(p.name for p in ops.iterdir()) == ["pump-7"]


def test_declare_not_permitted_gives_a_clear_message(tmp_path: Path) -> None:
    """A path that cannot be created (under a file: root ignores modes) fails with exit 1."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run_cli("declare", "--child-id", "c1", "--operations-dir", str(blocker / "ops"))
    assert result.returncode == 1
    assert "cannot create" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad", ["a/b", "..", "x..y", "c+", "c#", "*", "", "a b", "a\\b"])
def test_child_ids_that_would_escape_or_match_wildcards_are_refused(bad: str) -> None:
    """Ids that could leave the operations directory or are MQTT wildcards are refused."""
    assert child_id_problem(bad) is not None
    assert child_id_problem("pump-7.a_b") is None


def test_declare_with_an_unsafe_child_id_is_a_usage_error(tmp_path: Path) -> None:
    """An id with '/' is exit 2, names the option, and creates nothing."""
    result = run_cli("declare", "--child-id", "../etc", "--operations-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--child-id" in result.stderr
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- progress


def test_format_bytes_and_duration() -> None:
    """Sizes use binary units; durations m:ss or h:mm:ss; unknown is --:--."""
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(32 * 1024 * 1024) == "32.0 MiB"
    assert format_duration(65) == "1:05"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "--:--"


def test_render_line_fits_the_width_and_shows_eta() -> None:
    """The bar line never exceeds the terminal width and carries %, rate, ETA, resumes."""
    line = render_line("download", 8 << 20, 32 << 20, 4 << 20, 2, width=100)
    assert len(line) <= 100
    assert " 25%" in line
    assert "4.0 MiB/s" in line
    assert "ETA 0:06" in line
    assert "resumes 2" in line
    assert "[" in line
    narrow = render_line("download", 1, 2, 1.0, width=30)
    assert len(narrow) <= 30


def test_plain_progress_prints_periodic_lines_only() -> None:
    """Off a terminal: no carriage returns, one line per interval, a final line at finish."""
    now = [0.0]
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=False, interval=5.0, clock=lambda: now[0])
    for second in range(12):
        now[0] = float(second)
        display.update(second * 100, 1200, 100.0)
    display.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3  # at t=5, t=10, and the final one
    assert lines[-1].startswith("download: 1.1 KiB / 1.2 KiB")


def test_terminal_progress_redraws_in_place_and_messages_go_above() -> None:
    """On a terminal the bar is redrawn with \\r; a message clears it and is printed whole."""
    now = [0.0]
    out = io.StringIO()
    display = ProgressDisplay(out, interactive=True, clock=lambda: now[0])
    display.update(10, 100, 5.0)
    now[0] = 1.0
    display.message("status: executing")
    display.update(100, 100, 5.0)
    display.finish()
    text = out.getvalue()
    assert "\rdownload [" in text
    assert "\r\x1b[Kstatus: executing\n" in text
    assert text.endswith("\n")


# ----------------------------------------------------------------------------- update / download

INSTALLER = """#!/bin/sh
env | grep '^FW_' | sort > "$0.env"
cp "$FW_FILE" "$0.installed"
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _run_async(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: run_cli(*args))


@pytest.fixture
def installer(tmp_path: Path) -> Path:
    """A shell installer that records its FW_* environment and copies FW_FILE."""
    script = tmp_path / "install.sh"
    script.write_text(INSTALLER)
    script.chmod(0o755)
    return script


async def test_update_downloads_verifies_and_runs_the_installer(
    fault_server: FaultyFileServer, tmp_path: Path, installer: Path
) -> None:
    """update: exit 0, the installer ran once with FW_* set, the download was cleaned up."""
    data = os.urandom(300_000)
    url = fault_server.add_file("/fw.bin", data)
    data_dir = tmp_path / "data"
    result = await _run_async(
        "update", "--url", url, "--sha256", _sha(data).upper(), "--name", "os",
        "--version", "1.2", "--install-command", f"{installer} --slot B",
        "--data-dir", str(data_dir), "--child-id", "c1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "updated: os 1.2" in result.stdout
    env = dict(
        line.split("=", 1) for line in (tmp_path / "install.sh.env").read_text().splitlines()
    )
    assert env["FW_NAME"] == "os"
    assert env["FW_VERSION"] == "1.2"
    assert env["FW_SHA256"] == _sha(data)
    assert env["FW_CHILD_ID"] == "c1"
    assert env["FW_OP_ID"]
    assert (tmp_path / "install.sh.installed").read_bytes() == data
    assert list((data_dir / "cli-downloads").iterdir()) == []  # not kept without --keep-download


async def test_update_with_a_wrong_checksum_fails_without_installing(
    fault_server: FaultyFileServer, tmp_path: Path, installer: Path
) -> None:
    """A SHA-256 mismatch is exit 1 with both digests in the reason; nothing is installed."""
    data = os.urandom(100_000)
    url = fault_server.add_file("/fw.bin", data)
    wrong = "0" * 64
    result = await _run_async(
        "update", "--url", url, "--sha256", wrong, "--install-command", str(installer),
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "update failed" in result.stderr
    assert wrong in result.stderr and _sha(data) in result.stderr
    assert not (tmp_path / "install.sh.env").exists()


async def test_update_installer_failure_is_exit_1_with_its_stderr(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    """A failing installer's exit code and last stderr line make the printed reason."""
    data = b"firmware"
    url = fault_server.add_file("/fw.bin", data)
    result = await _run_async(
        "update", "--url", url, "--sha256", _sha(data), "--data-dir", str(tmp_path / "d"),
        "--install-command", "sh -c 'echo flash chip busy >&2; exit 3'",
    )  # fmt: skip
    assert result.returncode == 1
    assert "code 3" in result.stderr and "flash chip busy" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--sha256", "a" * 64],  # no installer
        ["--sha256", "xyz", "--install-target", "t"],  # not a checksum
        ["--sha256", "a" * 64, "--install-command", "'"],  # unbalanced quote
    ],
)
def test_update_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    """Missing installer, malformed checksum, unusable install command: exit 2, no trace."""
    result = run_cli("update", "--url", "http://127.0.0.1:9/x", *args, "--data-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr.lower()


async def _size(path: Path) -> int:
    try:
        return (await trio.Path(path).stat()).st_size
    except FileNotFoundError:
        return 0


async def _interrupt_when_partial(cmd: list[str], part: Path, log: Path) -> int:
    """Start the CLI, send SIGINT once ``part`` holds some bytes, return its exit code."""
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_fwagent", *cmd], stdout=out, stderr=out
        )
        try:
            with trio.fail_after(30):
                while await _size(part) < 256 * 1024:
                    assert proc.poll() is None, "the command ended before it was interrupted"
                    await trio.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                return await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("command", ["download", "update"])
async def test_ctrl_c_keeps_a_partial_file_and_the_same_command_resumes(
    fault_server: FaultyFileServer, tmp_path: Path, command: str
) -> None:
    """SIGINT: exit 130, the message names the partial file; re-running resumes with a
    Range request, so the server sends < 1.1x the file in total, and the result verifies."""
    data = os.urandom(3 << 20)
    fault_server.faults.throttle = 1 << 20  # slow enough to interrupt mid-way
    url = fault_server.add_file("/fw.bin", data)
    if command == "download":
        out = tmp_path / "out" / "fw.bin"
        cmd = ["download", url, "-o", str(out), "--sha256", _sha(data)]
        part = out.with_name("fw.bin.part")
    else:
        out = tmp_path / "device" / "fw.bin"
        out.parent.mkdir()
        data_dir = tmp_path / "data"
        cmd = ["update", "--url", url, "--sha256", _sha(data), "--install-target", str(out),
               "--data-dir", str(data_dir)]  # fmt: skip
        part = download_path(data_dir, _sha(data)).with_name(f"update-{_sha(data)}.bin.part")

    log = tmp_path / "first.log"
    code = await _interrupt_when_partial(cmd, part, log)
    message = log.read_text()
    assert code == 130, message
    assert str(part) in message
    assert "run the same command again" in message
    assert part.stat().st_size > 0
    assert not out.exists()
    if command == "update":
        # An agent starting on the same data dir sweeps its own downloads/ of leftovers.
        agent_downloads = data_dir / "downloads"
        SharedDownloads(agent_downloads, retry=RetryPolicy(), stall_timeout=1.0).sweep(())
        assert part.stat().st_size > 0

    fault_server.faults.throttle = None
    second = await _run_async(*cmd)
    assert second.returncode == 0, second.stderr
    assert out.read_bytes() == data
    stats = fault_server.stats_for("/fw.bin")
    assert stats.requests == 2
    assert stats.ranges[-1] is not None and stats.ranges[-1].startswith("bytes=")
    assert stats.body_bytes < 1.1 * len(data)
    if command == "download":
        assert second.stdout.splitlines()[-1] == f"{_sha(data)}  {out}"


async def test_download_prints_the_sha256_like_sha256sum(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    """Without --sha256 the file is still saved and its digest printed as '<hex>  <file>'."""
    data = os.urandom(50_000)
    url = fault_server.add_file("/a.bin", data)
    out = tmp_path / "a.bin"
    result = await _run_async("download", url, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{_sha(data)}  {out}\n"
    assert out.read_bytes() == data


async def test_download_of_a_missing_file_fails_with_the_status(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    """A 404 is a permanent failure: exit 1, the status in the reason, no output file."""
    result = await _run_async("download", fault_server.url("/nope"), "-o", str(tmp_path / "x.bin"))
    assert result.returncode == 1
    assert "404" in result.stderr
    assert not (tmp_path / "x.bin").exists()
    # Nothing was received, so nothing is left behind to clean up or "resume".
    assert os.listdir(tmp_path) == []
    assert "partial download kept" not in result.stderr


def _has_open(pid: int, path: Path) -> bool:
    """True if process ``pid`` has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


def test_ctrl_c_while_an_earlier_download_is_checked_installs_nothing(
    tmp_path: Path, installer: Path
) -> None:
    """SIGINT while update re-hashes an image from an earlier run: exit 130 at once, and
    the installer never runs."""
    data_dir = tmp_path / "data"
    sha = "ab" * 32
    earlier = download_path(data_dir, sha)
    earlier.parent.mkdir(parents=True)
    with earlier.open("wb") as f:
        f.truncate(4 << 30)  # sparse: many seconds to hash, no disk space
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_fwagent", "update", "--url", "http://127.0.0.1:9/fw",
         "--sha256", sha, "--install-command", str(installer), "--data-dir", str(data_dir),
         "--attempts", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _has_open(proc.pid, earlier):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "update never opened the earlier download"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "nothing was installed" in err
    assert "Traceback" not in err
    assert not (tmp_path / "install.sh.env").exists()


async def test_download_into_an_unwritable_place_is_one_error_line(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    """A DownloadError raised inside the downloader's nursery is still `error: ...`."""
    url = fault_server.add_file("/fw.bin", b"firmware")
    result = await _run_async("download", url, "-o", "/sys/fw.bin", "--attempts", "1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: download failed: ")
    assert "/sys/fw.bin.part" in result.stderr


@pytest.mark.parametrize(
    "url",
    ["http://fw..example.com/fw.bin", f"http://{'a' * 64}.example.com/x", "http://127.0.0.1:0/x"],
)
def test_download_url_with_an_unusable_host_or_port_is_a_usage_error(
    tmp_path: Path, url: str
) -> None:
    result = run_cli("download", url, "-o", str(tmp_path / "x.bin"), "--attempts", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "Invalid value for 'URL'" in result.stderr
    assert os.listdir(tmp_path) == []
