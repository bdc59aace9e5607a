"""Skip a test whose real peer (a tool, a server) is missing, except under CI,
where a missing peer means the environment is wrong and the test must fail."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, reason: str) -> None:
    """Skip when a real peer is missing; under CI, fail instead."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a skip would hide a missing test)")
    pytest.skip(reason)


def require_tool(name: str, *extra_paths: str) -> str:
    """The path of executable ``name``; skip (or fail under CI) if absent."""
    path = shutil.which(name)
    for candidate in extra_paths:
        if path is None and os.access(candidate, os.X_OK):
            path = candidate
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path
