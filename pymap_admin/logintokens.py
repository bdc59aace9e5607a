"""Login tokens: how a call avoids pymap's 0.3 s admin-token penalty.

pymap 0.36.7 makes every call authenticated with its *admin* token wait
``invalid_user_sleep`` (0.3 s): the admin token's identifier is empty, each
backend looks that empty identifier up in its token store as if it were a
login token, does not find it, and sleeps before the admin key verifies the
token anyway (see ``docs/pymap-admin-token-cost.md``). A *login* token,
minted for a user with ``Login`` (token auth, ``authcid=<user>``, authorized
by the admin token), is in the store and costs no sleep, on every backend.

So the client keeps one login token per user it delivers to:

- it is minted only after a call with the admin token succeeded for that
  user (so a token is never minted for a user that does not exist: the dict
  backend would store one), in the background for a long-lived client;
- it is kept in memory, and in a private cache folder (:class:`TokenCacheFolder`)
  so that the next process, or the daemon after a restart, reuses it instead
  of adding another record to pymap's token store;
- a refused one (pymap restarted with the dict backend, a SetUser on redis
  rotated the user's key, the user was deleted) is forgotten, and the call is
  retried once with the admin token; a new one is minted after that succeeds;
- if pymap issues no usable login token, the client says so once and keeps
  using the admin token.

Every request still carries the token narrowed to the user and to a few
minutes (:class:`~pymap_admin.tokens.RequestTokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from .stats import ClientStats

__all__ = ["LoginTokens", "TokenCacheFolder", "default_cache_folder"]

log = logging.getLogger("pymap_admin.logintokens")

#: After pymap issued no usable login token, how long every client using the
#: same cache folder keeps to the admin token before trying again.
UNAVAILABLE_SECONDS = 3600.0


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/pymap/login-tokens`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pymap" / "login-tokens"


class CacheUnusable(OSError):
    """The cache folder is missing and cannot be made, or is not private."""


class TokenCacheFolder:
    """Login tokens kept between processes: one file per (server, user).

    The folder is private (0700) and so is every file in it (0600), owned by
    the account that runs us; anything else found there is ignored, never
    trusted. An entry is replaced atomically (rename), so a reader sees a
    whole token or none. Minting takes a per-entry ``flock`` without waiting:
    of several processes that want a token for the same user at once, one
    mints and the others go on with the admin token, so the store gets one
    record, not one per process.

    ``scope`` names the server (its address): one folder serves several.
    """

    def __init__(self, path: Path, scope: str) -> None:
        self.path = path
        self.scope = scope
        self._checked = False
        self._warned = False

    def _name(self, user: str) -> str:
        import hashlib

        digest = hashlib.sha256(f"{self.scope}\0{user}".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:40]

    def _ensure(self) -> None:
        if self._checked:
            return
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.path)
        except OSError as exc:
            raise CacheUnusable(f"cannot create the token cache {self.path}: "
                                f"{exc.strerror or exc}") from exc
        import stat

        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise CacheUnusable(f"the token cache {self.path} is not a folder of ours")
        if info.st_mode & 0o077:
            os.chmod(self.path, 0o700)
        self._checked = True

    def _read(self, name: str) -> str | None:
        try:
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                if not self._warned:
                    self._warned = True
                    log.warning("ignoring %s: not private to this account", self.path / name)
                return None
            return handle.read(65536).decode("utf-8", "replace")

    def get(self, user: str) -> str | None:
        """The cached login token for ``user``, or None."""
        try:
            self._ensure()
        except CacheUnusable:
            return None
        text = self._read(self._name(user))
        if text is None:
            return None
        scope, user_line, token = [*text.split("\n"), "", "", ""][:3]
        if scope != self.scope or user_line != user or not token:
            return None
        return token

    def put(self, user: str, token: str) -> None:
        self._ensure()
        self._write(self._name(user), f"{self.scope}\n{user}\n{token}\n")

    def _write(self, name: str, text: str) -> None:
        temporary = self.path / f".{name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as handle:
                handle.write(text)
            os.replace(temporary, self.path / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def drop(self, user: str, token: str) -> None:
        """Forget ``user``'s token if it is still ``token`` (another process
        may have replaced it with a good one meanwhile)."""
        if self.get(user) == token:
            with contextlib.suppress(OSError):
                os.unlink(self.path / self._name(user))

    @contextlib.contextmanager
    def minting(self, user: str) -> Iterator[bool]:
        """Yields True while this process holds ``user``'s mint lock, False
        if another process is minting that token right now."""
        import fcntl

        self._ensure()
        lock = self.path / f"{self._name(user)}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _marker(self) -> str:
        return self._name("\0unavailable")

    def unavailable(self) -> bool:
        """True while a client recently found that pymap issues no usable
        login token (so this one need not ask again)."""
        try:
            self._ensure()
        except CacheUnusable:
            return False
        text = self._read(self._marker())
        if text is None:
            return False
        try:
            return float(text.split("\n")[1]) > time.time()
        except (IndexError, ValueError):
            return False

    def mark_unavailable(self) -> None:
        with contextlib.suppress(OSError):
            self._ensure()
            self._write(self._marker(), f"{self.scope}\n{time.time() + UNAVAILABLE_SECONDS}\n")


#: Mints a login token for a user: the token, or None when the user has none
#: to give (gone). Raises :class:`NoLoginTokens` when pymap gives no usable one.
Mint = Callable[[str], Awaitable[str | None]]


class NoLoginTokens(Exception):
    """pymap issued no usable login token (no token support, or refused)."""


class LoginTokens:
    """The per-user login tokens of one client.

    ``folder`` keeps them between processes. ``need_folder`` (a short-lived
    process such as ``pymap-admin append``) mints only where the token can be
    kept: minting once per process would add a record to pymap's token store
    with every message.
    """

    def __init__(self, mint: Mint, folder: TokenCacheFolder | None, *,
                 need_folder: bool = False, stats: ClientStats) -> None:
        self._mint = mint
        self._folder = folder
        self._memory: dict[str, str] = {}
        self._pending: dict[str, asyncio.Task[str | None]] = {}
        #: Minted by us and not yet accepted once by the server.
        self._unproven: set[str] = set()
        #: Fresh tokens refused at their first use since one was accepted.
        self._fresh_refusals = 0
        self._disabled: str | None = None
        self._disabled_until = float("inf")
        self.stats = stats
        if need_folder and folder is None:
            self._disable("no token cache folder to keep them in")
        elif folder is not None:
            try:
                folder._ensure()
                unavailable = folder.unavailable()
            except CacheUnusable as exc:
                self._folder = None
                if need_folder:
                    self._disable(str(exc))
                else:
                    log.warning("%s; login tokens are kept in memory only", exc)
            else:
                if unavailable:
                    self._disable("pymap issued no usable login token recently")

    @property
    def enabled(self) -> bool:
        if self._disabled is not None and time.monotonic() >= self._disabled_until:
            self._disabled = None
        return self._disabled is None

    def _disable(self, reason: str, seconds: float | None = None) -> None:
        if self._disabled is None:
            log.warning("using the admin token (pymap makes each such call wait 0.3 s): "
                        "login tokens unavailable: %s", reason)
        self._disabled = reason
        self._disabled_until = (float("inf") if seconds is None
                                else time.monotonic() + seconds)

    def _unavailable(self, reason: str) -> None:
        """pymap gives no usable login token: say so once, ask again later."""
        if self._folder is not None:
            self._folder.mark_unavailable()
        self._disable(reason, UNAVAILABLE_SECONDS)

    async def token_for(self, user: str) -> str | None:
        """``user``'s login token, waiting for one being minted; None: use
        the admin token."""
        if not self.enabled:
            return None
        token = self._memory.get(user)
        if token is not None:
            return token
        pending = self._pending.get(user)
        if pending is not None:
            with contextlib.suppress(Exception):
                return await asyncio.shield(pending)
            return None
        if self._folder is not None:
            token = self._folder.get(user)
            if token is not None:
                self.stats.cache_hits += 1
                log.debug("user=%s login token from the cache", user)
                self._remember(user, token)
                return token
        return None

    def _remember(self, user: str, token: str) -> None:
        if len(self._memory) >= 100_000:
            self._memory.clear()
        self._memory[user] = token

    def accepted(self, token: str) -> None:
        """The server took ``token``: count it."""
        self.stats.fast_calls += 1
        self._fresh_refusals = 0
        if self._unproven:
            self._unproven.discard(token)

    def refused(self, user: str, token: str) -> None:
        """The server refused ``token`` for ``user``: forget it."""
        self.stats.refused += 1
        if token in self._unproven:
            self._unproven.discard(token)
            self._fresh_refusals += 1
            # Once can be a restart between minting and using; twice running,
            # minting more would only fill pymap's store, a record a message.
            if self._fresh_refusals >= 2:
                self._unavailable("pymap refuses the login tokens it issues")
        if self._memory.get(user) == token:
            del self._memory[user]
        if self._folder is not None:
            with contextlib.suppress(OSError):
                self._folder.drop(user, token)
        log.info("user=%s login token refused; it is minted again after the next "
                 "call with the admin token", user)

    def forget(self, user: str) -> None:
        """Drop ``user``'s token (the user was deleted)."""
        token = self._memory.pop(user, None)
        if token is not None and self._folder is not None:
            with contextlib.suppress(OSError):
                self._folder.drop(user, token)

    def admin_call_succeeded(self, user: str) -> None:
        """A call with the admin token worked for ``user``: the user exists
        and we may act for it, so mint its login token (once)."""
        self.stats.admin_calls += 1
        if not self.enabled or user in self._memory or user in self._pending:
            return
        task = asyncio.get_running_loop().create_task(self._mint_once(user))
        self._pending[user] = task
        task.add_done_callback(lambda _: self._pending.pop(user, None))

    async def _mint_once(self, user: str) -> str | None:
        folder = self._folder
        if folder is None:
            return await self._mint_and_keep(user)
        try:
            with folder.minting(user) as ours:
                if not ours:
                    return None  # another process is minting it
                # It may have been minted while we waited for our call.
                token = folder.get(user)
                if token is not None:
                    self._remember(user, token)
                    return token
                return await self._mint_and_keep(user)
        except OSError as exc:
            log.warning("token cache %s: %s", folder.path, exc)
            return None

    async def _mint_and_keep(self, user: str) -> str | None:
        try:
            token = await self._mint(user)
        except NoLoginTokens as exc:
            self._unavailable(str(exc))
            return None
        except Exception as exc:  # pymap down, a deadline: the next success tries again
            log.debug("user=%s minting a login token failed: %s", user, exc)
            return None
        if token is None:
            return None
        self.stats.mints += 1
        self._unproven.add(token)
        # Rare (once per user) and it adds a record to pymap's token store.
        log.info("user=%s minted a login token", user)
        self._remember(user, token)
        if self._folder is not None:
            try:
                self._folder.put(user, token)
            except OSError as exc:
                log.warning("cannot keep a login token in %s: %s", self._folder.path, exc)
        return token

    async def wait(self, timeout: float) -> None:
        """Let the mints under way finish (a short-lived process, before it
        exits), for at most ``timeout`` seconds."""
        if self._pending:
            await asyncio.wait(list(self._pending.values()), timeout=timeout)

    def cancel(self) -> None:
        for task in self._pending.values():
            task.cancel()
