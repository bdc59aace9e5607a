"""The counters of one :class:`~pymap_admin.AdminClient`, in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientStats"]


@dataclass(slots=True)
class ClientStats:
    """What the client decided and did, for logs, metrics, tests and
    benchmarks. The pool (:mod:`pymap_admin.pool`) and the login-token fast
    path (:mod:`pymap_admin.logintokens`) count into the same object."""

    #: Calls moved to another endpoint because theirs failed before sending.
    failovers: int = 0
    #: Calls that failed after their request was sent (may have been done).
    ambiguous: int = 0
    #: Of those, the ones retried on another endpoint.
    ambiguous_retried: int = 0
    #: Calls refused because no endpoint was healthy.
    no_healthy: int = 0
    #: Calls for a user authenticated with that user's login token.
    fast_calls: int = 0
    #: Calls for a user authenticated with the admin token (fast path on).
    admin_calls: int = 0
    #: Login tokens minted (each one is a record in pymap's token store).
    mints: int = 0
    #: Login tokens found in the cache folder.
    cache_hits: int = 0
    #: Login tokens the server refused (then forgotten; the call retried).
    refused: int = 0
