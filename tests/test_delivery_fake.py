"""The delivery backend's RCPT checks against the fake admin server: one
GetUser per user however many sessions ask, remembered briefly, and the two
switches."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymap_admin import AdminClient, ConnectionSettings
from pymap_deliver.delivery import DeliveryOptions, PymapBackend

from .fake_admin import DroppingServer, FakeAdmin, RunningFake, default_user, respond_failure
from .lmtp_client import connected, running_server
from .test_tokens import admin_token


def client(path: Path, tmp_path: Path) -> AdminClient:
    token = tmp_path / "token"
    token.write_text(admin_token())
    # Counts GetUser calls: without the login-token fast path's Login calls.
    return AdminClient(ConnectionSettings(path=path, token_file=token, timeout=5,
                                          login_tokens=False))


async def test_lookups_are_shared_and_cached(tmp_path: Path) -> None:
    release = asyncio.Event()
    fake = FakeAdmin()
    unknown = respond_failure("UserNotFound", "GetUser NO [NONEXISTENT] User not found.")

    async def get_user(request: object) -> object:
        await release.wait()
        if getattr(request, "user", "") == "ghost@example.com":
            return await unknown(request)
        return await default_user(request)

    fake.script["GetUser"] = get_user
    async with RunningFake(fake, tmp_path / "s.sock"), \
            client(tmp_path / "s.sock", tmp_path) as admin:
        backend = PymapBackend(admin, DeliveryOptions(hostname="h"))
        asks = [asyncio.create_task(backend.check_recipient("Alice@Example.COM"))
                for _ in range(10)]
        asks.append(asyncio.create_task(backend.check_recipient("ghost@example.com")))
        while fake.in_flight < 2:
            await asyncio.sleep(0.01)
        release.set()
        answers = await asyncio.gather(*asks)
        assert answers[:10] == [None] * 10
        assert str(answers[10]) == "550 5.1.1 User unknown"
        # Remembered: no new calls for either.
        assert await backend.check_recipient("Alice@example.com") is None
        assert str(await backend.check_recipient("ghost@example.com")) == "550 5.1.1 User unknown"
    assert sorted(call.request.user for call in fake.calls) == [
        "Alice@example.com", "ghost@example.com"]


async def test_unreachable_defers_or_accepts_as_configured(tmp_path: Path) -> None:
    async with DroppingServer(tmp_path / "d.sock"), \
            client(tmp_path / "d.sock", tmp_path) as admin:
        strict = PymapBackend(admin, DeliveryOptions(hostname="h"))
        lenient = PymapBackend(admin, DeliveryOptions(hostname="h",
                                                      defer_unreachable_at_rcpt=False))
        unchecked = PymapBackend(admin, DeliveryOptions(hostname="h", check_recipients=False))
        assert str(await strict.check_recipient("a@b")) == "451 4.4.1 Mail store unreachable"
        assert await lenient.check_recipient("a@b") is None
        assert await unchecked.check_recipient("a@b") is None


async def test_a_remembered_recipient_is_answered_without_a_call(tmp_path: Path) -> None:
    """A recipient looked up within the cache's lifetime is answered by the
    session at once (counted in ``lookups_known``); a new one is asked."""
    fake = FakeAdmin()
    async with RunningFake(fake, tmp_path / "s.sock"), \
            client(tmp_path / "s.sock", tmp_path) as admin:
        backend = PymapBackend(admin, DeliveryOptions(hostname="h"))
        async with running_server(backend) as server, connected(server) as lmtp:
            for round_ in range(3):
                rcpt, done = await lmtp.transaction(
                    "s@example.com", ["a@example.com", "b@example.com"],
                    b"Subject: x\r\n\r\nhi\r\n")
                assert [r.code for r in rcpt + done] == [250] * 4, round_
    assert [call.request.user for call in fake.calls if call.method == "GetUser"] == [
        "a@example.com", "b@example.com"]
    assert backend.stats.lookups["hit"] == 6
    assert backend.stats.lookups_known == 4
