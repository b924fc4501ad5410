"""The one rule for tests of real servers (PostgreSQL, Orthanc, Chromium) whose binaries may be missing: a developer
machine without them skips, saying what to install; CI fails instead, because it installs every one of them
(``scripts/apt.d``) and a skipped server test there would hide a broken setup."""

from __future__ import annotations

import os

import pytest


def require_binaries(present: bool, message: str) -> None:
    """Skip (or, with the ``CI`` environment variable set, fail) with ``message`` unless ``present``."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI installs it (scripts/system-packages.sh), so this test must run here")
    pytest.skip(message)
