"""Packaging (packaging/): the wheel and sdist, the Debian package, the systemd unit, the
example configuration and the example installer scripts.

These tests drive the real tools (``python -m build``, ``packaging/build-deb.sh``,
``dpkg-deb``, ``systemd-analyze``, ``/bin/sh``) and look at what a user would get. The
only stand-ins are fake ``rauc``/``swupdate`` programs on ``PATH`` that record their
arguments: the installer scripts are thin wrappers and the real tools need real A/B
partitions. Building the .deb needs the package index (pip) and takes ~10 s, so those
tests are marked ``slow``; they still run by default.
"""

from __future__ import annotations

import configparser
import hashlib
import marshal
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
EXAMPLES = PACKAGING / "examples"
UNIT = PACKAGING / "systemd" / "trio-fwagent.service"
CONFIG = PACKAGING / "config" / "agent.toml"

PREFIX = "/opt/trio-fwagent"
CONFFILE = "/etc/trio-fwagent/agent.toml"
DATA_DIR = "/var/lib/trio-fwagent"

#: The configuration keys agreed in notes/interfaces.md, in that order.
CONFIG_KEYS = (
    "child_id",
    "mqtt_host",
    "mqtt_port",
    "mqtt_transport",
    "mqtt_ws_path",
    "mqtt_tls",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
    "mqtt_server_name",
    "mqtt_client_id",
    "mqtt_username",
    "mqtt_password_file",
    "mqtt_keepalive",
    "data_dir",
    "dialect",
    "install_command",
    "install_target",
    "install_timeout",
    "operation_timeout",
    "stall_timeout",
    "executing_interval",
    "download_attempts",
    "keep_downloads",
    "allowed_hosts",
    "log_level",
    "log_format",
)

#: A clean environment for running packaged programs: nothing of the test's virtualenv.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _source_version() -> str:
    text = (ROOT / "trio_fwagent" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "trio_fwagent/_version.py must define __version__ = '...'"
    return match.group(1)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        argv, capture_output=True, text=True, timeout=300, **kwargs
    )


# ---------------------------------------------------------------------------------------
# Wheel and sdist


