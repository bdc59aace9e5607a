"""Logging set-up shared by the ``pymap-admin`` and ``pymap-deliver`` commands."""

from __future__ import annotations

import logging
from typing import TextIO

__all__ = ["configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int, stream: TextIO) -> None:
    """Log to ``stream`` from ``level`` up, never a token.

    hpack logs every header it encodes at DEBUG, values included: that is
    our ``auth-token``. It and h2 stay at INFO whatever the level asked for.
    """
    logging.basicConfig(level=level, stream=stream, format=FORMAT)
    for name in ("hpack", "h2"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))
