"""A missing server binary skips a developer's run but fails CI's."""

from __future__ import annotations

import pytest

from tests.binaries import require_binaries


def test_missing_binary_skips_locally_and_fails_under_ci(monkeypatch):
    require_binaries(True, "never raised")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install it"):
        require_binaries(False, "thing not found: install it")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install it; CI installs it"):
        require_binaries(False, "thing not found: install it")
