"""One big message through a fresh ``pymap-deliver``: the peak RSS above
its idle baseline, relative to the message size (part of the LMTP load
benchmark, :mod:`benchmarks.lmtp_load`)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    DOMAIN,
    HOSTNAME,
    SENDER,
    Deliver,
    Options,
    make_message,
    proc_status,
    sampling_rss,
)


@dataclass
class Memory:
    target: str
    size: int
    baseline: int
    peak: int
    sampled_peak: int
    seconds: float
    reply: str
    stored: int

    @property
    def ratio(self) -> float:
        return (self.peak - self.baseline) / self.size


def lmtp_send(port: int, to: str, data: bytes, timeout: float = 600) -> str:
    with smtplib.LMTP("127.0.0.1", port, local_hostname=HOSTNAME, timeout=timeout) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        code, text = lmtp.mail(SENDER, [f"SIZE={len(data)}"])
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = lmtp.rcpt(to)
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = lmtp.data(data)
        return f"{code} {text.decode()}"


def bench_big(target: str, socket_path: Path, token: Path, opts: Options, *,
              stored: Callable[[], int], to: str = f"big@{DOMAIN}") -> Memory:
    """A fresh pymap-deliver; a small message to load everything a delivery
    needs; its RSS then is the baseline; then one big message."""
    deliver = Deliver(socket_path, token, log=opts.workdir / f"deliver-big-{target[:4]}.log",
                      extra=["--log-level", opts.log_level])
    try:
        small = make_message(opts.size, to=to, subject="warm-up")
        reply = lmtp_send(deliver.port, to, small)
        if not reply.startswith("250"):
            raise RuntimeError(f"warm-up delivery failed: {reply}")
        time.sleep(0.5)
        baseline = proc_status(deliver.pid, "VmRSS")
        # Resets VmHWM to the current RSS (Linux >= 4.0).
        Path(f"/proc/{deliver.pid}/clear_refs").write_text("5")
        data = make_message(opts.big_size, to=to, subject="big")
        with sampling_rss(deliver.pid) as sampled:
            started = time.perf_counter()
            reply = lmtp_send(deliver.port, to, data)
            seconds = time.perf_counter() - started
        peak = proc_status(deliver.pid, "VmHWM")
    finally:
        deliver.stop()
    memory = Memory(target, len(data), baseline, peak, sampled[0], seconds, reply, stored())
    print(f"  50 MB into {target}: {reply}; peak {memory.ratio:.2f}x above baseline "
          f"in {seconds:.1f}s", flush=True)
    return memory


