"""AdminClient against a real pymap 0.36.7: every RPC, every failure it can produce."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.localpymap import DEMO_USER, PymapServer, TLSFiles
from pymap_admin import (
    AdminClient,
    AppendFailure,
    AuthError,
    AuthorizationFailure,
    CannotReplaceUser,
    ConfigurationError,
    IncompatibleVersion,
    InvalidAuth,
    MailboxNotFound,
    MailboxReadOnly,
    ServerUnreachable,
    TLSError,
    TokenExpired,
    UnexpectedStatus,
    UserNotFound,
    attenuate,
    inspect_token,
)
from pymap_admin.tokens import RequestTokens, TokenSource

from .conftest import socket_settings, tcp_settings


def unique_message(subject: str = "hello") -> bytes:
    tag = uuid.uuid4().hex
    return (f"From: sender@example.com\r\nTo: {DEMO_USER}\r\nSubject: {subject}\r\n"
            f"Message-Id: <{tag}@test>\r\n\r\nbody {tag}\r\n\xe9t\xe9 8-bit line\r\n"
            ).encode("latin-1")


async def test_ping_and_health(pymap: PymapServer) -> None:
    async with AdminClient(socket_settings(pymap)) as client:
        ping = await client.ping()
        assert ping.pymap_version == "0.36.7"
        assert ping.pymap_admin_version.startswith("0.12.")
        assert await client.check() is True
        assert await client.check("pymap.backend") is True
        with pytest.raises(UnexpectedStatus) as info:
            await client.check("no.such.service")
        assert info.value.status is not None and info.value.status.name == "NOT_FOUND"


async def test_append_is_stored_byte_for_byte(pymap: PymapServer) -> None:
    message = unique_message()
    async with AdminClient(socket_settings(pymap)) as client:
        result = await client.append(DEMO_USER, message, sender="sender@example.com",
                                     recipient=DEMO_USER, flags=["\\Flagged"])
    assert result.mailbox == "INBOX"
    assert result.uid is not None and result.validity is not None
    assert not result.discarded
    assert pymap.fetch_uid(result.uid) == message


async def test_append_to_named_mailbox(pymap: PymapServer) -> None:
    message = unique_message()
    async with AdminClient(socket_settings(pymap)) as client:
        result = await client.append(DEMO_USER, message, mailbox="Sent")
    assert result.mailbox == "Sent"
    assert result.uid is not None
    assert pymap.fetch_uid(result.uid, mailbox="Sent") == message


async def test_append_failures_map_to_exceptions(pymap: PymapServer) -> None:
    async with AdminClient(socket_settings(pymap)) as client:
        with pytest.raises(UserNotFound) as unknown:
            await client.append("nobody-here", unique_message())
        assert unknown.value.key == "UserNotFound"
        with pytest.raises(MailboxNotFound):
            await client.append(DEMO_USER, unique_message(), mailbox="No Such Folder")
        with pytest.raises(MailboxReadOnly):
            await client.append(DEMO_USER, unique_message(), mailbox="Trash")
        with pytest.raises(AppendFailure) as rejected:
            await client.append(DEMO_USER, unique_message("reject this"))
        assert rejected.value.reason == "message rejected"


async def test_sieve_discard_is_a_success_without_mailbox(pymap: PymapServer) -> None:
    async with AdminClient(socket_settings(pymap)) as client:
        result = await client.append(DEMO_USER, unique_message("discard this"))
    assert result.discarded
    assert result.uid is None


async def test_user_lifecycle(pymap: PymapServer) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}@example.com"
    async with AdminClient(socket_settings(pymap)) as client:
        created = await client.set_user(user, password="first", roles=["helper"],
                                        params={"quota": "10"})
        assert created.entity_tag is not None
        fetched = await client.get_user(user)
        assert fetched.roles == ("helper",)
        assert dict(fetched.params) == {"quota": "10"}
        assert fetched.password is not None and fetched.password != "first"  # hashed

        with pytest.raises(CannotReplaceUser):
            await client.set_user(user, password="x", overwrite=False)
        assert fetched.entity_tag is not None
        with pytest.raises(CannotReplaceUser):
            await client.set_user(user, password="x", previous_entity_tag=fetched.entity_tag + 1)

        changed = await client.change_password(user, "second")
        assert changed.entity_tag != fetched.entity_tag
        after = await client.get_user(user)
        assert after.roles == ("helper",)
        assert dict(after.params) == {"quota": "10"}
        assert after.password != fetched.password
        # The old password is gone, the new one works.
        with pytest.raises(InvalidAuth):
            await client.login(user, password="first")
        login = await client.login(user, password="second")
        assert inspect_token(login.bearer_token).authcid == user

        await client.delete_user(user)
        with pytest.raises(UserNotFound):
            await client.get_user(user)
        with pytest.raises(UserNotFound):
            await client.delete_user(user)


async def test_change_password_detects_a_concurrent_edit(pymap: PymapServer) -> None:
    user = f"c-{uuid.uuid4().hex[:8]}"
    async with AdminClient(socket_settings(pymap)) as client:
        await client.set_user(user, password="p", roles=["a"])
        stale = await client.get_user(user)
        await client.set_user(user, password="p", roles=["b"])  # someone else's edit
        assert stale.entity_tag is not None
        with pytest.raises(CannotReplaceUser):
            await client.set_user(user, password="q", roles=stale.roles,
                                  previous_entity_tag=stale.entity_tag)
        assert (await client.get_user(user)).roles == ("b",)


async def test_login_token_is_limited_to_its_user(pymap: PymapServer) -> None:
    user = f"l-{uuid.uuid4().hex[:8]}"
    async with AdminClient(socket_settings(pymap)) as admin:
        await admin.set_user(user, password="pw")
        login = await admin.login(user, password="pw")
        # Re-issue without password, for the identity of the admin token.
        reissued = await admin.login(user)
    assert inspect_token(reissued.bearer_token).kind == "login"
    for token in (login.bearer_token, reissued.bearer_token):
        settings = socket_settings(pymap, token=token, token_file=None)
        async with AdminClient(settings) as as_user:
            assert (await as_user.get_user(user)).user == user
            with pytest.raises(AuthorizationFailure):
                await as_user.get_user(DEMO_USER)


async def test_login_with_expiration(pymap: PymapServer) -> None:
    user = f"e-{uuid.uuid4().hex[:8]}"
    async with AdminClient(socket_settings(pymap)) as admin:
        await admin.set_user(user, password="pw")
        future = datetime.now(UTC) + timedelta(hours=1)
        fresh = await admin.login(user, password="pw", expiration=future)
        past = await admin.login(user, password="pw",
                                 expiration=datetime.now(UTC) - timedelta(seconds=1))
    info = inspect_token(fresh.bearer_token)
    assert info.expires is not None and abs((info.expires - future).total_seconds()) < 1
    async with AdminClient(socket_settings(pymap, token=fresh.bearer_token,
                                           token_file=None)) as client:
        assert (await client.get_user(user)).user == user
    async with AdminClient(socket_settings(pymap, token=past.bearer_token,
                                           token_file=None)) as client:
        with pytest.raises(TokenExpired) as expired:
            await client.get_user(user)
    assert "expired at" in str(expired.value)


async def test_bad_and_expired_tokens(pymap: PymapServer) -> None:
    bad = attenuate(pymap.token(), authzid="x") + "garbage"
    async with AdminClient(socket_settings(pymap, token="not-a-token",
                                           token_file=None)) as client:
        with pytest.raises(InvalidAuth) as invalid:
            await client.append(DEMO_USER, b"x")
        assert not isinstance(invalid.value, TokenExpired)
    async with AdminClient(socket_settings(pymap, token=bad, token_file=None)) as client:
        with pytest.raises(AuthError):
            await client.get_user(DEMO_USER)
    expired = attenuate(pymap.token(), expires=datetime.now(UTC) - timedelta(minutes=1))
    async with AdminClient(socket_settings(pymap, token=expired, token_file=None)) as client:
        with pytest.raises(TokenExpired):
            await client.get_user(DEMO_USER)


async def test_attenuated_request_token_is_refused_elsewhere_and_later(
        pymap: PymapServer) -> None:
    other = f"o-{uuid.uuid4().hex[:8]}"
    async with AdminClient(socket_settings(pymap)) as admin:
        await admin.set_user(other, password="pw")
    narrowed = RequestTokens(lifetime=timedelta(seconds=5)).for_user(pymap.token(), DEMO_USER)
    info = inspect_token(narrowed)
    assert info.kind == "admin" and info.authzid == DEMO_USER and info.expires is not None
    settings = socket_settings(pymap, token=narrowed, token_file=None)
    async with AdminClient(settings, attenuate_tokens=False) as client:
        assert (await client.get_user(DEMO_USER)).user == DEMO_USER
        with pytest.raises(AuthError):
            await client.get_user(other)
        await asyncio.sleep(max(0.0, (info.expires - datetime.now(UTC)).total_seconds()) + 0.2)
        with pytest.raises(TokenExpired):
            await client.get_user(DEMO_USER)


async def test_real_server_refuses_another_protocol_version(pymap: PymapServer) -> None:
    async with AdminClient(socket_settings(pymap), protocol_version="0.1.0") as client:
        with pytest.raises(IncompatibleVersion) as info:
            await client.ping()
    # pymap 0.36.7's environment lacks googleapis-common-protos, so its
    # grpclib drops the ErrorInfo detail: the status and message are all
    # that arrive (the fake server's tests cover decoding the detail).
    assert info.value.status is not None and info.value.status.name == "FAILED_PRECONDITION"


async def test_client_survives_a_server_restart(maildir_pymap: PymapServer) -> None:
    async with AdminClient(socket_settings(maildir_pymap)) as admin:
        await admin.set_user("carol", password="pw")
    settings = socket_settings(maildir_pymap)
    async with AdminClient(settings) as client:
        first = await client.append("carol", unique_message("before"))
        old_token = maildir_pymap.token()
        # In a thread, so the event loop sees the old connection close, as
        # it would in a running delivery agent.
        await asyncio.to_thread(maildir_pymap.restart)
        assert maildir_pymap.token() != old_token
        second = await client.append("carol", unique_message("after"))
    assert first.uid is not None and second.uid is not None
    stored = maildir_pymap.fetch_all(user="carol", password="pw")
    assert len(stored) == 2
    assert b"Subject: before" in stored[0] and b"Subject: after" in stored[1]


@pytest.mark.parametrize("login_tokens", [True, False])
async def test_first_call_after_an_unseen_restart_uses_a_new_connection(
        maildir_pymap: PymapServer, login_tokens: bool) -> None:
    async with AdminClient(socket_settings(maildir_pymap)) as admin:
        await admin.set_user("carol", password="pw")
    async with AdminClient(socket_settings(maildir_pymap, login_tokens=login_tokens)) as client:
        await client.append("carol", unique_message("before"))
        if client._login_tokens is not None:
            await client._login_tokens.wait(30)  # the restart must not cut a mint off
        # Restarted while the event loop is blocked: the old connection's
        # hang-up is not read before the next call, as on a busy agent.
        maildir_pymap.restart()
        second = await client.append("carol", unique_message("after"))
        assert client.pool.stats.ambiguous == 0
    assert second.uid is not None
    stored = maildir_pymap.fetch_all(user="carol", password="pw")
    assert sum(b"Subject: after" in message for message in stored) == 1


async def test_server_down_is_unreachable(fresh_pymap: PymapServer) -> None:
    settings = socket_settings(fresh_pymap)
    fresh_pymap.stop()
    async with AdminClient(settings) as client:
        with pytest.raises(ServerUnreachable) as info:
            await client.ping()
    assert isinstance(info.value, ConnectionError)


def test_missing_named_socket_is_not_replaced(tmp_path: Path, pymap: PymapServer) -> None:
    # An explicit path that does not exist stays the target: it is reported,
    # never swapped for another socket that happens to be found.
    missing = tmp_path / "missing.sock"
    settings = socket_settings(pymap, path=missing)
    assert settings.socket_path() == missing


async def test_every_rpc_over_tls(tls_pymap: PymapServer, tls_files: TLSFiles) -> None:
    client_pem = tls_files.ca.parent / "client.pem"
    for settings in (tcp_settings(tls_pymap, tls_files),
                     tcp_settings(tls_pymap, tls_files, cert=client_pem)):
        user = f"t-{uuid.uuid4().hex[:8]}"
        message = unique_message()
        async with AdminClient(settings) as client:
            assert (await client.ping()).pymap_version == "0.36.7"
            assert await client.check()
            await client.set_user(user, password="pw", roles=["x"])
            await client.change_password(user, "pw2")
            assert (await client.login(user, password="pw2")).bearer_token
            assert (await client.get_user(user)).roles == ("x",)
            await client.delete_user(user)
            result = await client.append(DEMO_USER, message)
        assert result.uid is not None
        assert tls_pymap.fetch_uid(result.uid) == message


async def test_tls_with_an_untrusted_certificate_fails_clearly(
        tls_pymap: PymapServer, tls_files: TLSFiles) -> None:
    import trustme

    other_ca = tls_files.ca.parent / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with AdminClient(tcp_settings(tls_pymap, tls_files, cafile=other_ca)) as client:
        with pytest.raises(TLSError) as info:
            await client.ping()
    assert isinstance(info.value, ConnectionError)
    # The published client's escape hatch still works when asked for.
    async with AdminClient(tcp_settings(tls_pymap, tls_files, cafile=other_ca,
                                        no_verify_cert=True)) as client:
        assert (await client.ping()).pymap_version == "0.36.7"


async def test_plain_tcp_to_the_tls_listener_is_a_transport_error(
        tls_pymap: PymapServer, tls_files: TLSFiles) -> None:
    async with AdminClient(tcp_settings(tls_pymap, tls_files, tls=False)) as client:
        with pytest.raises(ConnectionError):
            await client.ping()


async def test_many_concurrent_appends_share_one_channel(pymap: PymapServer) -> None:
    messages = [unique_message(f"bulk {i}") for i in range(40)]
    async with AdminClient(socket_settings(pymap)) as client:
        results = await asyncio.gather(*(client.append(DEMO_USER, m) for m in messages))
    uids = [r.uid for r in results]
    assert len(set(uids)) == 40 and None not in uids


def test_missing_token_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        TokenSource(path=tmp_path / "absent").current()