@dataclass(frozen=True, slots=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build``: an sdist, then a wheel built FROM that sdist."""
    out = tmp_path_factory.mktemp("dist")
    result = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("trio_fwagent-*.tar.gz")
    (wheel,) = out.glob("trio_fwagent-*-py3-none-any.whl")
    return Dists(sdist=sdist, wheel=wheel)


def test_wheel_has_package_console_script_and_single_sourced_version(dists: Dists) -> None:
    version = _source_version()
    assert dists.wheel.name == f"trio_fwagent-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        info = f"trio_fwagent-{version}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    for module in ("__init__.py", "_version.py", "cli/__init__.py", "py.typed"):
        assert f"trio_fwagent/{module}" in names
    assert not any(n.startswith(("tests/", "packaging/")) for n in names)
    assert re.search(rf"^Version: {re.escape(version)}$", metadata, re.M)
    assert re.search(r"^Requires-Python: >=3\.11$", metadata, re.M)
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"trio-fwagent": "trio_fwagent.cli:main"}


def test_sdist_carries_what_is_needed_to_rebuild_and_package(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for path in (
        "pyproject.toml",
        "trio_fwagent/_version.py",
        "packaging/build-deb.sh",
        "packaging/systemd/trio-fwagent.service",
        "packaging/config/agent.toml",
        "packaging/examples/install-copy.sh",
        "tests/test_packaging.py",
    ):
        assert path in names, f"{path} missing from the sdist"


# ---------------------------------------------------------------------------------------
# The Debian package


@dataclass(frozen=True, slots=True)
class Deb:
    path: Path
    build_tmp: Path  # TMPDIR of the build: no packaged file may name it
    root: Path  # the package extracted with dpkg-deb -x


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Deb:
    """Runs packaging/build-deb.sh, as a user would, and extracts the result."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian only)")
    out = tmp_path_factory.mktemp("deb-out")
    build_tmp = tmp_path_factory.mktemp("deb-build")
    env = {**os.environ, "TMPDIR": str(build_tmp), "BUILD_PYTHON": sys.executable}
    result = _run(["bash", str(PACKAGING / "build-deb.sh"), "--output", str(out)], env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file()
    assert list(build_tmp.glob("trio-fwagent-deb.*")) == [], "staging directory left behind"
    root = tmp_path_factory.mktemp("deb-root")
    extracted = _run(["dpkg-deb", "-x", str(path), str(root)])
    assert extracted.returncode == 0, extracted.stderr
    return Deb(path=path, build_tmp=build_tmp, root=root)


def _deb_listing(deb: Path) -> dict[str, tuple[str, str, str | None]]:
    """``dpkg-deb -c``: path -> (mode string, owner/group, symlink target)."""
    listing = _run(["dpkg-deb", "-c", str(deb)])
    assert listing.returncode == 0, listing.stderr
    entries: dict[str, tuple[str, str, str | None]] = {}
    for line in listing.stdout.splitlines():
        mode, owner, _size, _date, _time, rest = line.split(None, 5)
        name, _, target = rest.partition(" -> ")
        entries[name.removeprefix(".").rstrip("/") or "/"] = (mode, owner, target or None)
    return entries


@pytest.mark.slow
def test_deb_control_fields_name_version_depends_and_conffile(deb: Deb) -> None:
    fields = _run(["dpkg-deb", "-f", str(deb.path)])
    assert fields.returncode == 0, fields.stderr
    control = dict(
        line.split(": ", 1) for line in fields.stdout.splitlines() if not line.startswith(" ")
    )
    version = _source_version()
    assert control["Package"] == "trio-fwagent"
    assert control["Version"] == f"{version}-1"
    assert control["Architecture"] == "all"
    # The venv is tied to one Python minor version: the package says which.
    depends = re.fullmatch(r"python3 \(>= 3\.(\d+)\), python3 \(<< 3\.(\d+)\)", control["Depends"])
    assert depends, control["Depends"]
    assert int(depends[1]) >= 11 and int(depends[2]) == int(depends[1]) + 1
    assert deb.path.name == f"trio-fwagent_{version}-1_all.deb"

    conffiles = _run(["dpkg-deb", "-I", str(deb.path), "conffiles"])
    assert conffiles.stdout.split() == [CONFFILE]
    info = _run(["dpkg-deb", "-I", str(deb.path)]).stdout
    for script in ("postinst", "prerm", "postrm", "md5sums"):
        assert re.search(rf"\s{script}\s", info), f"{script} missing from the control archive"


@pytest.mark.slow
def test_deb_contents_unit_conffile_link_datadir_and_venv(deb: Deb) -> None:
    entries = _deb_listing(deb.path)
    assert {owner for _mode, owner, _target in entries.values()} == {"root/root"}
    assert entries["/usr/bin/trio-fwagent"][2] == f"{PREFIX}/bin/trio-fwagent"
    assert entries[f"{PREFIX}/bin/trio-fwagent"][0] == "-rwxr-xr-x"
    assert entries[f"{PREFIX}/bin/python3"][2] == "/usr/bin/python3"
    assert f"{PREFIX}/pyvenv.cfg" in entries
    assert entries["/lib/systemd/system/trio-fwagent.service"][0] == "-rw-r--r--"
    assert entries[CONFFILE][0] == "-rw-r--r--"
    assert entries[DATA_DIR][0] == "drwx------"
    for script in ("install-copy.sh", "install-rauc.sh", "install-swupdate.sh"):
        assert entries[f"/usr/share/trio-fwagent/installers/{script}"][0] == "-rwxr-xr-x"
    site = [p for p in entries if re.fullmatch(rf"{PREFIX}/lib/python3\.\d+/site-packages", p)]
    assert len(site) == 1
    for dep in ("trio_fwagent", "trio", "trio_websocket", "httpx", "asyncclick", "anyio"):
        assert f"{site[0]}/{dep}/__init__.py" in entries, f"{dep} is not in the venv"
    assert not any("/site-packages/pip/" in p for p in entries), "the venv should not ship pip"


@pytest.mark.slow
def test_deb_ships_the_unit_and_config_from_packaging_and_they_agree(deb: Deb) -> None:
    unit = (deb.root / "lib/systemd/system/trio-fwagent.service").read_text()
    assert unit == UNIT.read_text()
    assert (deb.root / CONFFILE.lstrip("/")).read_text() == CONFIG.read_text()
    exec_start = _unit_values(unit)["ExecStart"][-1].split()
    # The unit runs what the package links, with the config the package ships.
    assert exec_start[0] == "/usr/bin/trio-fwagent"
    assert (deb.root / "usr/bin/trio-fwagent").is_symlink()
    assert exec_start[1:] == ["run", "--config", CONFFILE]


@pytest.mark.slow
def test_deb_never_names_the_build_directory_and_pycs_name_opt(deb: Deb) -> None:
    needle = str(deb.build_tmp).encode()
    leaks = [
        path
        for path in deb.root.rglob("*")
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes()
    ]
    assert leaks == []
    script = (deb.root / PREFIX.lstrip("/") / "bin/trio-fwagent").read_text()
    assert script.splitlines()[0] == f"#!{PREFIX}/bin/python"
    assert f"VIRTUAL_ENV={PREFIX}\n" in (deb.root / PREFIX.lstrip("/") / "bin/activate").read_text()
    (pyc,) = (deb.root / PREFIX.lstrip("/")).glob(
        "lib/python3.*/site-packages/trio_fwagent/__pycache__/__init__.cpython-*.pyc"
    )
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename.startswith(f"{PREFIX}/lib/python3.")


def _namespace_prefix() -> list[str] | None:
    """An ``unshare`` command line giving a private mount namespace, if this host allows it."""
    if shutil.which("unshare") is None:
        return None
    argv = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        argv.insert(1, "--map-root-user")
    probe = _run([*argv, "true"])
    return argv if probe.returncode == 0 else None


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
def test_packaged_cli_runs_at_its_installed_paths_and_writes_nothing(deb: Deb) -> None:
    """The honest check of the relocation: run /usr/bin/trio-fwagent as installed.

    In a private mount namespace the extracted opt/ is bind-mounted over /opt, so the
    /usr/bin link, the script's #! line, pyvenv.cfg and the .pyc files resolve exactly
    as on a device, and nothing on this machine changes. Without namespaces, the
    extracted script runs under the extracted venv's python (the #! line is checked by
    the test above).
    """
    before = _tree(deb.root)
    namespace = _namespace_prefix()
    probe = "import sys, trio, httpx, trio_fwagent; print(trio_fwagent.__file__, sys.prefix)"
    if namespace is not None:
        script = (
            'mount --bind "$1/opt" /opt && "$1/usr/bin/trio-fwagent" --version'
            f' && {PREFIX}/bin/python -I -c "$2"'
        )
        argv = [*namespace, "sh", "-c", script, "sh", str(deb.root), probe]
        result = _run(argv, env=CLEAN_ENV, cwd=deb.root)
        where = PREFIX
    else:
        venv = deb.root / PREFIX.lstrip("/")
        py = str(venv / "bin/python")
        argv = [py, "-I", str(venv / "bin/trio-fwagent"), "--version"]
        result = _run(argv, env=CLEAN_ENV, cwd=deb.root)
        assert result.returncode == 0, result.stderr
        more = _run([py, "-I", "-c", probe], env=CLEAN_ENV, cwd=deb.root)
        result = subprocess.CompletedProcess(
            result.args, more.returncode, result.stdout + more.stdout, more.stderr
        )
        where = str(venv)
    assert result.returncode == 0, result.stderr
    version_line, module_line = result.stdout.splitlines()[-2:]
    assert version_line == f"trio-fwagent, version {_source_version()}"
    module_file, prefix = module_line.split()
    assert module_file.startswith(f"{where}/lib/python3.")
    assert prefix == where
    assert _tree(deb.root) == before, "running the packaged agent wrote into the package tree"


@pytest.mark.slow
def test_dpkg_install_runs_the_agent_and_registers_the_conffile(deb: Deb) -> None:
    """Opt-in (TRIO_FWAGENT_TEST_DPKG_INSTALL=1, root): a real install, then a purge."""
    if os.environ.get("TRIO_FWAGENT_TEST_DPKG_INSTALL") != "1" or os.geteuid() != 0:
        pytest.skip("set TRIO_FWAGENT_TEST_DPKG_INSTALL=1 as root, on a throw-away machine")
    if _run(["dpkg-query", "-W", "trio-fwagent"]).returncode == 0:
        pytest.skip("trio-fwagent is already installed here; not touching it")
    try:
        installed = _run(["dpkg", "-i", str(deb.path)])
        assert installed.returncode == 0, installed.stderr
        result = _run(["/usr/bin/trio-fwagent", "--version"], env=CLEAN_ENV)
        assert result.stdout.strip() == f"trio-fwagent, version {_source_version()}"
        conffiles = _run(["dpkg-query", "-W", "-f=${Conffiles}", "trio-fwagent"]).stdout
        assert conffiles.split()[0] == CONFFILE
        assert stat.S_IMODE(os.stat(DATA_DIR).st_mode) == 0o700
        assert _run(["dpkg", "-V", "trio-fwagent"]).stdout == ""
    finally:
        purged = _run(["dpkg", "--purge", "trio-fwagent"])
    assert purged.returncode == 0, purged.stderr
    assert not Path(PREFIX).exists() and not Path(CONFFILE).exists()


# ---------------------------------------------------------------------------------------
# The systemd unit


def _unit_values(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (keys may repeat), ignoring sections."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_unit_runs_the_agent_restarts_and_lets_installers_write_devices() -> None:
    values = _unit_values(UNIT.read_text())

    def one(key: str) -> str:
        assert len(values.get(key, [])) == 1, f"{key} should be set once"
        return values[key][0]

    assert one("ExecStart") == f"/usr/bin/trio-fwagent run --config {CONFFILE}"
    assert one("Type") == "exec"
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2"  # a config error does not loop
    assert one("KillSignal") == "SIGTERM"
    assert one("KillMode") == "mixed"  # the agent stops its installer, then reports
    assert one("StateDirectory") == "trio-fwagent"
    assert one("WantedBy") == "multi-user.target"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one(key) == "yes"
    assert one("ProtectSystem") == "full"
    # Any of these would stop an installer from writing a partition or /sys.
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock",
                "ProtectKernelTunables", "CapabilityBoundingSet"):  # fmt: skip
        assert key not in values, f"{key} would break block-device installers"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart's program exists; on a build machine the package is
    # not installed, so point the copy at an executable that exists. Nothing else changes.
    text = UNIT.read_text()
    true = shutil.which("true")
    assert true is not None
    copy = tmp_path / "trio-fwagent.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/trio-fwagent ", f"ExecStart={true} ", 1))
    assert copy.read_text().count(true) == 1
    result = _run(["systemd-analyze", "verify", str(copy)], cwd=tmp_path)
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0, output
    assert [line for line in output if "trio-fwagent" in line] == []


