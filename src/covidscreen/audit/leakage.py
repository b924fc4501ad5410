"""Leakage audit: patients in more than one split, exact duplicate files, and near-duplicate images.

Near-duplicates are found in two stages. Candidates are pairs whose pHash differs in at most ``MAX_PHASH_DISTANCE``
bits; a candidate is confirmed when the Pearson correlation of the two standardised 64x64 thumbnails is at least
``MIN_CORRELATION``. Chest X-rays of different people look alike at hash resolution (on the shared data about 500
pairs of *different* images are within 4 bits, 70,000 within 10), while resized and re-encoded copies keep a thumbnail
correlation above 0.99; different images rarely exceed 0.95. The thresholds were set by inspecting pairs of the shared
data by eye; both are recorded in ``audit.json``.

A pair is *leakage* when its two images sit in different evaluation splits (train, val, test, external): the model
may have seen the test image in training. Pairs inside one split but under different patient ids inflate the
effective sample size and hint at wrong patient ids; pairs within one patient are expected (follow-up films).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .hashing import close_pairs, dhash_from_pooled, file_sha256, phash_from_pooled, popcount
from .imagestats import pooled

MAX_PHASH_DISTANCE = 10
MIN_CORRELATION = 0.97
EVAL_SPLITS = ("train", "val", "test", "external")
MAX_LISTED = 200  # pairs listed in audit.json; all of them go to audit_pairs.csv


def patients_in_several_splits(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Patients (``group``) whose images sit in more than one evaluation split."""
    t = table[table["split"].isin(EVAL_SPLITS)]
    out = []
    for group, g in t.groupby("group", sort=True):
        splits = sorted(g["split"].unique())
        if len(splits) > 1:
            out.append({"patient": str(group), "splits": splits, "n_images": int(len(g)),
                        "images": g["image"].astype(str).tolist()[:10]})
    return out


def exact_duplicates(table: pd.DataFrame, sha256: list[str] | None = None) -> list[dict[str, Any]]:
    """Sets of files with identical bytes (sha256), with their splits and patients."""
    sha = sha256 if sha256 is not None else file_sha256(table["path"].tolist())
    t = table.assign(_sha=sha)
    out = []
    for digest, g in t.groupby("_sha", sort=True):
        if len(g) > 1:
            splits = sorted(set(g["split"]) & set(EVAL_SPLITS))
            out.append({"sha256": digest, "images": g["image"].astype(str).tolist(), "splits": g["split"].tolist(),
                        "patients": g["group"].astype(str).tolist(), "labels": g["label"].tolist(),
                        "cross_split": len(splits) > 1, "cross_patient": g["group"].nunique() > 1})
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    return x / (np.sqrt((x ** 2).mean(1, keepdims=True)) + 1e-6)


def pair_correlation(z: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Pearson correlation of standardised rows ``z[i]`` and ``z[j]``, in chunks (70,000 candidate pairs of 4,096
    values would otherwise need gigabytes)."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", z[i[s:s + chunk]], z[j[s:s + chunk]]) / z.shape[1]
    return out


def pair_kind(split_a: str, split_b: str, same_patient: bool) -> str:
    """``cross-split`` (leakage), ``same patient``, ``within split, different patients``, or ``unused``."""
    if split_a not in EVAL_SPLITS or split_b not in EVAL_SPLITS:
        return "unused"
    if split_a != split_b:
        return "cross-split"
    return "same patient" if same_patient else "within split, different patients"


