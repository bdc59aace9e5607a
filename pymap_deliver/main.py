"""The ``pymap-deliver`` command: an LMTP delivery agent in front of pymap.

Start-up: read the configuration (:mod:`pymap_deliver.config`), bind the
listeners, drop privileges (:mod:`pymap_deliver.privileges`), read the token,
probe pymap and say in one line whether it answers, then tell systemd we are
ready (:mod:`pymap_deliver.notify`). Signals: SIGTERM/SIGINT stop gracefully,
SIGHUP re-reads the config file and the token and reopens the log file
(sessions stay open; changed pymap connection settings get a new client,
calls under way finish on the old one; an invalid new configuration is
logged and the old one kept), SIGUSR1 logs a status line.

With ``all_addresses``, the members are the addresses of one name, looked
up again on SIGHUP and every ``resolve_interval`` seconds: new addresses
get a new client in the same way; a failed lookup keeps the members.

Every exit status comes from :class:`pymap_admin.outcomes.ExitStatus`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pymap_admin.errors import AdminError, ConfigurationError
from pymap_admin.outcomes import ExitStatus

from .config import PROG, DaemonConfig, UsageError, build, find_config_file, load, render
from .logfmt import event, parse, reopen_files
from .metrics import MetricsServer, Stats

if TYPE_CHECKING:
    import argparse

    from pymap_admin.client import AdminClient
    from pymap_admin.settings import ConnectionSettings

    from .delivery import PymapBackend
    from .server import DeliveryServer

__all__ = ["Daemon", "configure_logging", "main", "parse_args"]

log = logging.getLogger("pymap_deliver")

#: Seconds between looks at a resolve_interval of 0 (a SIGHUP may set one).
_RESOLVE_RECHECK = 60.0
#: Options that a SIGHUP cannot change: they need the sockets or the
#: privileges the daemon gave up at start-up.
RESTART_ONLY = frozenset({"listen", "unix", "unix_mode", "unix_owner", "unix_group",
                          "systemd", "user", "group", "allow_root", "metrics"})


def configure_logging(level: int, stream: TextIO, *, target: str = "stderr",
                      log_file: Path | None = None) -> None:
    """logfmt lines to ``target`` (see :mod:`pymap_deliver.logfmt`)."""
    from .logfmt import configure

    configure(level, target=target, stream=stream, log_file=log_file)


class Daemon:
    """One run of the daemon: the configuration, the client, the server."""

    def __init__(self, ns: argparse.Namespace, config: DaemonConfig) -> None:
        self.ns = ns
        self.config = config
        self.client: AdminClient | None = None
        self.backend: PymapBackend | None = None
        self.server: DeliveryServer | None = None
        self.settings: ConnectionSettings | None = None
        self.stats = Stats()
        self.metrics: MetricsServer | None = None
        #: Probes, the closing of replaced clients, the name's lookups.
        self._background: set[asyncio.Task[object]] = set()
        #: The all_addresses name did not resolve at the last lookup.
        self._unresolved = False

    # --- start-up -----------------------------------------------------------

    @property
    def _client(self) -> AdminClient:
        """The client calls go through now (a SIGHUP may replace it)."""
        assert self.client is not None
        return self.client

    def _after_bind(self) -> None:
        """Sockets are bound, nothing accepted yet: become the serving user."""
        from .privileges import drop_privileges, refuse_root, resolve_identity

        user = self.config["user"]
        if user is not None:
            identity = resolve_identity(user, self.config["group"])
            drop_privileges(identity)
            log.info(event("privileges dropped",
                user=identity.user, uid=identity.uid, gid=identity.gid))
        refuse_root(self.config["allow_root"])

    async def probe(self) -> bool:
        """One clear line: pymap answers, or not and why."""
        assert self.client is not None and self.settings is not None
        try:
            serving = await self.client.check(timeout=min(self.settings.timeout, 10.0))
        except AdminError as exc:
            self.stats.pymap_reachable = False
            log.warning(event("pymap unreachable: deferring mail with 451 until it answers",
                        pymap=self.settings.target,
                                     reason=" ".join(str(exc).split()) or type(exc).__name__))
            return False
        self.stats.pymap_reachable = serving
        if serving:
            log.info(event("pymap reachable", pymap=self.settings.target))
        else:
            log.warning(event("pymap not serving: deferring mail with 451",
                        pymap=self.settings.target))
        return serving

    @staticmethod
    def _new_client(settings: ConnectionSettings,
                    members: Sequence[ConnectionSettings] | None = None) -> AdminClient:
        from pymap_admin.client import AdminClient

        client = AdminClient(settings, members=members)
        if not client.tokens.configured:
            client.close()
            raise ConfigurationError(
                "no admin token: set PYMAP_ADMIN_TOKEN or token_file in [pymap] "
                "(pymap writes one to $TMPDIR/pymap/pymap-admin.token)")
        return client

    async def run(self) -> int:
        from pymap_admin.settings import load_settings

        config = self.config
        self.settings = load_settings(config.connection, config_file=config.admin_config)
        self.client = self._new_client(self.settings)
        try:
            return await self._serve(config)
        finally:
            self._client.close()
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _serve(self, config: DaemonConfig) -> int:
        from .delivery import PymapBackend
        from .notify import notify
        from .server import DeliveryServer

        assert config.server.delivery is not None
        self.backend = PymapBackend(self._client, config.server.delivery)
        self.backend.stats = self.stats
        self.server = server = DeliveryServer(self.backend, config.server, stats=self.stats)
        if config["metrics"] is not None:
            self.metrics = MetricsServer.for_daemon(
                config["metrics"], self.stats, sessions=lambda: server.session_count,
                in_flight=lambda: self.backend.in_flight if self.backend else 0,
                token_reads=lambda: self._client.tokens.reads,
                token_mints=lambda: self._client.tokens_minted,
                serving=lambda: not server.stopping, pool=self._client.pool)
            await self.metrics.start()
        try:
            await server.start(after_bind=self._after_bind)
        except BaseException:
            if self.metrics is not None:
                self.metrics.close()
            raise
        try:
            # Read as the serving user: it must be able to re-read it later.
            self._client.tokens.current()
        except ConfigurationError:
            server.stop()
            await server.wait_closed()
            raise
        self._install_signal_handlers()
        await self.probe()
        self._in_background(self._follow_addresses())
        notify("READY=1", f"STATUS=serving, pymap "
               f"{'reachable' if self.stats.pymap_reachable else 'unreachable'}",
               f"MAINPID={os.getpid()}")
        await server.wait_closed()
        if self.metrics is not None:
            self.metrics.close()
        notify("STOPPING=1")
        return ExitStatus.OK

    # --- signals --------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.log_status)

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        from .notify import notify

        log.info(event("stopping", signal=signum.name))
        notify("STOPPING=1")
        if self.server is not None:
            self.server.stop()

    def status(self) -> dict[str, object]:
        reachable = {None: "unknown", True: "yes", False: "no"}[self.stats.pymap_reachable]
        values: dict[str, object] = {
            "sessions": self.server.session_count if self.server is not None else 0,
            "in_flight": self.backend.in_flight if self.backend is not None else 0,
            "pymap_reachable": reachable,
            "delivered": self.stats.deliveries["2xx"],
            "deferred": self.stats.deliveries["4xx"],
            "refused": self.stats.deliveries["5xx"]}
        if self.client is not None and not self.client.pool.single:
            values.update(parse(self.client.pool.status()))
        return values

    def log_status(self) -> None:
        log.info(event("status", self.status()))

    def reload(self) -> None:
        """SIGHUP: the config file and the token again; sessions stay."""
        from .notify import notify

        log.info(event("reloading", signal="SIGHUP"))
        notify("RELOADING=1")
        try:
            self._reload()
        finally:
            notify("READY=1")

    def _reload(self) -> None:
        from pymap_admin.settings import load_settings

        old = self.config
        try:
            new = build(self.ns, find_config_file(self.ns.config, os.environ))
            settings = load_settings(new.connection, config_file=new.admin_config)
            replaced = settings != self.settings
            if replaced:
                client = self._new_client(settings)
        except ConfigurationError as exc:
            log.error(event("reload failed: keeping the old configuration",
                      reason=str(exc)))
            return
        changed = sorted(name for name in new.values if new[name] != old[name])
        ignored = [name for name in changed if name in RESTART_ONLY]
        if ignored:
            log.warning(event("reload: not applied, that takes a restart",
                              options=",".join(ignored)))
        if replaced:
            self._replace_client(client, settings)
        level = getattr(logging, new["log_level"])
        logging.getLogger().setLevel(level)
        reopen_files()
        assert self.server is not None and self.backend is not None
        # Listeners stay as they are; the rest applies to new sessions and calls.
        self.server.reconfigure(dataclasses.replace(
            new.server, tcp=old.server.tcp, unix=old.server.unix,
            use_systemd_sockets=old.server.use_systemd_sockets))
        assert new.server.delivery is not None
        self.backend.reconfigure(new.server.delivery)
        try:
            renewed = self._client.tokens.reload()
        except ConfigurationError as exc:
            log.error(event("reload: token not re-read, keeping the old one",
                      reason=str(exc)))
            renewed = False
        self.config = dataclasses.replace(new, values={
            **new.values, **{name: old[name] for name in ignored}})
        if not replaced:
            self._in_background(self.refresh_addresses())
        log.info(event("reloaded",
            config_file=new.config_file, changed=",".join(changed) or "none",
            token="renewed" if renewed else "unchanged"))

    def _in_background(self, work: Coroutine[object, None, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- a name's addresses as members --------------------------------------------

    async def _follow_addresses(self) -> None:
        """With ``all_addresses``, look the name up again every
        ``resolve_interval`` seconds, as postfix resolves its next hop for
        each delivery: a member added to (or moved in) DNS is used, one
        removed is no longer tried."""
        while True:
            interval = self.config["resolve_interval"]
            # 0 may become a number on SIGHUP: look at it again then.
            await asyncio.sleep(interval or _RESOLVE_RECHECK)
            if interval:
                await self.refresh_addresses()

    async def refresh_addresses(self) -> None:
        """Members again from the name's addresses now; a new client if they
        changed. A name that does not resolve keeps the members it had."""
        settings = self.settings
        if settings is None or not settings.all_addresses:
            return
        try:
            members = await asyncio.to_thread(settings.members, strict=True)
        except OSError as exc:
            if not self._unresolved:
                log.warning(event("pymap name not resolved: keeping its last addresses",
                                  host=settings.host, error=str(exc)))
            self._unresolved = True
            return
        if self._unresolved:
            log.info(event("pymap name resolved again", host=settings.host))
            self._unresolved = False
        if settings is not self.settings:
            return  # a SIGHUP replaced the settings meanwhile
        before = [endpoint.target for endpoint in self._client.pool.endpoints]
        after = [member.target for member in members]
        if after != before:
            log.info(event("pymap addresses changed", host=settings.host,
                           before=" ".join(before), after=" ".join(after)))
            self._replace_client(self._new_client(settings, members), settings)

    def _replace_client(self, client: AdminClient, settings: ConnectionSettings) -> None:
        """New connection settings: calls from now on use ``client`` (probed,
        as at start-up); the old client is closed once the calls under way
        on it are done."""
        assert self.backend is not None and self.settings is not None
        retired = self.backend.replace_client(client)
        # Each call on the old client ends within its deadline (timeout),
        # a failover to a second member within two.
        grace = 2 * self.settings.timeout + 1.0
        self.client, self.settings = client, settings
        if self.metrics is not None:
            self.metrics.collector.pool = client.pool
        self._in_background(self._retire(retired, grace))
        self._in_background(self.probe())
        log.info(event("pymap connection replaced", pymap=settings.target,
                       old_client_closes_in=f"{grace:.0f}s"))

    @staticmethod
    async def _retire(client: AdminClient, grace: float) -> None:
        try:
            await asyncio.sleep(grace)
        finally:
            client.close()


def parse_args(argv: Sequence[str] | None = None) -> DaemonConfig:
    """The effective configuration of a command line (and its config file)."""
    return load(argv)[1]


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["install-contrib"]:
        from .install import main as install_contrib

        return install_contrib(args[1:], out=out, err=err)
    try:
        ns, config = load(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=err)
        return ExitStatus.USAGE
    except ConfigurationError as exc:
        print(f"{PROG}: {exc}", file=err)
        return ExitStatus.CONFIG
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else ExitStatus.OK
    if ns.print_config:
        out.write(render(config))
        return ExitStatus.OK
    if ns.check_config:
        from pymap_admin.settings import load_settings

        try:
            load_settings(config.connection, config_file=config.admin_config)
        except ConfigurationError as exc:
            print(f"{PROG}: {exc}", file=err)
            return ExitStatus.CONFIG
        where = config.config_file or "no config file"
        print(f"{PROG}: configuration valid ({where})", file=out)
        return ExitStatus.OK
    level = logging.DEBUG if ns.debug else getattr(logging, config["log_level"])
    try:
        configure_logging(level, err, target=config["log_target"], log_file=config["log_file"])
    except OSError as exc:
        print(f"{PROG}: cannot log to {exc.filename or config['log_target']}: "
              f"{exc.strerror or exc}", file=err)
        return ExitStatus.CONFIG
    try:
        return asyncio.run(Daemon(ns, config).run())
    except ConfigurationError as exc:
        print(f"{PROG}: {exc}", file=err)
        return ExitStatus.CONFIG
    except OSError as exc:
        # Typically a listener that cannot be bound; the message names it.
        if ns.debug:
            raise
        detail = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        print(f"{PROG}: {detail}", file=err)
        return ExitStatus.OSERR


if __name__ == "__main__":
    sys.exit(main())
