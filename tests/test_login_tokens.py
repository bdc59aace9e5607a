"""The login-token fast path against real pymap 0.36.7 (dict, maildir, redis):
taken, kept, re-minted, refused, and falling back to the admin token.

Whether a call took the fast path is read from the client's counters
(``AdminClient.fast_path``), never from timing; what pymap keeps in its
token store is read from the store itself where it can be (maildir's
``pymap-tokens`` file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.localpymap import PymapServer, cleanup, free_port, make_maildir_server
from pymap_admin import AdminClient, AuthorizationFailure, ConnectionSettings, TransportError
from pymap_admin.logintokens import TokenCacheFolder
from pymap_admin.stats import ClientStats
from pymap_admin.tokens import token_kind

from ._require import require_tool
from .conftest import require_pymap, socket_settings
from .fake_admin import FakeAdmin, RunningFake, failure
from .test_cli_real import SCRIPT
from .test_tokens import admin_token

PASSWORD = "pw"


def message(tag: str) -> bytes:
    return (f"From: s@example.com\r\nSubject: {tag}\r\nMessage-Id: <{tag}@test>\r\n\r\n"
            f"body {tag}\r\n").encode()


def subject(stored: bytes) -> str:
    found = re.search(rb"^Subject: (\S+)", stored, re.MULTILINE)
    assert found is not None
    return found.group(1).decode()


class RedisServer:
    """A private redis-server for one test (no persistence)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        program = require_tool("redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [program, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(params=["dict", "maildir", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PymapServer]:
    """A pymap of this test's own, on each backend the fast path claims."""
    require_pymap()
    backend = request.param
    redis: RedisServer | None = None
    if backend == "dict":
        pymap = PymapServer(workdir=tmp_path / "pymap")
    elif backend == "maildir":
        pymap = make_maildir_server(tmp_path / "pymap")
    else:
        redis = RedisServer(tmp_path / "redis")
        redis.start()
        pymap = PymapServer(workdir=tmp_path / "pymap",
                            backend=("redis", "--address", f"redis://127.0.0.1:{redis.port}"))
    pymap.start()
    try:
        yield pymap
    finally:
        cleanup(pymap)
        if redis is not None:
            redis.stop()


def backend_of(server: PymapServer) -> str:
    return server.backend[0]


def maildir_token_records(server: PymapServer) -> int | None:
    """How many login tokens maildir's store holds; None on other backends."""
    if backend_of(server) != "maildir":
        return None
    path = Path(server.backend[1]) / "pymap-tokens"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def settings(server: PymapServer, cache: Path | None, **kw: object) -> ConnectionSettings:
    return socket_settings(server, token_cache=str(cache) if cache else "none", **kw)


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def reconnected(client: AdminClient) -> None:
    """After a pymap restart the first call on the old connection fails
    (Connection lost); a ping takes that hit."""
    for _ in range(50):
        try:
            await client.ping()
            return
        except TransportError:
            await asyncio.sleep(0.1)
    raise AssertionError("pymap did not come back")


def stats(client: AdminClient) -> ClientStats:
    assert client.fast_path is not None
    return client.fast_path


async def new_user(server: PymapServer) -> str:
    user = f"u{uuid.uuid4().hex[:8]}"
    async with AdminClient(socket_settings(server), login_tokens=False) as admin:
        await admin.set_user(user, password=PASSWORD)
    return user


def stored(server: PymapServer, user: str) -> list[bytes]:
    return server.fetch_all(user=user, password=PASSWORD)


async def test_fast_path_taken_and_kept_between_clients(server: PymapServer,
                                                        tmp_path: Path) -> None:
    user = await new_user(server)
    cache = tmp_path / "cache"
    async with AdminClient(settings(server, cache)) as client:
        await client.append(user, message("first"))
        assert stats(client).admin_calls == 1 and stats(client).fast_calls == 0
        # The login token is minted after that success, in the background.
        await until(lambda: stats(client).mints == 1)
        await client.append(user, message("second"))
        await client.get_user(user)
        assert stats(client).fast_calls == 2
        assert stats(client).admin_calls == 1
    # The next process (or the daemon after a restart) reuses the token.
    async with AdminClient(settings(server, cache)) as client:
        await client.append(user, message("third"))
        assert stats(client) == ClientStats(fast_calls=1, cache_hits=1)
    subjects = [m for m in stored(server, user) if b"Subject:" in m]
    assert len(subjects) == 3
    # One token in pymap's store for this user, however many clients.
    assert maildir_token_records(server) in (None, 1)
    entries = [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1
    assert cache.stat().st_mode & 0o777 == 0o700
    assert entries[0].stat().st_mode & 0o777 == 0o600


async def test_request_tokens_stay_narrowed(server: PymapServer, tmp_path: Path) -> None:
    """The login token travels attenuated like the admin token: a caveat
    names the user and one sets a time limit (checked on the cached token)."""
    from pymap_admin.tokens import inspect_token

    user = await new_user(server)
    cache = tmp_path / "cache"
    async with AdminClient(settings(server, cache)) as client:
        await client.append(user, message("a"))
        await until(lambda: stats(client).mints == 1)
    token = TokenCacheFolder(cache, socket_settings(server).target).get(user)
    assert token is not None and token_kind(token) == "login"
    from pymap_admin.tokens import RequestTokens

    narrowed = inspect_token(RequestTokens().for_user(token, user))
    assert narrowed.authzid == user and narrowed.expires is not None
    assert narrowed.expires.second == 0  # one token per minute: HPACK reuses it


@pytest.mark.parametrize("backend", ["dict", "maildir"])
async def test_remint_after_pymap_restarts(backend: str, tmp_path: Path) -> None:
    """dict loses its tokens on restart: the cached one is refused, the call
    retried with the admin token and a new one minted. maildir keeps them:
    the cached one still works and nothing is minted."""
    require_pymap()
    server = (PymapServer(workdir=tmp_path / "pymap") if backend == "dict"
              else make_maildir_server(tmp_path / "pymap"))
    server.start()
    try:
        user = await new_user(server)
        cache = tmp_path / "cache"
        async with AdminClient(settings(server, cache)) as client:
            await client.append(user, message("before"))
            await until(lambda: stats(client).mints == 1)
            server.restart()
            await reconnected(client)
            if backend == "dict":
                # The dict backend forgot the user too: create it again.
                async with AdminClient(socket_settings(server), login_tokens=False) as admin:
                    await admin.set_user(user, password=PASSWORD)
            await client.append(user, message("after"))
            if backend == "dict":
                assert stats(client).refused == 1
                await until(lambda: stats(client).mints == 2)
            else:
                assert stats(client).refused == 0 and stats(client).mints == 1
            await client.append(user, message("later"))
            assert stats(client).fast_calls == (1 if backend == "dict" else 2)
        messages = stored(server, user)
        # Each message once; dict lost the one from before the restart.
        assert sorted(subject(m) for m in messages) == (
            ["after", "later"] if backend == "dict" else ["after", "before", "later"])
        assert maildir_token_records(server) in (None, 1)
    finally:
        cleanup(server)


async def test_token_refused_for_another_user(server: PymapServer, tmp_path: Path) -> None:
    """A login token acts for its own user only: used for another one (here a
    mixed-up cache entry) it is refused, forgotten, and the message still goes
    to the right user, with the admin token, once."""
    alice, bob = await new_user(server), await new_user(server)
    cache = tmp_path / "cache"
    target = socket_settings(server).target
    async with AdminClient(settings(server, cache)) as client:
        await client.append(alice, message("for-alice"))
        await until(lambda: stats(client).mints == 1)
    folder = TokenCacheFolder(cache, target)
    alice_token = folder.get(alice)
    assert alice_token is not None
    async with AdminClient(socket_settings(server, token=alice_token, token_file=None,
                                           login_tokens=False)) as direct:
        with pytest.raises(AuthorizationFailure):
            await direct.append(bob, message("wrong"))
    folder.put(bob, alice_token)
    async with AdminClient(settings(server, cache)) as client:
        await client.append(bob, message("for-bob"))
        assert stats(client).refused == 1 and stats(client).admin_calls == 1
        await until(lambda: stats(client).mints == 1)
    assert folder.get(bob) not in (None, alice_token)
    assert [b"for-bob" in m for m in stored(server, bob)] == [True]
    assert [b"for-alice" in m for m in stored(server, alice)] == [True]


async def test_concurrent_clients_mint_one_token(tmp_path: Path,
                                                 maildir_pymap: PymapServer) -> None:
    """Five processes' worth of clients delivering to a new user at once
    share one cache folder: one of them mints, the store gets one record."""
    server = maildir_pymap
    user = await new_user(server)
    cache = tmp_path / "cache"
    clients = [AdminClient(settings(server, cache), short_lived=True) for _ in range(5)]
    try:
        await asyncio.gather(*(c.append(user, message(f"m{i}"))
                               for i, c in enumerate(clients)))
        for client in clients:
            await client.__aexit__(None, None, None)
    finally:
        for client in clients:
            client.close()
    assert sum(stats(c).mints for c in clients) == 1
    assert maildir_token_records(server) == 1
    assert len(stored(server, user)) == 5


async def test_nothing_lost_or_duplicated_across_a_restart_mid_load(
        tmp_path: Path, maildir_pymap: PymapServer) -> None:
    """maildir under load from one client; pymap is restarted mid-way with its
    token store wiped, so every cached login token is refused at once. Each
    message the client confirmed is stored exactly once; one that failed
    (pymap down) is retried, as an MTA would, until confirmed."""
    server = maildir_pymap
    users = [await new_user(server) for _ in range(4)]
    cache = tmp_path / "cache"
    tags = [f"m{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(120)]
    confirmed: dict[str, int] = {}
    uncertain: set[str] = set()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for tag in tags:
        queue.put_nowait(tag)

    async with AdminClient(settings(server, cache, timeout=20.0)) as client:
        async def worker() -> None:
            while not queue.empty():
                tag = queue.get_nowait()
                user = users[int(tag[1:4]) % len(users)]
                while True:
                    try:
                        await client.append(user, message(tag))
                    except TransportError:
                        # Connection lost mid-call: stored or not, we
                        # cannot know (at-least-once); try again later.
                        uncertain.add(tag)
                        await asyncio.sleep(0.2)
                        continue
                    confirmed[tag] = confirmed.get(tag, 0) + 1
                    break

        async def restart() -> None:
            await until(lambda: len(confirmed) >= 40 and stats(client).fast_calls > 10)
            server.stop()
            (Path(server.backend[1]) / "pymap-tokens").write_text("")
            server.start()

        await asyncio.gather(restart(), *(worker() for _ in range(8)))
        assert stats(client).refused >= 1
    assert sorted(confirmed) == sorted(tags)
    assert set(confirmed.values()) == {1}
    counts: dict[str, int] = {}
    for user in users:
        for stored_message in stored(server, user):
            tag = subject(stored_message)
            counts[tag] = counts.get(tag, 0) + 1
    assert sorted(counts) == sorted(tags)  # nothing lost
    duplicated = {tag for tag, n in counts.items() if n > 1}
    assert duplicated <= uncertain  # only after a lost connection


# --- falling back to the admin token ---------------------------------------


async def test_fallback_when_pymap_issues_no_login_token(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A server whose Login gives no usable login token: one warning, the
    admin token for every call, and no further Login calls."""
    token_file = tmp_path / "token"
    token_file.write_text(admin_token())
    fake = FakeAdmin()
    with caplog.at_level(logging.WARNING, logger="pymap_admin.logintokens"):
        async with RunningFake(fake, tmp_path / "s.sock"), \
                AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token_file,
                                               token_cache=str(tmp_path / "cache"))) as client:
            await client.append("alice", b"x")
            await until(lambda: any(c.method == "Login" for c in fake.calls))
            await asyncio.sleep(0.1)  # the answer to Login is handled
            for _ in range(2):
                await client.append("alice", b"x")
            assert stats(client).admin_calls == 3 and stats(client).fast_calls == 0
    assert [c.method for c in fake.calls].count("Login") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "admin token" in warnings[0].getMessage()
    # The folder remembers it: the next process does not ask again.
    assert TokenCacheFolder(tmp_path / "cache", f"unix:{tmp_path / 's.sock'}").unavailable()


async def test_fallback_when_a_fresh_token_is_refused(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A login token refused at its first use: the message still goes (with
    the admin token), the client warns once and mints no more."""
    from .fake_admin import _default_append

    real = make_login_token()
    token_file = tmp_path / "token"
    token_file.write_text(admin_token())
    fake = FakeAdmin()

    async def login(request: object) -> object:
        from pymap_admin.grpc import admin_pb2 as pb

        return pb.LoginResponse(result=pb.Result(code=pb.SUCCESS), bearer_token=real)

    async def append(request: object) -> object:
        from pymap_admin.grpc import admin_pb2 as pb

        token = fake.calls[-1].metadata["auth-token"]
        if token_kind(token) == "login":
            return pb.AppendResponse(result=failure("InvalidAuth", "Append NO bad token"))
        return await _default_append(request)  # type: ignore[arg-type]

    fake.script["Login"] = login
    fake.script["Append"] = append
    with caplog.at_level(logging.WARNING, logger="pymap_admin.logintokens"):
        async with RunningFake(fake, tmp_path / "s.sock"), \
                AdminClient(ConnectionSettings(path=tmp_path / "s.sock", token_file=token_file,
                                               token_cache="none")) as client:
            await client.append("alice", b"x")
            await until(lambda: stats(client).mints == 1)
            # Once may be a restart between minting and using: minted again.
            result = await client.append("alice", b"y")
            assert result.uid == 1
            await until(lambda: stats(client).mints == 2)
            # Twice running: no more.
            await client.append("alice", b"z")
            await client.append("alice", b"w")
            assert stats(client).refused == 2 and stats(client).mints == 2
    methods = [c.method for c in fake.calls]
    assert methods == ["Append", "Login", "Append", "Append", "Login", "Append", "Append",
                       "Append"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


def make_login_token() -> str:
    from pymacaroons import Macaroon

    macaroon = Macaroon(location="", identifier="0123abcd", key=b"k" * 32)
    macaroon.add_first_party_caveat("authcid = alice")
    serialized: str = macaroon.serialize()
    return serialized


# --- pymap-admin append: one process per message ----------------------------


def run_append(server: PymapServer, user: str, tag: str, env: dict[str, str],
               *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--path", str(server.socket_path), "--token-file",
         str(server.token_path), *extra, "append", user],
        input=message(tag).decode(), capture_output=True, text=True, env=env, timeout=60)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAP_ADMIN")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "home" / ".cache")
    env.update(extra)
    return env


async def test_append_processes_share_the_cache(tmp_path: Path,
                                                maildir_pymap: PymapServer) -> None:
    server = maildir_pymap
    user = await new_user(server)
    env = cli_env(tmp_path)
    first = run_append(server, user, "one", env, "--debug")
    assert first.returncode == 0, first.stderr
    assert "minted a login token" in first.stderr
    second = run_append(server, user, "two", env, "--debug")
    assert second.returncode == 0, second.stderr
    assert "login token from the cache" in second.stderr
    assert "minted" not in second.stderr
    for tag in ("three", "four"):
        assert run_append(server, user, tag, env).returncode == 0
    assert maildir_token_records(server) == 1
    assert len(stored(server, user)) == 4
    folder = Path(env["XDG_CACHE_HOME"]) / "pymap" / "login-tokens"
    assert folder.stat().st_mode & 0o777 == 0o700


async def test_append_without_a_usable_cache_keeps_to_the_admin_token(
        tmp_path: Path, maildir_pymap: PymapServer) -> None:
    """A short-lived process that cannot keep a login token does not mint one
    (that would add a record to pymap's store per message): one warning line,
    the admin token, the message delivered."""
    server = maildir_pymap
    user = await new_user(server)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = cli_env(tmp_path, PYMAP_ADMIN_TOKEN_CACHE=str(blocker / "cache"))
    for tag in ("one", "two"):
        done = run_append(server, user, tag, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("2.0.0")
        lines = [line for line in done.stderr.splitlines() if "admin token" in line]
        assert len(lines) == 1, done.stderr
    assert maildir_token_records(server) == 0
    assert len(stored(server, user)) == 2


def test_cache_ignores_entries_not_private(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    folder = TokenCacheFolder(tmp_path / "cache", "unix:/x")
    folder.put("alice", "token-a")
    assert folder.get("alice") == "token-a"
    assert folder.get("bob") is None
    entry = next(p for p in (tmp_path / "cache").iterdir())
    entry.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert folder.get("alice") is None
    assert "not private" in caplog.text
    # Another server's entry under the same user name is not this one's.
    entry.chmod(0o600)
    assert TokenCacheFolder(tmp_path / "cache", "unix:/y").get("alice") is None
    # A folder made readable by others is made private again.
    (tmp_path / "cache").chmod(0o755)
    assert TokenCacheFolder(tmp_path / "cache", "unix:/x").get("alice") == "token-a"
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(tmp_path / "cache")
