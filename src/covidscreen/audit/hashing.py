"""Image fingerprints for duplicate search: file sha256 (exact copies) here; perceptual hashes and the pair search
live in :mod:`covidscreen.data.duplicates` (the split uses them too) and are re-exported from here."""

from __future__ import annotations

from collections.abc import Sequence

from ..data.duplicates import (  # noqa: F401  (re-exported for the audit's users)
    close_pairs,
    dct_matrix,
    dhash_from_pooled,
    hamming_pairs,
    perceptual_hashes,
    phash_from_pooled,
    popcount,
)
from ..runtime import sha256_file


def file_sha256(paths: Sequence[str]) -> list[str]:
    """sha256 of each file's bytes."""
    return [sha256_file(p) for p in paths]


def try_file_sha256(paths: Sequence[str]) -> tuple[list[str | None], dict[str, str]]:
    """sha256 of each file's bytes (None where the file cannot be read), and ``{path: why}`` for those."""
    digests: list[str | None] = []
    errors: dict[str, str] = {}
    for p in paths:
        try:
            digests.append(sha256_file(p))
        except OSError as exc:
            digests.append(None)
            errors[p] = f"{p}: could not be read for the audit ({exc.strerror or exc})"
    return digests, errors
