"""Installers, with real processes and a real file system.

Protects: the installer hook contract of DESIGN.md (argv without a shell, FW_* variables,
exit 0 = installed, other exits/signals = failed with the code and the last stderr
lines), bounded memory for a chatty installer, that a timeout kills the installer's
whole process group (even a grandchild that ignores SIGTERM) before the cancellation
propagates, and that the built-in copy installer is atomic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tracemalloc
from pathlib import Path

import pytest
import trio

from trio_fwagent import install
from trio_fwagent.contract import FirmwareRequest
from trio_fwagent.install import (
    InstallError,
    install_copy,
    installer_env,
    run_installer,
    split_command,
)

SHA = "c036cbb7553a909f8b8877d4461924307f27ecb66cff928eeeafd569c3887e29"


def script(tmp_path: Path, body: str, name: str = "installer.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def request() -> FirmwareRequest:
    return FirmwareRequest(
        dialect="legacy",
        child_id="child 1",
        op_id="op-$(rm -rf /)",
        attempt=1,
        name="Open WRT",
        version="22.03 'beta'",
        url="http://127.0.0.1:8000/f",
        sha256=SHA,
        topic="tedge/child 1/commands/req/firmware_update",
    )


def process_is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for a reaper that is not us."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return text[text.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def read_line(path: Path) -> str | None:
    """The file's first line once it has been written completely, else None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text.strip() if text.endswith("\n") else None


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def wait_for_pid(path: Path) -> int:
    with trio.fail_after(10):
        while True:
            line = read_line(path)
            if line is not None:
                return int(line)
            await trio.sleep(0.01)


async def test_exit_zero_means_installed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    installer = script(tmp_path, f'echo noise; echo warn >&2; touch "{marker}"\n')
    await run_installer([str(installer)], dict(os.environ))
    assert marker.exists()


async def test_nonzero_exit_reports_code_and_last_stderr_lines(tmp_path: Path) -> None:
    installer = script(
        tmp_path,
        'i=1; while [ $i -le 12 ]; do echo "line $i" >&2; i=$((i+1)); done\n'
        "echo stdout is not quoted\n"
        "printf 'no newline at end' >&2\n"
        "exit 3\n",
    )
    with pytest.raises(InstallError) as info:
        await run_installer([str(installer)], dict(os.environ), stderr_lines=3)
    assert info.value.exit_code == 3
    assert info.value.reason == (
        "installer exited with code 3: line 11 | line 12 | no newline at end"
    )
    assert str(info.value) == info.value.reason


async def test_blank_stderr_lines_do_not_push_out_the_error(tmp_path: Path) -> None:
    installer = script(
        tmp_path,
        "echo 'flash: partition B is locked' >&2\n"
        "i=0; while [ $i -lt 12 ]; do echo >&2; printf ' \\t\\r\\n' >&2; i=$((i+1)); done\n"
        "exit 4\n",
    )
    with pytest.raises(InstallError) as info:
        await run_installer([str(installer)], dict(os.environ))
    assert info.value.reason == "installer exited with code 4: flash: partition B is locked"


async def test_exit_without_stderr_has_a_plain_reason(tmp_path: Path) -> None:
    with pytest.raises(InstallError) as info:
        await run_installer([str(script(tmp_path, "exit 7\n"))], dict(os.environ))
    assert info.value.reason == "installer exited with code 7"


async def test_arguments_are_passed_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    installer = script(tmp_path, f'for a in "$@"; do echo "[$a]"; done > "{out}"\n')
    await run_installer([str(installer), "a b", "$HOME", "; exit 1"], dict(os.environ))
    assert out.read_text() == "[a b]\n[$HOME]\n[; exit 1]\n"


