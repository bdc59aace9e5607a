"""parse_args: every command and option of the published pymap-admin, and ours."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pymap_admin.cli.args import (
    DEFAULT_MAX_SIZE,
    AppendOptions,
    ChangePasswordOptions,
    CheckOptions,
    DeleteUserOptions,
    GetUserOptions,
    LoginOptions,
    PingOptions,
    SaveArgsOptions,
    SetUserOptions,
    TokenAttenuateOptions,
    TokenShowOptions,
    UsageError,
    command_name,
    parse_args,
)
from pymap_admin.cli.mailbox import crlf, null_sender, read_message
from pymap_admin.cli.main import main


def test_global_options() -> None:
    parsed = parse_args(["--config", "c.conf", "--host", "h", "--port", "123", "--path", "s",
                         "--token-file", "t", "--cert", "c.pem", "--key", "k.pem",
                         "--cafile", "ca.pem", "--capath", "cadir", "--no-verify-cert",
                         "--timeout", "2.5", "--json", "--debug", "ping"])
    glob = parsed.globals
    given = glob.given
    assert parsed.command == "ping" and parsed.options == PingOptions()
    assert glob.config == Path("c.conf") and given["host"] == "h" and given["port"] == 123
    assert given["path"] == Path("s") and given["token_file"] == Path("t")
    assert (given["cert"], given["key"]) == (Path("c.pem"), Path("k.pem"))
    assert (given["cafile"], given["capath"]) == (Path("ca.pem"), Path("cadir"))
    assert given["no_verify_cert"] and glob.json and glob.debug and given["timeout"] == 2.5
    assert glob.connection()["no_verify_cert"] is True


def test_json_timeout_debug_after_the_command() -> None:
    parsed = parse_args(["--json", "append", "--timeout", "3", "--debug", "user"])
    assert parsed.globals.json and parsed.globals.debug and parsed.globals.given["timeout"] == 3
    # Given before, not undone by the sub-parser's defaults.
    assert parse_args(["--json", "--timeout", "4", "ping"]).globals.given["timeout"] == 4


def test_save_args_ping_check() -> None:
    assert parse_args(["save-args"]).options == SaveArgsOptions()
    assert parse_args(["check"]).options == CheckOptions("")
    assert parse_args(["check", "pymap.backend"]).options == CheckOptions("pymap.backend")


@pytest.mark.parametrize(("argv", "expected"), [
    (["-t", "u"], LoginOptions("u", token=True)),
    (["--token", "u"], LoginOptions("u", token=True)),
    (["--password", "pw", "u"], LoginOptions("u", password="pw")),
    (["--password-file", "f", "u"], LoginOptions("u", password_file=Path("f"))),
    (["-i", "u"], LoginOptions("u", ask_password=True)),
    (["--ask-password", "-s", "-z", "other", "--expiration", "1700000000", "u"],
     LoginOptions("u", ask_password=True, save=True, authzid="other",
                  expiration=1700000000.0)),
    (["-t", "--save", "--authzid", "a", "--expiration", "2024-01-01T00:00:00+00:00", "u"],
     LoginOptions("u", token=True, save=True, authzid="a", expiration=1704067200.0)),
])
def test_login(argv: list[str], expected: LoginOptions) -> None:
    assert parse_args(["login", *argv]).options == expected


def test_login_needs_exactly_one_secret() -> None:
    with pytest.raises(UsageError):
        parse_args(["login", "u"])
    with pytest.raises(UsageError):
        parse_args(["login", "-t", "--password", "x", "u"])


def test_append_all_flags() -> None:
    parsed = parse_args(["append", "--from", "a@x", "--to", "b@y", "--mailbox", "Sent",
                         "--timestamp", "1700000000", "--data", "m.eml", "--flag", "$Label",
                         "--flagged", "--seen", "--draft", "--deleted", "--answered",
                         "--max-size", "1000", "user"])
    assert parsed.options == AppendOptions(
        "user", sender="a@x", recipient="b@y", mailbox="Sent", timestamp=1700000000.0,
        data=Path("m.eml"),
        flags=("$Label", "\\Flagged", "\\Seen", "\\Draft", "\\Deleted", "\\Answered"),
        max_size=1000)
    assert parse_args(["append", "u"]).options == AppendOptions("u", max_size=DEFAULT_MAX_SIZE)
    assert parse_args(["append", "--from", "", "u"]).options.sender == ""


def test_user_commands() -> None:
    assert parse_args(["get-user", "u"]).options == GetUserOptions("u")
    assert parse_args(["delete-user", "u"]).options == DeleteUserOptions("u")
    assert parse_args(["set-user", "--no-overwrite", "--password-file", "p", "--param",
                       "a=b", "--param", "c=d=e", "--role", "admin", "--role", "x",
                       "u"]).options == SetUserOptions(
        "u", overwrite=False, password_file=Path("p"), params=(("a", "b"), ("c", "d=e")),
        roles=("admin", "x"))
    assert parse_args(["set-user", "--no-password", "u"]).options == SetUserOptions(
        "u", no_password=True)
    assert parse_args(["change-password", "--password-file", "p", "u"]).options == \
        ChangePasswordOptions("u", password_file=Path("p"))
    assert parse_args(["change-password", "--no-password", "u"]).options == \
        ChangePasswordOptions("u", no_password=True)
    with pytest.raises(UsageError):
        parse_args(["set-user", "--param", "novalue", "u"])
    with pytest.raises(UsageError):
        parse_args(["set-user", "--no-password", "--password-file", "p", "u"])


def test_token_commands() -> None:
    assert parse_args(["token", "show"]).command == "token show"
    assert parse_args(["token", "show", "--stdin"]).options == TokenShowOptions(stdin=True)
    parsed = parse_args(["token", "attenuate", "--user", "u", "--lifetime", "1d", "-o", "f"])
    assert parsed.command == "token attenuate"
    assert parsed.options == TokenAttenuateOptions(user="u", lifetime=86400.0,
                                                   output=Path("f"))
    assert parse_args(["token", "attenuate", "--expires", "100"]).options == \
        TokenAttenuateOptions(expires=100.0)
    for bad in (["token"], ["token", "attenuate"], ["token", "attenuate", "--lifetime", "x"],
                ["token", "attenuate", "--expires", "1", "--lifetime", "1h"]):
        with pytest.raises(UsageError):
            parse_args(bad)


@pytest.mark.parametrize("argv", [
    [], ["nonsense"], ["--port", "notaport", "ping"], ["--port", "70000", "ping"],
    ["--timeout", "0", "ping"], ["--key", "k", "ping"], ["get-user"],
])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["append"], ["append", "--bogus", "u"], ["append", "--timestamp", "soon", "u"],
    ["append", "--max-size", "-1", "u"], ["--port", "x", "append", "u"], ["apend", "u"],
    ["append", "u", "extra"],
])
def test_append_usage_errors_exit_75(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, stdout=out, stderr=err) == 75
    assert "error:" in err.getvalue() and "Traceback" not in err.getvalue()
    if "append" in argv:
        assert out.getvalue().splitlines()[0].startswith("4.3.5 ")


def test_help_and_version_exit_0() -> None:
    out = io.StringIO()
    assert main(["--help"], stdout=out, stderr=io.StringIO()) == 0
    assert "append" in out.getvalue() and "change-password" in out.getvalue()
    out = io.StringIO()
    assert main(["append", "--help"], stdout=out, stderr=io.StringIO()) == 0
    assert "--max-size" in out.getvalue() and "2.0.0 Message delivered" in out.getvalue()
    out = io.StringIO()
    assert main(["--version"], stdout=out, stderr=io.StringIO()) == 0
    assert out.getvalue().startswith("pymap-admin ")


def test_abbreviated_options_are_refused() -> None:
    # A prefix is a landmine in a unit file or master.cf: it silently
    # changes meaning when a longer option appears.
    for argv in (["--ho", "h", "ping"], ["append", "--max", "1", "u"],
                 ["set-user", "--no-pass", "u"]):
        with pytest.raises(UsageError):
            parse_args(argv)
    assert command_name(["--path", "append", "ping"]) == "ping"


def test_global_options_are_the_connection_table() -> None:
    from pymap_admin.options import CONNECTION_OPTIONS

    flagged = [o.name for o in CONNECTION_OPTIONS if o.flag]
    parsed = parse_args(["--no-login-tokens", "--login-token-cache", "none", "ping"])
    assert list(parsed.globals.given) == flagged
    assert parsed.globals.connection()["login_tokens"] is False
    assert parsed.globals.connection()["token_cache"] == "none"


@pytest.mark.parametrize(("argv", "status"), [
    (["get-user"], 64), (["ping", "extra"], 64), (["--port", "x", "ping"], 64),
    (["set-user", "--no-password", "--password-file", "p", "u"], 64),
    (["token", "attenuate"], 64), (["token"], 64), (["check", "--bogus"], 64),
    (["token", "attenuate", "--lifetime", "x"], 64),
    ([], 75), (["nonsense"], 75),
])
def test_usage_errors_exit_64_in_one_line(argv: list[str], status: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, stdout=out, stderr=err) == status
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("pymap-admin: error: ")
    assert out.getvalue() == ""


def test_null_sender() -> None:
    assert null_sender(None) is None
    for null in ("", "  ", "<>", "MAILER-DAEMON", "mailer-daemon"):
        assert null_sender(null) == ""
    assert null_sender("<a@example.com>") == "a@example.com"
    assert null_sender("a@example.com") == "a@example.com"


def test_read_message() -> None:
    message = b"Subject: x\r\n\r\nFrom me\r\n"
    assert read_message(io.BytesIO(b"From a@b Thu Jan  1 00:00:00 2024\n" + message),
                        0) == message
    assert read_message(io.BytesIO(message), 0) == message
    assert read_message(io.BytesIO(b"From "), 0) == b"From "
    assert read_message(io.BytesIO(message), len(message)) == message
    assert read_message(io.BytesIO(message), len(message) - 1) is None
    # The stripped From_ line does not count against the limit.
    assert read_message(io.BytesIO(b"From x\n" + message), len(message)) == message


@pytest.mark.parametrize(("given", "stored"), [
    (b"Subject: s\r\n\r\nbody\r\n", b"Subject: s\r\n\r\nbody\r\n"),
    (b"Subject: s\n\nbody\n", b"Subject: s\r\n\r\nbody\r\n"),
    (b"Subject: s\r\n\nbody\n", b"Subject: s\r\n\r\nbody\r\n"),
    (b"no line end", b"no line end"),
    (b"bare\rcr\n", b"bare\rcr\r\n"),
])
def test_line_endings_become_crlf(given: bytes, stored: bytes) -> None:
    assert crlf(given) == stored
    assert read_message(io.BytesIO(b"From x@y Mon Jan  1 00:00:00 2024\n" + given), 0) == stored


@pytest.mark.parametrize("argv", [["set-user", "u"], ["change-password", "u"],
                                  ["login", "-i", "u"]])
def test_a_password_without_a_terminal_says_use_password_file(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["--path", "/nonexistent.sock", *argv], stdout=out, stderr=err,
                stdin=io.StringIO("not read\n")) == 1
    assert err.getvalue().count("\n") == 1
    assert "no terminal" in err.getvalue() and "--password-file" in err.getvalue()
