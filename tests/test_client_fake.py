"""AdminClient against the in-process fake: what a real pymap cannot be made to do."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from pymap_admin import (
    PROTOCOL_VERSION,
    AdminClient,
    ConnectionReset,
    ConnectionSettings,
    DeadlineExceeded,
    IncompatibleVersion,
    InvalidAuth,
    Unimplemented,
    UnknownResultError,
    inspect_token,
    outcome_for_error,
)
from pymap_admin.grpc import admin_pb2 as pb

from .fake_admin import (
    DroppingServer,
    FakeAdmin,
    RunningFake,
    failure,
    grpc_error,
    incompatible_version,
    respond_failure,
    sleep_forever,
)
from .test_tokens import admin_token


def settings(path: Path, token_file: Path, **kw: Any) -> ConnectionSettings:
    # These tests look at single calls on the wire; the login-token fast path
    # (its extra Login calls) is tested in test_login_tokens.py.
    return ConnectionSettings(path=path, token_file=token_file, login_tokens=False, **kw)


@contextlib.asynccontextmanager
async def served(fake: FakeAdmin, tmp_path: Path, token_file: Path, *,
                 attenuate_tokens: bool = True, **kw: Any) -> AsyncIterator[AdminClient]:
    """``fake`` on a socket of the test's own, and a client of it (``kw``:
    its settings)."""
    path = tmp_path / "s.sock"
    async with RunningFake(fake, path), \
            AdminClient(settings(path, token_file, **kw),
                        attenuate_tokens=attenuate_tokens) as client:
        yield client


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(admin_token())
    return path


async def test_metadata_carries_version_and_a_narrowed_token(tmp_path: Path,
                                                             token_file: Path) -> None:
    fake = FakeAdmin()
    async with served(fake, tmp_path, token_file) as client:
        await client.ping()
        result = await client.append("alice", b"data", sender="s@x", recipient="alice@x",
                                     flags=["\\Seen"], when=1234)
    ping, append = fake.calls
    assert ping.metadata["client-version"] == PROTOCOL_VERSION
    assert "auth-token" not in ping.metadata  # Ping needs no token: none is sent
    assert append.metadata["client-version"] == PROTOCOL_VERSION
    info = inspect_token(append.metadata["auth-token"])
    assert info.kind == "admin"
    assert info.authzid == "alice"
    assert info.expires is not None
    request = append.request
    assert (request.user, request.data, request.sender, request.recipient, request.when) == (
        "alice", b"data", "s@x", "alice@x", 1234)
    assert list(request.flags) == ["\\Seen"]
    assert result.uid == 1


async def test_unset_optional_fields_are_absent_on_the_wire(tmp_path: Path,
                                                            token_file: Path) -> None:
    fake = FakeAdmin()
    async with served(fake, tmp_path, token_file) as client:
        await client.append("alice", b"data")
        await client.set_user("bob", password=None)
        await client.login("carol")
    append, set_user, login = (call.request for call in fake.calls)
    for field in ("sender", "recipient", "mailbox"):
        assert not append.HasField(field)
    assert append.when > 0  # "now", not 1970
    assert not set_user.data.HasField("password")
    assert set_user.WhichOneof("behavior") == "overwrite"
    assert not login.HasField("secret")
    assert not login.HasField("token_expiration")


async def test_deadline(tmp_path: Path, token_file: Path) -> None:
    fake = FakeAdmin(script={"Append": sleep_forever()})
    async with served(fake, tmp_path, token_file, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded) as info:
            await client.append("alice", b"x")
    assert isinstance(info.value, TimeoutError)
    assert str(outcome_for_error(info.value).reply).startswith("451 4.4.2")


async def test_connection_reset(tmp_path: Path, token_file: Path) -> None:
    for read_bytes in (0, 100):
        path = tmp_path / f"drop{read_bytes}.sock"
        async with DroppingServer(path, read_bytes), \
                AdminClient(settings(path, token_file)) as client:
            with pytest.raises(ConnectionReset) as info:
                await client.append("alice", b"x")
        assert isinstance(info.value, ConnectionError)
        assert str(outcome_for_error(info.value).reply).startswith("451 4.4.1")


async def test_unknown_result_key_is_temporary(tmp_path: Path, token_file: Path) -> None:
    fake = FakeAdmin(script={"Append": respond_failure("QuotaExceededSomeday", "Append NO x")})
    async with served(fake, tmp_path, token_file) as client:
        with pytest.raises(UnknownResultError) as info:
            await client.append("alice", b"x")
    assert info.value.key == "QuotaExceededSomeday"
    assert str(outcome_for_error(info.value).reply).startswith("451 4.3.0")


async def test_version_refusal_with_error_info(tmp_path: Path, token_file: Path) -> None:
    fake = FakeAdmin(script={"Ping": incompatible_version("0.12.1", "1.0.0")})
    async with served(fake, tmp_path, token_file) as client:
        with pytest.raises(IncompatibleVersion) as info:
            await client.ping()
    assert info.value.details == {"client_version": "0.12.1", "server_version": "1.0.0"}
    assert "server 1.0.0" in str(info.value)
    assert str(outcome_for_error(info.value).reply).startswith("451 4.3.5")


async def test_unimplemented(tmp_path: Path, token_file: Path) -> None:
    fake = FakeAdmin(script={"DeleteUser": grpc_error(Status.UNIMPLEMENTED,
                                                      "Operation not available")})
    async with served(fake, tmp_path, token_file) as client:
        with pytest.raises(Unimplemented):
            await client.delete_user("x")


async def test_auth_failure_rereads_the_token_file_once(tmp_path: Path,
                                                        token_file: Path) -> None:
    """A restarted server has a new token; a changed file must be picked up
    even when its size and mtime did not change."""
    old = token_file.read_text()
    new = admin_token().replace("A", "B", 1)
    assert len(new) == len(old)
    accepted = {new}

    fake = FakeAdmin()

    async def checking_append(request: pb.AppendRequest) -> pb.AppendResponse:
        token = fake.calls[-1].metadata["auth-token"]
        base = token[: len(old)]
        if base not in accepted:
            return pb.AppendResponse(result=failure("InvalidAuth", "Append NO bad token"))
        return pb.AppendResponse(result=pb.Result(code=pb.SUCCESS), mailbox="INBOX", uid=7)

    fake.script["Append"] = checking_append
    async with served(fake, tmp_path, token_file, attenuate_tokens=False) as client:
        client.tokens.current()
        stat = token_file.stat()
        token_file.write_text(new)
        os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        result = await client.append("alice", b"x")
        assert result.uid == 7
        assert [c.metadata["auth-token"] for c in fake.calls] == [old, new]
        # A token that stays refused is reported after one re-read, not looped on.
        accepted.clear()
        with pytest.raises(InvalidAuth):
            await client.append("alice", b"x")
    assert len(fake.calls) == 3


async def test_concurrent_calls_are_multiplexed(tmp_path: Path, token_file: Path) -> None:
    release = asyncio.Event()

    async def slow_append(request: pb.AppendRequest) -> pb.AppendResponse:
        await release.wait()
        return pb.AppendResponse(result=pb.Result(code=pb.SUCCESS), mailbox="INBOX", uid=1)

    fake = FakeAdmin(script={"Append": slow_append})
    async with served(fake, tmp_path, token_file) as client:
        tasks = [asyncio.create_task(client.append("alice", b"x")) for _ in range(50)]
        while fake.in_flight < 50:
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
    assert fake.max_in_flight == 50


async def test_client_certificate_is_presented(tmp_path: Path, token_file: Path,
                                               tls_files: Any) -> None:
    """A TLS server that requires a client certificate sees ours (the
    published client accepted --cert/--key and never used them)."""
    import ssl

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_files.cert, tls_files.key)
    server_context.load_verify_locations(tls_files.ca)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.set_alpn_protocols(["h2"])
    seen: list[Any] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peercert"))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_pem = tls_files.ca.parent / "client.pem"
    try:
        for cert in (client_pem, None):
            settings = ConnectionSettings(host="127.0.0.1", port=port, cafile=tls_files.ca,
                                          cert=cert, token_file=token_file, timeout=5)
            async with AdminClient(settings) as client:
                with pytest.raises(ConnectionError):
                    await client.ping()
    finally:
        server.close()
        await server.wait_closed()
    # Only the first connection completed its handshake, with our certificate.
    assert len(seen) == 1
    assert ("email", "client@example.com") in seen[0]["subjectAltName"]
