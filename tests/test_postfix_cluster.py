"""postfix in front of two pymap-deliver processes in front of a pymap
cluster: what postfix's LMTP client does with more than one destination.

postfix (3.5 and later; Debian's is 3.7) takes a list of LMTP nexthops,
separated by commas or whitespace. Found here: ``inet:`` is written once,
before the list (``lmtp:inet:127.0.0.1:2401, 127.0.0.1:2402``); repeating it
(``..., inet:127.0.0.1:2402``) makes the lmtp(8) process exit with "valid
hostname or network address required" when it reaches that item, and the
mail is deferred. The transport line is contrib/postfix/main.cf.lmtp-tcp's.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.cluster import PymapCluster
from devstack.localpymap import free_port

from ._require import require, require_tool
from .postfix import PostfixInstance, postfix_available, render, stop_deliver
from .test_cluster import PASSWORD, USER, prepare

pytestmark = pytest.mark.postfix


@dataclass
class DeliverProcess:
    """The real pymap-deliver command, in front of every cluster member."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        return stop_deliver(self.process)


def start_deliver(name: str, cluster: PymapCluster, token_file: Path, folder: Path
                  ) -> DeliverProcess:
    port = free_port()
    log = folder / f"{name}.log"
    paths = [arg for member in cluster.members for arg in ("--path", str(member.socket_path))]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pymap-deliver"),
             "--listen", f"127.0.0.1:{port}", "--hostname", name, "--local-part-only",
             *paths, "--token-file", str(token_file), "--timeout", "10", "--allow-root"],
            stdout=out, stderr=out, env={**os.environ})
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{log.read_text()}") from None
            time.sleep(0.05)
    return DeliverProcess(name, port, process, log)


@pytest.fixture
def cluster_postfix(pymap_cluster: PymapCluster, tmp_path: Path
                    ) -> Iterator[tuple[PostfixInstance, list[DeliverProcess]]]:
    require(postfix_available(), "Debian's postfix is not installed (or not running as root)")
    require_tool("swaks")
    import asyncio

    token_file = tmp_path / "delivery.token"
    token_file.touch(mode=0o600)
    token_file.write_text(asyncio.run(prepare(pymap_cluster)))
    agents = [start_deliver(name, pymap_cluster, token_file, tmp_path)
              for name in ("lmtp-a.test", "lmtp-b.test")]
    # "inet:" once, before the whole list (see the module's docstring).
    nexthops = "inet:" + ", ".join(f"127.0.0.1:{agent.port}" for agent in agents)
    main_cf = render("main.cf.lmtp-tcp", {"lmtp:inet:127.0.0.1:24": f"lmtp:{nexthops}"})
    postfix = PostfixInstance(main_cf + "\ndefault_transport = error:no mail leaves the test\n")
    try:
        postfix.start()
        assert postfix.check_output() == ""
        yield postfix, agents
    finally:
        postfix.cleanup()
        for agent in agents:
            agent.stop()
            print(agent.log.read_text())  # shown when the test failed


def send(postfix: PostfixInstance, tag: str) -> None:
    done = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(postfix.smtp_port),
         "--from", "sender@mx.pymap.test", "--to", f"{USER}@localhost",
         "--header", f"Subject: {tag}", "--body", f"body of {tag}\n",
         "--helo", "client.pymap.test"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def delivered_by(cluster: PymapCluster, tags: list[str]) -> dict[str, list[str]]:
    """For each tag, the pymap-deliver instance(s) named in its Received
    header, read back through member 1."""
    found: dict[str, list[str]] = {tag: [] for tag in tags}
    for message in cluster.members[1].fetch_all(user=USER, password=PASSWORD):
        for tag in tags:
            if f"Subject: {tag}".encode() in message:
                match = re.search(rb"by (lmtp-[ab]\.test) \(pymap-deliver\)", message)
                found[tag].append(match.group(1).decode() if match else "?")
    return found


def test_postfix_fails_over_between_lmtp_nexthops_in_order(
        cluster_postfix: tuple[PostfixInstance, list[DeliverProcess]],
        pymap_cluster: PymapCluster) -> None:
    postfix, (first, second) = cluster_postfix
    both_up = [f"both-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for tag in both_up:
        send(postfix, tag)
    postfix.wait_for(r"status=sent .*250 2\.0\.0 Message delivered", count=len(both_up))
    # The list is tried in its order: with both up, the first takes all.
    assert delivered_by(pymap_cluster, both_up) == {t: [first.name] for t in both_up}

    assert first.stop() == 0
    one_down = [f"down-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for tag in one_down:
        send(postfix, tag)
    postfix.wait_for(r"status=sent .*250 2\.0\.0 Message delivered",
                     count=len(both_up) + len(one_down))
    # The next nexthop takes over within the same delivery attempt: no deferral.
    assert delivered_by(pymap_cluster, one_down) == {t: [second.name] for t in one_down}
    log = postfix.log()
    assert f"connect to 127.0.0.1[127.0.0.1]:{first.port}: Connection refused" in log
    assert "status=deferred" not in log