# ---------------------------------------------------------------------------------------
# The example configuration

_KEY_LINE = re.compile(r"^# ([a-z_]+ = .*)$")


def _uncommented_defaults() -> str:
    """The config with every ``# key = default`` line switched on (examples stay off)."""
    return "\n".join(
        m.group(1) for line in CONFIG.read_text().splitlines() if (m := _KEY_LINE.match(line))
    )


def test_example_config_lists_every_key_once_and_sets_nothing() -> None:
    assert tomllib.loads(CONFIG.read_text()) == {}, "the shipped file must only document"
    lines = _uncommented_defaults().splitlines()
    keys = [line.split(" = ", 1)[0] for line in lines]
    assert sorted(keys) == sorted(CONFIG_KEYS)
    assert len(keys) == len(set(keys))
    assert set(tomllib.loads("\n".join(lines))) == set(CONFIG_KEYS)


def test_example_config_defaults_are_the_loaders_defaults(tmp_path: Path) -> None:
    from trio_fwagent import config

    assert tuple(config.KEYS) == CONFIG_KEYS
    defaults_file = tmp_path / "agent.toml"
    defaults_file.write_text(_uncommented_defaults())
    required: Mapping[str, object] = {
        "child_id": ("child1",),
        "install_target": str(tmp_path / "fw.img"),
    }
    documented = config.load_config(defaults_file, flags=required, env={})
    built_in = config.load_config(None, flags=required, env={})
    assert documented == built_in