async def test_huge_stderr_stays_bounded(tmp_path: Path) -> None:
    # 16 MiB in one endless line, then 200k short lines, then the line that matters.
    installer = script(
        tmp_path,
        "head -c 16777216 /dev/zero | tr '\\0' 'x' >&2\n"
        "echo >&2\n"
        "yes spam | head -n 200000 >&2\n"
        "echo 'disk full' >&2\n"
        "exit 1\n",
    )
    tracemalloc.start()
    try:
        with pytest.raises(InstallError) as info:
            await run_installer([str(installer)], dict(os.environ), stderr_lines=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "installer exited with code 1: spam | disk full"
    assert peak < 4 * 1024 * 1024


async def test_long_stderr_line_is_cut(tmp_path: Path) -> None:
    installer = script(tmp_path, "head -c 100000 /dev/zero | tr '\\0' 'y' >&2; exit 2\n")
    with pytest.raises(InstallError) as info:
        await run_installer([str(installer)], dict(os.environ))
    assert info.value.reason == "installer exited with code 2: " + "y" * 512


async def test_environment_carries_the_request_as_data(tmp_path: Path) -> None:
    out = tmp_path / "env"
    installer = script(tmp_path, f'env > "{out}"\n')
    env = installer_env(request(), tmp_path / "fw.bin")
    await run_installer([str(installer)], env)
    got = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert {k: v for k, v in got.items() if k.startswith("FW_") or k == "PATH"} == {
        "FW_FILE": str(tmp_path / "fw.bin"),
        "FW_NAME": "Open WRT",
        "FW_VERSION": "22.03 'beta'",
        "FW_SHA256": SHA,
        "FW_OP_ID": "op-$(rm -rf /)",
        "FW_CHILD_ID": "child 1",
        "FW_URL": "http://127.0.0.1:8000/f",
        "PATH": os.environ["PATH"],
    }


def test_env_without_sha_is_empty_string(tmp_path: Path) -> None:
    from dataclasses import replace

    env = installer_env(replace(request(), sha256=None), tmp_path / "f")
    assert env["FW_SHA256"] == ""


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    gc_file, child_file = tmp_path / "grandchild.pid", tmp_path / "child.pid"
    # The grandchild ignores SIGTERM (so only SIGKILL of the group ends it); the
    # installer itself waits for it forever.
    installer = script(
        tmp_path,
        f'echo $$ > "{child_file}"\n'
        f'sh -c \'trap "" TERM; echo $$ > "{gc_file}"; while :; do sleep 0.05; done\' &\n'
        "wait\n",
    )
    gc_pid = child_pid = 0
    try:
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(30) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        lambda: run_installer([str(installer)], dict(os.environ), kill_grace=0.3)
                    )
                    gc_pid = await wait_for_pid(gc_file)
                    child_pid = await wait_for_pid(child_file)
                    scope.deadline = trio.current_time()  # the timeout fires now
        # Before the cancellation reached us, the group was killed and the installer reaped.
        assert process_is_dead(gc_pid)
        assert not pid_exists(child_pid)
    finally:
        for pid in (gc_pid, child_pid):
            if pid:
                kill_quietly(pid)


