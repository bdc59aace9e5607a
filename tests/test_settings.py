"""Connection settings: precedence, discovery, config file, TLS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pymap_admin import ConfigurationError, ConnectionSettings, load_settings
from pymap_admin.settings import config_home


def test_command_line_beats_environment_beats_config_file(tmp_path: Path) -> None:
    config = tmp_path / "admin.conf"
    config.write_text("[pymap-admin]\nhost = from-file\nport = 1\ncafile = /ca/file\n"
                      "timeout = 7\n")
    env = {"PYMAP_ADMIN_PORT": "2", "PYMAP_ADMIN_HOST": "from-env"}
    settings = load_settings({"host": "from-cli"}, config_file=config, environ=env)
    assert settings.host == "from-cli"
    assert settings.port == 2
    assert settings.cafile == Path("/ca/file")
    assert settings.timeout == 7.0


def test_config_file_is_found_by_environment_and_discovery(tmp_path: Path) -> None:
    config = tmp_path / "named.conf"
    config.write_text("[pymap-admin]\npath = /some/socket\n")
    assert load_settings(environ={"PYMAP_ADMIN_CONFIG": str(config)}).path == Path("/some/socket")
    home = config_home()
    home.mkdir(parents=True)
    (home / "pymap-admin.conf").write_text("[pymap-admin]\nport = 1234\n")
    assert load_settings(environ={}).port == 1234


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(config_file=tmp_path / "absent.conf", environ={})


def test_bad_values_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="port"):
        load_settings({"port": "abc"}, environ={})
    with pytest.raises(ConfigurationError, match="PYMAP_ADMIN_NO_VERIFY_CERT"):
        load_settings(environ={"PYMAP_ADMIN_NO_VERIFY_CERT": "perhaps"})
    with pytest.raises(ConfigurationError):
        ConnectionSettings(port=70000)
    with pytest.raises(ConfigurationError, match="certificate"):
        ConnectionSettings(host="h", key=tmp_path / "k")


def test_token_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    env = {"PYMAP_ADMIN_TOKEN": "env-token", "PYMAP_ADMIN_TOKEN_FILE": str(token_file)}
    # The environment's token wins over any token file found or named there...
    assert load_settings(environ=env).token == "env-token"
    # ...but a token file named on the command line is the user's choice.
    named = load_settings({"token_file": str(token_file)}, environ=env)
    assert named.token is None
    assert named.token_path() == token_file


def test_socket_discovery_and_explicit_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no pymap admin socket"):
        ConnectionSettings().socket_path()
    folder = Path(os.environ["TMPDIR"]) / "pymap"
    folder.mkdir(parents=True)
    (folder / "pymap-admin.sock").touch()
    assert ConnectionSettings().socket_path() == folder / "pymap-admin.sock"
    # The home location comes first.
    config_home().mkdir(parents=True)
    (config_home() / "pymap-admin.sock").touch()
    assert ConnectionSettings().socket_path() == config_home() / "pymap-admin.sock"
    # An explicit path is used as given, existing or not.
    assert ConnectionSettings(path=tmp_path / "x.sock").socket_path() == tmp_path / "x.sock"


def test_tcp_means_tls_unless_switched_off() -> None:
    assert not ConnectionSettings().uses_tcp
    assert ConnectionSettings(port=1).uses_tls
    assert ConnectionSettings(host="localhost").target == "https://localhost:50051"
    assert not ConnectionSettings(host="localhost", tls=False).uses_tls
    assert not ConnectionSettings(path=Path("/x")).uses_tls


def test_tls_context_honours_no_verify_and_reports_bad_files(tmp_path: Path) -> None:
    import ssl

    context = ConnectionSettings(host="h", no_verify_cert=True).ssl_context()
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    with pytest.raises(ConfigurationError, match="TLS"):
        ConnectionSettings(host="h", cafile=tmp_path / "missing.pem").ssl_context()


def test_token_is_not_in_repr() -> None:
    assert "secret-token" not in repr(ConnectionSettings(token="secret-token"))


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    import io

    from pymap_admin.cli.main import main

    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigurationError, match=f"TLS cafile not found: {missing}"):
        ConnectionSettings(host="h", cafile=missing).ssl_context()
    err = io.StringIO()
    assert main(["--host", "127.0.0.1", "--port", "1", "--cafile", str(missing), "ping"],
                stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue() == f"pymap-admin: ping: TLS cafile not found: {missing}\n"


def test_a_connection_closed_without_a_reason_says_so() -> None:
    from pymap_admin.errors import map_os_error

    message = str(map_os_error(ConnectionResetError(), "https://h:50051"))
    assert message.startswith("connection to https://h:50051 broken: ConnectionResetError: "
                              "the server closed the connection")
    assert "--cert" in message


def test_unknown_keys_and_sections_in_pymap_admin_conf_are_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "pymap-admin.conf"
    conf.write_text("[pymap-admin]\nhots = typo.example\nport = 1234\n\n[pymap_admin]\nx = 1\n")
    settings = load_settings(config_file=conf, environ={})
    assert settings.port == 1234 and settings.host is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{conf} line 2: unknown key 'hots'" in w for w in warnings), warnings
    assert any(f"{conf} line 5: unknown section [pymap_admin]" in w for w in warnings), warnings