# ---------------------------------------------------------------------------------------
# The example installers


def _fw_env(image: Path, **extra: str) -> dict[str, str]:
    return {
        **CLEAN_ENV,
        "FW_FILE": str(image),
        "FW_NAME": "fw",
        "FW_VERSION": "1.2.3",
        "FW_SHA256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "FW_OP_ID": "op-1",
        "FW_CHILD_ID": "child1",
        **extra,
    }


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "download" / "fw.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000))
    return path


def test_install_copy_replaces_the_target_atomically(tmp_path: Path, image: Path) -> None:
    target_dir = tmp_path / "slot"
    target_dir.mkdir()
    target = target_dir / "current.img"
    script = str(EXAMPLES / "install-copy.sh")

    first = _run([script, str(target)], env=_fw_env(image))  # no target yet: created
    assert first.returncode == 0, first.stderr
    assert target.read_bytes() == image.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    new_image = image.with_name("fw2.bin")
    new_image.write_bytes(os.urandom(200_000))
    with target.open("rb") as old:
        second = _run([script], env=_fw_env(new_image, INSTALL_TARGET=str(target)))
        assert second.returncode == 0, second.stderr
        # Replaced by rename, not rewritten in place: the old file is intact.
        assert old.read() == image.read_bytes()
    assert target.read_bytes() == new_image.read_bytes()
    assert sorted(os.listdir(target_dir)) == ["current.img"], "temporary file left behind"
    assert "installed fw 1.2.3" in second.stdout


