"""The operator's join: every postfix ``status=sent`` line names the id that
pymap-deliver put in its 250 reply, and that id finds exactly one
pymap-deliver log line for that recipient (a private postfix, a real pymap)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from devstack.localpymap import DEMO_USER, PymapServer, free_port
from pymap_deliver.logfmt import parse

from .test_postfix_e2e import (  # noqa: F401 (fixtures)
    e2e_pymap,
    lmtp_postfix,
    start_agent,
    swaks,
    workdir,
)

pytestmark = pytest.mark.postfix

SENT = re.compile(r"to=<([^>]+)>.*status=sent \(250 2\.0\.0 Message delivered (\S+)\)")


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_every_postfix_sent_line_joins_one_pymap_deliver_line(
        kind: str, e2e_pymap: PymapServer, workdir: Path) -> None:  # noqa: F811
    port = free_port()
    postfix = lmtp_postfix(kind, port)
    agent = start_agent(e2e_pymap, postfix, workdir, port)
    tag = uuid.uuid4().hex
    try:
        postfix.start()
        assert postfix.check_output() == ""
        swaks(postfix, f"{DEMO_USER}@localhost,alice@localhost,bob@localhost", f"{tag} 1")
        swaks(postfix, f"{DEMO_USER}@localhost", f"{tag} 2")
        swaks(postfix, "alice@localhost,nosuchuser@localhost", f"{tag} 3")
        sent = postfix.wait_for(r"status=sent \(250 2\.0\.0 Message delivered", 5)
        postfix.wait_for(r"to=<nosuchuser@localhost>.*status=bounced", 1)
    finally:
        postfix.cleanup()
        assert agent.stop() == 0
    ours = [parse(line) for line in agent.log.read_text().splitlines()]
    delivered = [entry for entry in ours if entry.get("msg") == "delivered"]
    assert len(delivered) == 5, ours
    joined = set()
    for line in sent:
        match = SENT.search(line)
        assert match is not None, line
        address, queue_id = match.groups()
        hits = [entry for entry in delivered
                if entry["id"] == queue_id and entry["rcpt"] == f"<{address}>"]
        assert len(hits) == 1, (line, delivered)
        assert hits[0]["session"] == queue_id.split(".")[0]
        assert hits[0]["status"] == f"250 2.0.0 Message delivered {queue_id}"
        joined.add((queue_id, address))
    assert len(joined) == 5
    # The refusal is there too, with its session and sender.
    refused = [entry for entry in ours if entry.get("msg") == "rcpt refused"]
    assert any(entry["rcpt"] == "<nosuchuser@localhost>" and entry.get("session")
               and entry.get("from") for entry in refused), refused
