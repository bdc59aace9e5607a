"""Skip a test whose external tool is missing, except under CI, where a
missing tool means the environment is wrong and the test must fail."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, *extra_paths: str) -> str:
    """The path of executable ``name``; skip (or fail when ``CI=true``) if absent."""
    path = shutil.which(name)
    for candidate in extra_paths:
        if path is None and os.access(candidate, os.X_OK):
            path = candidate
    if path is not None:
        return path
    reason = f"{name} is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a skip would hide a missing test)")
    pytest.skip(reason)