@pytest.mark.parametrize("name", ["with space.img", "back\\slash.img"])
def test_install_copy_verifies_targets_with_odd_names(
    tmp_path: Path, image: Path, name: str
) -> None:
    """sha256sum escapes a file name with a backslash ("\\<hash>"): the check must not."""
    target = tmp_path / name
    env = _fw_env(image)
    result = _run([str(EXAMPLES / "install-copy.sh"), str(target)], env=env)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == image.read_bytes()


def test_install_copy_checksum_mismatch_keeps_the_old_target(tmp_path: Path, image: Path) -> None:
    target = tmp_path / "current.img"
    target.write_bytes(b"old image")
    env = _fw_env(image, FW_SHA256="ab" * 32)
    result = _run([str(EXAMPLES / "install-copy.sh"), str(target)], env=env)
    assert result.returncode == 1
    assert "expected " + "ab" * 32 in result.stderr.splitlines()[-1]
    assert target.read_bytes() == b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.img", "download"]


@pytest.mark.parametrize(
    ("env_change", "message"),
    [
        ({"FW_FILE": ""}, "FW_FILE is not set"),
        ({"FW_FILE": "/nonexistent/fw.bin"}, "does not exist"),
        ({"INSTALL_TARGET": "/nonexistent-dir/current.img"}, "does not exist"),
    ],
)
def test_install_copy_bad_invocation_exits_2_with_a_reason(
    image: Path, env_change: dict[str, str], message: str
) -> None:
    env = {**_fw_env(image), **env_change}
    result = _run([str(EXAMPLES / "install-copy.sh")], env=env)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]


