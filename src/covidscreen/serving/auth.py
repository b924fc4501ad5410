"""Optional API-key authentication: keys from a file, one per line; compared in constant time; never logged."""

from __future__ import annotations

import hmac
from pathlib import Path

from ..errors import ConfigError

MIN_KEY_LENGTH = 16


def read_api_keys(path: str | Path) -> list[str]:
    """Keys of an API-key file (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: the file is missing, holds no key, or a key shorter than 16 characters (guessable).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"API-key file {path} cannot be read ({exc.strerror}); write one key per line") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise ConfigError(f"API-key file {path} holds no key; write one key (16+ characters) per line")
    short = [i for i, k in enumerate(keys, 1) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ConfigError(f"API-key file {path}: key {short[0]} is shorter than {MIN_KEY_LENGTH} characters; use "
                          "random keys, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return keys


def presented_key(headers: dict[str, str] | object) -> str | None:
    """The key a request presents: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
    get = headers.get  # type: ignore[attr-defined]
    key = get("x-api-key")
    if key:
        return key.strip()
    auth = get("authorization") or ""
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def key_is_valid(presented: str | None, keys: list[str]) -> bool:
    if not presented:
        return False
    # compare with every key (no early exit), so timing says nothing about which key nearly matched
    matches = [hmac.compare_digest(presented.encode(), k.encode()) for k in keys]
    return any(matches)