def near_duplicates(table: pd.DataFrame, thumbs: np.ndarray, sha256: list[str] | None = None,
                    max_phash: int = MAX_PHASH_DISTANCE, min_correlation: float = MIN_CORRELATION) -> pd.DataFrame:
    """Confirmed near-duplicate pairs (one row per pair, cross-split pairs first).

    Args:
        table: rows aligned with ``thumbs``; columns ``image``, ``split``, ``group``, ``label``, ``site``.
        thumbs: ``(N, 64, 64)`` thumbnails (:func:`~covidscreen.audit.imagestats.image_stats`).
        sha256: file digests, to mark byte-identical pairs.
    """
    ph = phash_from_pooled(pooled(thumbs, (32, 32)))
    dh = dhash_from_pooled(pooled(thumbs, (8, 9)))
    i, j, dist = close_pairs(ph, max_phash)
    z = _standardise(thumbs)
    corr = pair_correlation(z, i, j)
    keep = corr >= min_correlation
    i, j, dist, corr = i[keep], j[keep], dist[keep], corr[keep]
    cols = ["image", "split", "group", "label", "site"]
    a = table.iloc[i][cols].reset_index(drop=True).add_suffix("_a")
    b = table.iloc[j][cols].reset_index(drop=True).add_suffix("_b")
    pairs = pd.concat([a, b], axis=1)
    pairs["phash_distance"] = dist
    pairs["dhash_distance"] = popcount(dh[i] ^ dh[j]).astype(int) if len(i) else np.zeros(0, int)
    pairs["correlation"] = np.round(corr, 4)
    pairs["identical_file"] = ([sha256[x] == sha256[y] for x, y in zip(i, j, strict=True)] if sha256 is not None
                               else False)
    same = (pairs["group_a"] == pairs["group_b"]).to_numpy()
    pairs["kind"] = [pair_kind(sa, sb, s) for sa, sb, s in zip(pairs["split_a"], pairs["split_b"], same, strict=True)]
    pairs["label_conflict"] = pairs["label_a"] != pairs["label_b"]
    order = {"cross-split": 0, "within split, different patients": 1, "same patient": 2, "unused": 3}
    return (pairs.assign(_o=pairs["kind"].map(order)).sort_values(["_o", "correlation"], ascending=[True, False])
            .drop(columns="_o").reset_index(drop=True))


def leakage_audit(table: pd.DataFrame, thumbs: np.ndarray,
                  sha256: list[str] | None = None) -> tuple[dict, pd.DataFrame]:
    """The ``leakage`` block of ``audit.json`` and the full table of near-duplicate pairs."""
    sha = sha256 if sha256 is not None else file_sha256(table["path"].tolist())
    multi = patients_in_several_splits(table)
    exact = exact_duplicates(table, sha)
    pairs = near_duplicates(table, thumbs, sha)
    kinds = pairs["kind"].value_counts().to_dict() if len(pairs) else {}
    site_pair = [" / ".join(sorted((a, b))) for a, b in zip(pairs["site_a"], pairs["site_b"], strict=True)]
    by_sites = (pairs.assign(sites=site_pair)
                .groupby(["sites", "kind"]).size().reset_index(name="pairs").to_dict("records")) if len(pairs) else []
    block = {
        "patients_in_several_splits": multi[:MAX_LISTED],
        "n_patients_in_several_splits": len(multi),
        "exact_duplicates": exact[:MAX_LISTED],
        "n_exact_duplicate_sets": len(exact),
        "n_exact_duplicate_sets_cross_split": int(sum(e["cross_split"] for e in exact)),
        "near_duplicates": {
            "method": f"pHash distance <= {MAX_PHASH_DISTANCE} bits, confirmed by thumbnail correlation >= "
                      f"{MIN_CORRELATION}",
            "max_phash_distance": MAX_PHASH_DISTANCE, "min_correlation": MIN_CORRELATION,
            "n_pairs": int(len(pairs)),
            "n_cross_split": int(kinds.get("cross-split", 0)),
            "n_within_split_other_patient": int(kinds.get("within split, different patients", 0)),
            "n_same_patient": int(kinds.get("same patient", 0)),
            "n_unused": int(kinds.get("unused", 0)),
            "n_label_conflicts": int(pairs["label_conflict"].sum()) if len(pairs) else 0,
            "by_site_pair": by_sites,
            "pairs": pairs.head(MAX_LISTED).to_dict("records"),
        },
    }
    return block, pairs
