"""pymap-deliver's configuration: one declaration per option, a config file
that round-trips through --print-config, errors that name the line."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import pytest

from pymap_admin.errors import ConfigurationError
from pymap_admin.options import CONNECTION_OPTIONS
from pymap_deliver.config import OPTIONS, SECTIONS, build_parser, load
from pymap_deliver.main import main
from pymap_deliver.server import TcpEndpoint

DELIVER = str(Path(sys.executable).parent / "pymap-deliver")

FULL = """\
# a config file an operator might write
[listen]
listen = 127.0.0.1:2424, [::1]:2425
unix = /run/pymap-deliver/lmtp.sock
unix_mode = 0600
unix_owner = root
unix_group = root

[lmtp]
hostname = mx.example.com
max_size = 1048576
max_connections = 7
idle_timeout = 30
max_recipients = 50

[recipients]
local_part_only = yes
recipient_delimiter = +
detail_mailbox = yes
check_recipients = no
accept_when_unreachable = yes
max_in_flight = 9

[pymap]
path = /run/pymap/admin.sock
token_file = /etc/pymap-deliver/token
timeout = 12.5
tls = no

[daemon]
user = nobody
log_level = WARNING
log_target = journald
metrics = 127.0.0.1:9124
"""


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_every_option_has_a_flag_a_key_and_a_section() -> None:
    parser = build_parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    for option in OPTIONS:
        assert option.flag in flags, option
        assert option.section in SECTIONS, option
    # The connection options are the very rows of the shared table.
    shared = {o.name for o in CONNECTION_OPTIONS if o.flag and o.name != "config"}
    assert shared <= {o.name for o in OPTIONS if o.section == "pymap"}


def test_config_file_values_and_the_command_line_beats_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "pymap-deliver.conf"
    conf.write_text(FULL)
    _, config = load(["--config", str(conf), "--max-connections", "8"], environ={})
    assert config.server.tcp == (TcpEndpoint(host="127.0.0.1", port=2424),
                                 TcpEndpoint(host="::1", port=2425))
    assert config.server.unix[0].mode == 0o600 and config.server.unix[0].owner == "root"
    assert config.server.max_connections == 8  # the command line wins
    assert config.server.hostname == "mx.example.com" and config.server.lmtp.max_recipients == 50
    delivery = config.server.delivery
    assert delivery is not None and delivery.hostname == "mx.example.com"
    assert not delivery.check_recipients and not delivery.defer_unreachable_at_rcpt
    assert delivery.rules.delimiter == "+" and delivery.max_in_flight == 9
    assert config.connection["timeout"] == 12.5 and config.connection["tls"] is False
    assert config["metrics"] == TcpEndpoint(host="127.0.0.1", port=9124)
    assert config["log_target"] == "journald" and config["user"] == "nobody"


def test_config_file_round_trips_through_print_config(tmp_path: Path) -> None:
    conf = tmp_path / "pymap-deliver.conf"
    conf.write_text(FULL)
    status, printed, err = run_main("--config", str(conf), "--print-config")
    assert status == 0, err
    assert "max_connections = 7" in printed and "#max_size" not in printed
    assert "#log_file =" in printed  # a default, shown commented out
    again = tmp_path / "printed.conf"
    again.write_text(printed)
    status, reprinted, _ = run_main("--config", str(again), "--print-config")
    assert status == 0
    assert reprinted.splitlines()[1:] == printed.splitlines()[1:]
    _, first = load(["--config", str(conf)], environ={})
    _, second = load(["--config", str(again)], environ={})
    assert first.values == second.values and first.server == second.server


def test_the_command_line_alone_prints_as_a_config_file(tmp_path: Path) -> None:
    status, printed, _ = run_main("--listen", "2424", "--no-check-recipients",
                                  "--print-config")
    assert status == 0
    assert "listen = 127.0.0.1:2424" in printed and "check_recipients = no" in printed
    conf = tmp_path / "c.conf"
    conf.write_text(printed)
    _, config = load(["--config", str(conf)], environ={})
    assert config.server.delivery is not None and not config.server.delivery.check_recipients


@pytest.mark.parametrize(("text", "message"), [
    ("[listen]\nlisten = 24\n[lmpt]\nmax_size = 1\n",
     r"c\.conf line 3: unknown section \[lmpt\]"),
    ("[listen]\nlisten = 24\n\n[lmtp]\nmax_sise = 1\n",
     r"c\.conf line 5: unknown key 'max_sise' in \[lmtp\]"),
    ("[listen]\nlisten = 24\nmax_size = 1\n",
     r"line 3: unknown key 'max_size' in \[listen\]; it belongs in \[lmtp\]"),
    ("[listen]\nlisten = 24\n[lmtp]\nmax_connections = 0\n",
     r"line 4: max_connections: must be at least 1: '0'"),
    ("listen = 24\n", r"line 1: 'listen' before any \[section\]"),
    ("[listen]\nlisten = 24\nlisten = 25\n", r"line 3: 'listen' given twice"),
    ("[listen]\nnonsense\n", r"line 2: expected key = value"),
    ("[listen]\nlisten = 24\n[daemon]\nlog_target = syslogd\n",
     r"line 4: log_target: expected one of stderr, syslog, journald"),
])
def test_config_file_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load(["--config", str(conf)], environ={})
    status, _, err = run_main("--config", str(conf), "--check-config")
    assert status == 78
    assert len(err.splitlines()) == 1 and err.startswith("pymap-deliver: ")


def test_check_config(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[listen]\nlisten = 24\n")
    status, out, _ = run_main("--config", str(conf), "--check-config")
    assert status == 0 and "configuration valid" in out and str(conf) in out
    status, _, err = run_main("--config", str(tmp_path / "absent.conf"), "--check-config")
    assert status == 78 and "absent.conf" in err
    status, _, err = run_main("--check-config")
    assert status == 78 and "nothing to listen on" in err


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["--listen", "24", "--max-connections", "0"], 64,
     "argument --max-connections: must be at least 1: '0'"),
    (["--listen", "24", "--unix-owner", "postifx"], 64,
     "argument --unix-owner: no such user: 'postifx'"),
    (["--listen", "24", "--local-part"], 64, "unrecognized arguments: --local-part"),
    (["--listen", "24", "--no-check"], 64, "unrecognized arguments: --no-check"),
    (["--listen", "x:y"], 64, "argument --listen: not [HOST:]PORT: 'x:y'"),
    (["--listen", "24", "--group", "root"], 78, "--group needs --user"),
    (["--listen", "24", "--detail-mailbox"], 78, "--detail-mailbox needs --recipient-delimiter"),
])
def test_command_line_errors_are_one_clean_line(argv: list[str], status: int,
                                               message: str) -> None:
    got, _, err = run_main(*argv, "--check-config")
    assert got == status
    assert err.startswith(f"pymap-deliver: {message}") and err.count("\n") == 1


def test_version_and_errors_from_the_installed_command() -> None:
    done = subprocess.run([DELIVER, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("pymap-deliver ")
    done = subprocess.run([DELIVER, "--listen", "24", "--unix-owner", "postifx"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 64
    assert done.stderr == "pymap-deliver: argument --unix-owner: no such user: 'postifx'\n"


def test_the_contrib_example_is_valid() -> None:
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no postfix user here")
    example = Path(__file__).parent.parent / "contrib/pymap-deliver/pymap-deliver.conf"
    status, _, err = run_main("--config", str(example), "--check-config")
    assert status == 0, err
    _, config = load(["--config", str(example)], environ={})
    assert config.server.unix[0].owner == "postfix"
    assert config.server.delivery is not None and config.server.delivery.rules.local_part_only


def test_the_daemon_does_not_import_the_admin_cli() -> None:
    code = ("import sys; from pymap_deliver.main import parse_args; "
            "parse_args(['--listen', '24']); "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['pymap_admin', 'cli']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_no_daemon_module_imports_the_admin_cli() -> None:
    # Not even where a page of pymap-admin's manual is built (_share): that
    # goes through pymap_admin.manual, which builds the parser itself.
    package = Path(__file__).resolve().parent.parent / "pymap_deliver"
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {name}" for name in names
                      if name.split(".")[:2] == ["pymap_admin", "cli"]]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("pymap_admin.cli"):
                found.append(f"{path.name}: {node.value!r}")
    assert found == []
