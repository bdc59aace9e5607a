"""The pymap-admin console script against the scripted fake server: the append
outcomes a real pymap cannot be made to produce on demand, and exactly what
append puts on the wire."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from grpclib.const import Status

from pymap_admin.tokens import inspect_token

from .fake_admin import (
    DroppingServer,
    FakeAdmin,
    RunningFake,
    grpc_error,
    incompatible_version,
    respond_failure,
    sleep_forever,
)
from .test_cli_real import SCRIPT, Run
from .test_tokens import admin_token

ADMIN_TOKEN = admin_token()


async def run(path: Path, *args: str, stdin: bytes = b"Subject: x\r\n\r\nhi\r\n") -> Run:
    # Single calls on the wire: without the login-token fast path's Login calls.
    env = {**os.environ, "PYMAP_ADMIN_TOKEN": ADMIN_TOKEN, "PYMAP_ADMIN_LOGIN_TOKENS": "no"}
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), "--path", str(path), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    result = Run(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize(("step", "line", "status"), [
    (respond_failure("SomethingNew", "Append NO new"), "4.3.0 ", 75),
    (respond_failure("TemporaryFailure", "Append NO later"), "4.3.0 ", 75),
    (respond_failure("AuthorizationFailure"), "4.3.5 ", 75),
    (incompatible_version(), "4.3.5 ", 75),
    (grpc_error(Status.UNIMPLEMENTED, "Operation not available"), "4.3.0 ", 75),
    (grpc_error(Status.INTERNAL, "boom"), "4.3.0 ", 75),
])
async def test_append_outcomes_of_the_fake(tmp_path: Path, step: object, line: str,
                                           status: int) -> None:
    fake = FakeAdmin(script={"Append": step})  # type: ignore[dict-item]
    async with RunningFake(fake, tmp_path / "admin.sock"):
        result = await run(tmp_path / "admin.sock", "append", "user")
    assert result.first_line.startswith(line) and result.status == status, result
    assert len(result.stderr.strip().splitlines()) == 1


async def test_append_deadline(tmp_path: Path) -> None:
    fake = FakeAdmin(script={"Append": sleep_forever()})
    async with RunningFake(fake, tmp_path / "admin.sock"):
        result = await run(tmp_path / "admin.sock", "append", "--timeout", "0.5", "user")
    assert result.first_line.startswith("4.4.2 ") and result.status == 75


async def test_append_connection_reset(tmp_path: Path) -> None:
    async with DroppingServer(tmp_path / "admin.sock", read_bytes=10):
        result = await run(tmp_path / "admin.sock", "append", "user")
    assert result.first_line.startswith("4.4.1 ") and result.status == 75


async def test_append_request_on_the_wire(tmp_path: Path) -> None:
    fake = FakeAdmin()
    async with RunningFake(fake, tmp_path / "admin.sock"):
        plain = await run(tmp_path / "admin.sock", "append", "--from", "MAILER-DAEMON",
                          "--to", "rcpt@example.com", "--mailbox", "Box", "--timestamp",
                          "1700000000", "--seen", "--flag", "$Label", "user",
                          stdin=b"From x@y Mon Jan  1 00:00:00 2024\nSubject: s\r\n\r\nb\r\n")
        empty = await run(tmp_path / "admin.sock", "append", "--from", "", "user")
        unset = await run(tmp_path / "admin.sock", "append", "user")
    assert [r.status for r in (plain, empty, unset)] == [0, 0, 0]
    first, second, third = (call.request for call in fake.calls)
    assert first.user == "user" and first.data == b"Subject: s\r\n\r\nb\r\n"
    assert first.HasField("sender") and first.sender == ""
    assert (first.recipient, first.mailbox, first.when) == ("rcpt@example.com", "Box",
                                                            1700000000)
    assert list(first.flags) == ["\\Seen", "$Label"]
    assert second.HasField("sender") and second.sender == ""
    assert not third.HasField("sender") and not third.HasField("mailbox")
    assert third.when > 1700000000
    metadata = fake.calls[0].metadata
    assert metadata["client-version"] == "0.12.1"
    # The admin token itself never travels: a copy narrowed to this user and
    # to minutes does.
    sent = inspect_token(metadata["auth-token"])
    assert sent.kind == "admin"
    assert sent.authzid == "user"
    assert sent.expires is not None
    assert metadata["auth-token"] != ADMIN_TOKEN
