"""Configuration: sources, precedence, validation (a bad value names its key), and the
``run`` command's exit status 2 for a bad configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from trio_fwagent.config import KEYS, Config, ConfigError, load_config

BASE = {"child_id": ("c1",), "install_target": "/tmp/fw.img"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_documented_keys() -> None:
    config = load_config(None, BASE, {})
    assert config.child_id == ("c1",)
    assert config.mqtt_host == "127.0.0.1"
    assert config.mqtt_port == 1883
    assert config.mqtt_transport == "tcp"
    assert config.mqtt_ws_path == "/mqtt"
    assert config.mqtt_tls is False
    assert config.mqtt_client_id == "trio-fwagent-c1"
    assert config.mqtt_keepalive == 60
    assert config.data_dir == Path("/var/lib/trio-fwagent")
    assert config.dialect == "legacy"
    assert config.install_command == ()
    assert config.install_target == Path("/tmp/fw.img")
    assert config.install_timeout == 600
    assert config.operation_timeout == 3600
    assert config.stall_timeout == 60
    assert config.executing_interval == 300
    assert config.download_attempts == 20
    assert config.keep_downloads is False
    assert config.allowed_hosts == ()
    assert (config.log_level, config.log_format) == ("info", "text")


def test_every_key_is_a_config_field() -> None:
    assert set(KEYS) <= set(Config.__dataclass_fields__)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        'child_id = ["filechild"]\nmqtt_port = 1111\nmqtt_host = "file.example"\n'
        'install_target = "/tmp/x"\nstall_timeout = 5\n',
    )
    env = {"TRIO_FWAGENT_MQTT_PORT": "2222", "TRIO_FWAGENT_MQTT_HOST": "env.example"}
    flags = {"mqtt_port": "3333", "mqtt_host": None, "child_id": ()}
    config = load_config(toml, flags, env)
    assert config.mqtt_port == 3333  # flag beats env and file
    assert config.mqtt_host == "env.example"  # env beats file (flag not given)
    assert config.child_id == ("filechild",)  # file beats default (empty flag = not given)
    assert config.stall_timeout == 5.0
    assert config.operation_timeout == 3600.0  # default


def test_env_values_are_parsed_by_type(tmp_path: Path) -> None:
    env = {
        "TRIO_FWAGENT_CHILD_ID": "a, b,a",
        "TRIO_FWAGENT_INSTALL_COMMAND": "/bin/flash --image 'my file'",
        "TRIO_FWAGENT_KEEP_DOWNLOADS": "yes",
        "TRIO_FWAGENT_ALLOWED_HOSTS": "Example.COM,files.local",
        "TRIO_FWAGENT_EXECUTING_INTERVAL": "2.5",
        "TRIO_FWAGENT_DATA_DIR": str(tmp_path / "data"),
        "UNRELATED": "x",
    }
    config = load_config(None, {}, env)
    assert config.child_id == ("a", "b")
    assert config.install_command == ("/bin/flash", "--image", "my file")
    assert config.keep_downloads is True
    assert config.allowed_hosts == ("example.com", "files.local")
    assert config.executing_interval == 2.5
    assert config.data_dir == tmp_path / "data"


def test_repeated_flags_collect_children() -> None:
    config = load_config(None, {"child_id": ("c1", "c2,c3"), "install_target": "/x"}, {})
    assert config.child_id == ("c1", "c2", "c3")


@pytest.mark.parametrize(
    ("flags", "env", "key", "words"),
    [
        ({"mqtt_port": "abc"}, {}, "mqtt_port", "integer"),
        ({"mqtt_port": "70000"}, {}, "mqtt_port", "65535"),
        ({}, {"TRIO_FWAGENT_MQTT_TRANSPORT": "udp"}, "mqtt_transport", "tcp, websockets"),
        ({"operation_timeout": "-1"}, {}, "operation_timeout", "positive"),
        ({"install_timeout": "soon"}, {}, "install_timeout", "seconds"),
        ({"keep_downloads": "maybe"}, {}, "keep_downloads", "true or false"),
        ({}, {"TRIO_FWAGENT_KEEP_DOWNLOADS": "maybe"}, "keep_downloads", "TRIO_FWAGENT_"),
        ({"dialect": "v2"}, {}, "dialect", "legacy"),
        ({"child_id": ("bad/child",)}, {}, "child_id", "child id"),
        ({"child_id": ("wild+",)}, {}, "child_id", "child id"),
        ({"install_command": "flash 'unbalanced"}, {}, "install_command", "split"),
        ({"mqtt_ws_path": "mqtt"}, {}, "mqtt_ws_path", "'/'"),
        ({"download_attempts": "0"}, {}, "download_attempts", "at least 1"),
        ({"log_format": "xml"}, {}, "log_format", "text, json"),
        ({"mqtt_ca_file": "/nonexistent/ca.pem"}, {}, "mqtt_ca_file", "not a readable file"),
        ({"mqtt_password_file": "/nonexistent/pw"}, {}, "mqtt_password_file", "cannot read"),
        # Values that used to pass here and crash `run` later (exit 1, a traceback):
        ({"mqtt_host": "gw..local"}, {}, "mqtt_host", "label is empty"),
        ({"mqtt_host": "a" * 64 + ".local"}, {}, "mqtt_host", "over 63"),
        ({"mqtt_host": "127.0.0.1:1883"}, {}, "mqtt_host", "mqtt_port"),
        ({"mqtt_server_name": "broker..local"}, {}, "mqtt_server_name", "label is empty"),
        ({"mqtt_ws_path": "/my mqtt"}, {}, "mqtt_ws_path", "without spaces"),
        ({"mqtt_ws_path": "/mqtt\x7f"}, {}, "mqtt_ws_path", "control characters"),
        ({"child_id": ("pump\x7f1",)}, {}, "child_id", "control characters"),
        ({"child_id": ()}, {"TRIO_FWAGENT_CHILD_ID": "pump\udce91"}, "child_id", "UTF-8"),
        ({}, {"TRIO_FWAGENT_MQTT_CLIENT_ID": "ab\udcff"}, "mqtt_client_id", "UTF-8"),
        ({"mqtt_username": "\udcffroot"}, {}, "mqtt_username", "UTF-8"),
        ({"allowed_hosts": ("127.0.0.1:8000",)}, {}, "allowed_hosts", "without ports"),
        ({"allowed_hosts": ("[::1]",)}, {}, "allowed_hosts", "without ports"),
        ({"allowed_hosts": (".files..example",)}, {}, "allowed_hosts", "label is empty"),
        ({"install_target": "/tmp"}, {}, "install_target", "is a directory"),
        ({"install_target": "/nonexistent/dir/fw.img"}, {}, "install_target", "does not exist"),
        ({"install_command": ("/bin/true", "a\x00b")}, {}, "install_command", "NUL"),
        ({"install_command": "/bin/flash a\x00b"}, {}, "install_command", "NUL"),
    ],
)
def test_bad_value_names_its_key(
    flags: dict[str, object], env: dict[str, str], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {**BASE, **flags}, env)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert words in str(info.value)


def test_hosts_that_resolve_are_accepted() -> None:
    config = load_config(
        None,
        {
            **BASE,
            "mqtt_host": "gw.local.",
            "mqtt_server_name": "a" * 63 + ".example",
            "allowed_hosts": ("::1", "*.Example.com", ".files.local", "10.0.0.1", "my_host"),
        },
        {},
    )
    assert config.mqtt_host == "gw.local."
    assert config.allowed_hosts == ("::1", "*.example.com", ".files.local", "10.0.0.1", "my_host")


def test_install_target_is_only_checked_when_it_is_the_installer() -> None:
    config = load_config(None, {**BASE, "install_command": "/bin/true", "install_target": "/"}, {})
    assert config.install_command == ("/bin/true",)


def test_readme_quotes_the_real_missing_child_id_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"install_target": "/x"}, {})
    readme = Path(__file__).parent.parent / "README.md"
    assert f"`{info.value}`" in " ".join(readme.read_text().split())


def test_missing_child_id_and_installer_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"install_target": "/x"}, {})
    assert info.value.key == "child_id"
    with pytest.raises(ConfigError) as info:
        load_config(None, {"child_id": ("c1",)}, {})
    assert info.value.key == "install_command"


def test_file_errors_name_the_key_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'child_id = ["c1"]\nmqtt_prot = 1\n'), {}, {})
    assert info.value.key == "mqtt_prot"  # a typo is not silently ignored
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "child_id = [1]\n"), {}, {})
    assert info.value.key == "child_id"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "mqtt_port = \n"), {}, {})
    assert info.value.key == "config"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml", {}, {})
    assert info.value.key == "config"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'mqtt_tls = "yes please"\n'), BASE, {})
    assert info.value.key == "mqtt_tls"
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'child_id = ["c1"]\n# r\xe9glages\n')
    with pytest.raises(ConfigError) as info:
        load_config(latin1, BASE, {})
    assert info.value.key == "config"
    assert "UTF-8" in str(info.value)


def test_toml_native_types_and_argv_list(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        'child_id = ["c1", "c2"]\nmqtt_tls = false\nkeep_downloads = true\n'
        'install_command = ["/usr/bin/flash", "a b"]\noperation_timeout = 12.5\n'
        'allowed_hosts = ["h1"]\n',
    )
    config = load_config(toml, {}, {})
    assert config.install_command == ("/usr/bin/flash", "a b")
    assert config.keep_downloads is True
    assert config.operation_timeout == 12.5
    assert config.allowed_hosts == ("h1",)


def test_password_file_is_read_and_not_shown(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    config = load_config(
        None, {**BASE, "mqtt_username": "agent", "mqtt_password_file": str(pw)}, {}
    )
    assert config.mqtt_password == "s3cret"
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.redacted())


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_fwagent", "run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_run_exits_2_naming_the_key_for_a_bad_flag(tmp_path: Path) -> None:
    result = _run_cli("--child-id", "c1", "--install-target", "/x", "--mqtt-port", "zero")
    assert result.returncode == 2
    assert "mqtt_port" in result.stderr


def test_run_exits_2_naming_the_key_for_a_bad_env_or_file(tmp_path: Path) -> None:
    toml = write(tmp_path, 'child_id = ["c1"]\ninstall_target = "/x"\n')
    result = _run_cli("--config", str(toml), env={"TRIO_FWAGENT_OPERATION_TIMEOUT": "forever"})
    assert result.returncode == 2
    assert "operation_timeout" in result.stderr
    assert "TRIO_FWAGENT_OPERATION_TIMEOUT" in result.stderr


def test_run_exits_2_for_an_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _run_cli(
        "--child-id", "c1", "--install-target", "/x", "--data-dir", str(blocker / "sub")
    )
    assert result.returncode == 2
    assert "data_dir" in result.stderr


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("latin-1 file", "config"),
        ("non-UTF-8 env child id", "child_id"),
        ("non-UTF-8 env client id", "mqtt_client_id"),
        ("empty host label", "mqtt_host"),
    ],
)
def test_run_exits_2_not_a_traceback_for_values_that_used_to_crash(
    tmp_path: Path, case: str, key: str
) -> None:
    """These crashed `run` with exit 1 and a traceback (systemd restarts it forever)."""
    args = ["--install-target", str(tmp_path / "fw.img"), "--data-dir", str(tmp_path / "d")]
    args += ["--mqtt-port", "9"]
    env: dict[str, str] = {}
    if case == "latin-1 file":
        toml = tmp_path / "agent.toml"
        toml.write_bytes(b'child_id = ["c1"]\n# r\xe9glages\n')
        args += ["--config", str(toml)]
    elif case == "non-UTF-8 env child id":
        env["TRIO_FWAGENT_CHILD_ID"] = "pump\udce91"  # the byte 0xe9, as os.environ has it
    elif case == "non-UTF-8 env client id":
        env["TRIO_FWAGENT_MQTT_CLIENT_ID"] = "ab\udcff"
        args += ["--child-id", "c1"]
    else:
        args += ["--child-id", "c1", "--mqtt-host", "gw..local"]
    result = _run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"configuration error: {key}: " in result.stderr


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("child-1")
    paths = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    issued.cert_chain_pems[0].write_to_path(str(paths[1]))
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


def test_tls_files_that_load_are_accepted(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    flags = {"mqtt_ca_file": str(ca), "mqtt_cert_file": str(cert), "mqtt_key_file": str(key)}
    config = load_config(None, {**BASE, **flags}, {})
    assert config.mqtt_tls and config.mqtt_cert_file == cert


@pytest.mark.parametrize("broken", ["ca", "cert", "key", "other-key", "encrypted-key"])
def test_tls_files_that_do_not_load_stop_the_start(tmp_path: Path, broken: str) -> None:
    """A wrong TLS file is a configuration error (exit 2), not a retry loop forever."""
    ca, cert, key = _tls_files(tmp_path)
    if broken == "ca":
        ca.write_text("not a certificate\n")
    elif broken == "cert":
        cert.write_bytes(key.read_bytes())  # a key where the certificate belongs
    elif broken == "key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif broken == "other-key":
        trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(key))
    else:
        pem = serialization.load_pem_private_key(key.read_bytes(), password=None)
        key.write_bytes(
            pem.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    flags = {"mqtt_ca_file": str(ca), "mqtt_cert_file": str(cert), "mqtt_key_file": str(key)}
    with pytest.raises(ConfigError) as info:
        load_config(None, {**BASE, **flags}, {})
    assert info.value.key == ("mqtt_ca_file" if broken == "ca" else "mqtt_cert_file")
    assert str(ca if broken == "ca" else cert) in str(info.value)
    if broken == "encrypted-key":
        assert "encrypted" in str(info.value)