FAKE_TOOL = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$FAKE_LOG"
echo "working..."
[ -z "${FAKE_STDERR:-}" ] || printf '%s\\n' "$FAKE_STDERR" >&2
exit "${FAKE_EXIT:-0}"
"""

TOOLS = [
    pytest.param("install-rauc.sh", "rauc", ["install"], id="rauc"),
    pytest.param("install-swupdate.sh", "swupdate", ["-i"], id="swupdate"),
]


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


def _install_fake(fake_bin: Path, tool: str) -> None:
    fake = fake_bin / tool
    fake.write_text(FAKE_TOOL)
    fake.chmod(0o755)


@pytest.mark.parametrize(("script", "tool", "verb"), TOOLS)
def test_tool_installer_passes_the_image_and_extra_args(
    tmp_path: Path, fake_bin: Path, image: Path, script: str, tool: str, verb: list[str]
) -> None:
    _install_fake(fake_bin, tool)
    log = tmp_path / "args"
    env = _fw_env(image, PATH=f"{fake_bin}:{CLEAN_ENV['PATH']}", FAKE_LOG=str(log))
    result = _run([str(EXAMPLES / script), "--extra", "a b"], env=env)
    assert result.returncode == 0, result.stderr
    if tool == "rauc":
        assert log.read_text().splitlines() == ["install", "--extra", "a b", str(image)]
    else:
        assert log.read_text().splitlines() == ["--extra", "a b", *verb, str(image)]
    assert "installed fw 1.2.3" in result.stdout


@pytest.mark.parametrize(("script", "tool", "verb"), TOOLS)
def test_tool_installer_failure_keeps_the_exit_code_and_ends_with_a_reason(
    tmp_path: Path, fake_bin: Path, image: Path, script: str, tool: str, verb: list[str]
) -> None:
    _install_fake(fake_bin, tool)
    env = _fw_env(
        image,
        PATH=f"{fake_bin}:{CLEAN_ENV['PATH']}",
        FAKE_LOG=str(tmp_path / "args"),
        FAKE_EXIT="3",
        FAKE_STDERR=f"{tool}: signature verification failed",
    )
    result = _run([str(EXAMPLES / script)], env=env)
    assert result.returncode == 3
    *_, tool_line, summary = result.stderr.splitlines()
    assert tool_line == f"{tool}: signature verification failed"
    assert "of fw 1.2.3 failed (exit 3)" in summary


@pytest.mark.parametrize(("script", "tool", "verb"), TOOLS)
def test_tool_installer_without_the_tool_says_so_and_exits_127(
    fake_bin: Path, image: Path, script: str, tool: str, verb: list[str]
) -> None:
    env = _fw_env(image, PATH=str(fake_bin))  # an empty directory: no tool at all
    result = _run([str(EXAMPLES / script)], env=env)
    assert result.returncode == 127
    assert f"{tool} is not installed on this device" in result.stderr.splitlines()[-1]


async def test_installer_stderr_becomes_the_agents_failure_reason(
    tmp_path: Path, fake_bin: Path, image: Path
) -> None:
    """End to end through the agent's own runner: what the cloud would be told."""
    from trio_fwagent.install import InstallError, run_installer

    _install_fake(fake_bin, "rauc")
    env = {
        **os.environ,
        **_fw_env(image, PATH=f"{fake_bin}:{CLEAN_ENV['PATH']}", FAKE_LOG=str(tmp_path / "a")),
        "FAKE_EXIT": "1",
        "FAKE_STDERR": "rauc: Failed to verify bundle: signature invalid",
    }
    with pytest.raises(InstallError) as failure:
        await run_installer([str(EXAMPLES / "install-rauc.sh")], env)
    assert failure.value.exit_code == 1
    assert "signature invalid" in failure.value.reason
    assert "rauc install of fw 1.2.3 failed (exit 1)" in failure.value.reason


def test_shell_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    posix = [*EXAMPLES.glob("*.sh")] + [
        PACKAGING / "debian" / name for name in ("postinst", "prerm", "postrm")
    ]
    result = _run(["shellcheck", "--shell=sh", *map(str, posix)])
    assert result.returncode == 0, result.stdout
    root = PACKAGING.parent
    bash = [PACKAGING / "build-deb.sh", root / "dev", root / ".ci" / "run"]
    result = _run(["shellcheck", *map(str, bash)])
    assert result.returncode == 0, result.stdout
