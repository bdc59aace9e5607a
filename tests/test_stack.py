"""The README's first command: the local stack delivers, shows, serves, stops."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from .conftest import require_cluster, require_pymap


def test_local_stack_delivers_and_stops_on_ctrl_c() -> None:
    require_pymap()
    process = subprocess.Popen([sys.executable, "-m", "devstack.stack",
                                "--log-level", "WARNING"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "LMTP reply: 250 2.0.0 Message delivered" in output
    # The message as read back over IMAP, with the agent's trace headers.
    assert "Return-Path: <stack@example.com>\nDelivered-To: demouser\nReceived: from" in output
    assert "Subject: Hello from pymap-deliver" in output
    assert "mailbox_transport = lmtp:inet:127.0.0.1:" in output
    assert output.rstrip().endswith("stopped.")


def test_cluster_stack_reads_back_through_another_member() -> None:
    require_cluster()
    process = subprocess.run([sys.executable, "-m", "devstack.stack", "--cluster", "2", "--once",
                              "--log-level", "WARNING"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=120, check=False)
    output = process.stdout
    assert process.returncode == 0, output
    assert "LMTP reply: 250 2.0.0 Message delivered" in output
    match = re.search(r"stored through member (\d); read back over IMAP through member (\d)",
                      output)
    assert match is not None and match.group(1) != match.group(2), output
    assert "Subject: Hello from pymap-deliver" in output
    assert output.rstrip().endswith("stopped.")
