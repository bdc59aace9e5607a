"""Several admin endpoints: the command line, the environment and the config
file name them the same way, and one endpoint stays what it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymap_admin import ConfigurationError
from pymap_admin.cli.args import parse_args as admin_args
from pymap_admin.settings import ConnectionSettings, EndpointAddress, load_settings
from pymap_deliver.main import parse_args as deliver_args


def test_repeated_paths_on_both_commands() -> None:
    for connection in (admin_args(["--path", "/a.sock", "--path", "/b.sock", "ping"]
                                  ).globals.connection(),
                       deliver_args(["--listen", "2424", "--path", "/a.sock",
                                     "--path", "/b.sock"]).connection):
        settings = load_settings(connection, environ={})
        assert settings.endpoints == (EndpointAddress(path=Path("/a.sock")),
                                      EndpointAddress(path=Path("/b.sock")))
        assert [m.target for m in settings.members()] == ["unix:/a.sock", "unix:/b.sock"]


def test_repeated_hosts_with_ports_and_a_default_port() -> None:
    connection = admin_args(["--host", "m1:5001", "--host", "[::1]:5002", "--host", "m3",
                             "--port", "5003", "ping"]).globals.connection()
    settings = load_settings(connection, environ={})
    assert settings.endpoints == (EndpointAddress(host="m1", port=5001),
                                  EndpointAddress(host="::1", port=5002),
                                  EndpointAddress(host="m3", port=5003))
    assert settings.target == "https://m1:5001, https://[::1]:5002, https://m3:5003"
    # Each member keeps the shared settings (TLS, timeout).
    assert all(m.uses_tls and m.timeout == settings.timeout for m in settings.members())


def test_one_endpoint_is_unchanged() -> None:
    assert load_settings({"path": Path("/a.sock")}, environ={}) == \
        ConnectionSettings(path=Path("/a.sock"))
    assert load_settings({"host": "h", "port": 7}, environ={}) == \
        ConnectionSettings(host="h", port=7)
    assert load_settings({"host": "h:9"}, environ={}) == ConnectionSettings(host="h", port=9)
    assert load_settings({"host": "::1"}, environ={}) == ConnectionSettings(host="::1")


def test_the_config_file_and_the_environment_list_endpoints(tmp_path: Path) -> None:
    config = tmp_path / "pymap-admin.conf"
    config.write_text("[pymap-admin]\npath =\n    /run/pymap/0/pymap-admin.sock\n"
                      "    /run/pymap/1/pymap-admin.sock\n")
    settings = load_settings({}, config_file=config, environ={})
    assert [e.path for e in settings.endpoints] == [Path("/run/pymap/0/pymap-admin.sock"),
                                                    Path("/run/pymap/1/pymap-admin.sock")]
    settings = load_settings({}, environ={"PYMAP_ADMIN_HOST": "a:1, b:2"})
    assert [(e.host, e.port) for e in settings.endpoints] == [("a", 1), ("b", 2)]
    # The command line still wins over both.
    settings = load_settings({"path": Path("/x.sock")}, config_file=config, environ={})
    assert settings.path == Path("/x.sock") and settings.endpoints == ()


@pytest.mark.parametrize("host", ["h:notaport", "h:0", "[::1", "[::1]x", ":5"])
def test_bad_endpoints_name_the_problem(host: str) -> None:
    with pytest.raises(ConfigurationError, match=r"host|port"):
        load_settings({"host": f"ok:1,{host}"}, environ={})


def test_the_daemon_config_file_lists_endpoints(tmp_path: Path) -> None:
    from pymap_deliver.config import load

    config = tmp_path / "pymap-deliver.conf"
    config.write_text("[listen]\nlisten = 127.0.0.1:2424\n[pymap]\n"
                      "path =\n    /run/pymap/0/pymap/pymap-admin.sock\n"
                      "    /run/pymap/1/pymap/pymap-admin.sock\n")
    _, daemon = load(["-c", str(config)], environ={})
    settings = load_settings(daemon.connection, config_file=daemon.admin_config, environ={})
    assert [e.path for e in settings.endpoints] == [Path("/run/pymap/0/pymap/pymap-admin.sock"),
                                                    Path("/run/pymap/1/pymap/pymap-admin.sock")]
    # No token given: each member's own, beside its socket.
    assert settings.own_member_tokens
    assert [m.token_file for m in settings.members()] == [
        Path("/run/pymap/0/pymap/pymap-admin.token"), Path("/run/pymap/1/pymap/pymap-admin.token")]