async def test_timeout_on_a_well_behaved_installer_needs_only_sigterm(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    installer = script(tmp_path, f'echo $$ > "{child_file}"\nexec sleep 30\n')
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(30) as scope:
            async with trio.open_nursery() as nursery:
                # kill_grace is long: finishing at all proves SIGTERM did the job.
                nursery.start_soon(
                    lambda: run_installer([str(installer)], dict(os.environ), kill_grace=25)
                )
                child_pid = await wait_for_pid(child_file)
                scope.deadline = trio.current_time() + 0.05
    assert not pid_exists(child_pid)


async def test_signal_death_is_named(tmp_path: Path) -> None:
    installer = script(tmp_path, "echo bye >&2; kill -USR1 $$\nsleep 5\n")
    with pytest.raises(InstallError) as info:
        await run_installer([str(installer)], dict(os.environ))
    assert info.value.reason == "installer killed by signal SIGUSR1: bye"
    assert info.value.exit_code == -signal.SIGUSR1


async def test_daemon_holding_stderr_does_not_hang_a_finished_installer(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    installer = script(tmp_path, f'sleep 30 & echo $! > "{pid_file}"\nexit 0\n')
    try:
        with trio.fail_after(15):
            await run_installer([str(installer)], dict(os.environ))
    finally:
        if pid_file.exists():
            kill_quietly(int(pid_file.read_text()))


async def test_an_installer_that_exited_0_before_the_deadline_is_not_a_timeout(
    tmp_path: Path,
) -> None:
    # The deadline comes while a daemon the installer left behind keeps its stderr open
    # (so the agent is still draining it): the installer said "installed", and that holds.
    pid_file = tmp_path / "daemon.pid"
    marker = tmp_path / "installed"
    installer = script(
        tmp_path, f'sleep 0.2; touch "{marker}"; sleep 30 & echo $! > "{pid_file}"\nexit 0\n'
    )
    returned = False
    try:
        with trio.move_on_after(0.6) as scope:
            await run_installer([str(installer)], dict(os.environ))
            returned = True
    finally:
        if pid_file.exists():
            kill_quietly(int(pid_file.read_text()))
    assert marker.exists()
    assert returned and not scope.cancelled_caught
    assert scope.cancel_called  # the deadline did pass while stderr was drained


async def test_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(InstallError) as info:
        await run_installer([str(tmp_path / "nope")], dict(os.environ))
    assert info.value.reason == f"installer not found: {tmp_path / 'nope'}"
    assert info.value.exit_code is None


async def test_missing_command_on_path() -> None:
    with pytest.raises(InstallError, match="installer not found: no-such-installer-xyz"):
        await run_installer(["no-such-installer-xyz"], dict(os.environ))


async def test_file_that_is_not_executable(tmp_path: Path) -> None:
    path = script(tmp_path, "exit 0\n")
    path.chmod(0o644)
    # Even root gets EACCES for a file without any execute bit.
    with pytest.raises(InstallError, match=r"installer not executable: .*permission denied"):
        await run_installer([str(path)], dict(os.environ))


def test_split_command_uses_shell_quoting_rules() -> None:
    assert split_command("/usr/bin/flash --dev '/dev/mtd 0' \"a b\"") == [
        "/usr/bin/flash",
        "--dev",
        "/dev/mtd 0",
        "a b",
    ]
    for bad in ("", "   ", "flash 'open"):
        with pytest.raises(ValueError):
            split_command(bad)


# --- built-in installer ---


async def test_install_copy_replaces_target_atomically(tmp_path: Path) -> None:
    src, target = tmp_path / "fw.bin", tmp_path / "out" / "firmware.img"
    target.parent.mkdir()
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    src.chmod(0o600)
    target.write_bytes(b"old")
    await install_copy(src, target)
    assert target.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["firmware.img"]


async def test_install_copy_into_missing_directory_fails_clearly(tmp_path: Path) -> None:
    src = tmp_path / "fw.bin"
    src.write_bytes(b"x")
    with pytest.raises(InstallError, match="No such file or directory"):
        await install_copy(src, tmp_path / "missing" / "fw.img")


async def test_install_copy_of_missing_source_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"fw\.bin"):
        await install_copy(tmp_path / "fw.bin", tmp_path / "fw.img")
    assert names_in(tmp_path) == []


async def test_cancelled_copy_leaves_target_and_directory_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches so the copy takes thousands of thread hops and can be cancelled mid-way.
    monkeypatch.setattr(install, "_COPY_CHUNK", 4096)
    monkeypatch.setattr(install, "_COPY_CHUNKS_PER_HOP", 1)
    src, target = tmp_path / "fw.bin", tmp_path / "out" / "fw.img"
    target.parent.mkdir()
    src.write_bytes(b"n" * (32 * 1024 * 1024))
    target.write_bytes(b"old")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(install_copy, src, target)
            while True:
                if len(names_in(target.parent)) == 2:  # the temp file appeared
                    break
                await trio.sleep(0.001)
            scope.cancel()
    assert scope.cancelled_caught
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["fw.img"]
