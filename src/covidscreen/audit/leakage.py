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
from .registry import EVAL_SPLITS, Audit, AuditContext, Finding, Section, Table, register

MAX_PHASH_DISTANCE = 10
MIN_CORRELATION = 0.97
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


def _analyse(ctx: AuditContext) -> dict[str, Any]:
    block, pairs = leakage_audit(ctx.table, ctx.stats.thumbs, ctx.sha256)
    ctx.artefacts["audit_pairs.csv"] = pairs
    return block


def _findings(results: dict[str, dict[str, Any]]) -> list[Finding]:
    leakage = results["leakage"]
    out: list[Finding] = []
    n_multi = leakage.get("n_patients_in_several_splits", 0)
    if n_multi:
        out.append({"severity": "high", "text": f"Leakage: {n_multi} patient(s) have images in more than one split; "
                    "test results are optimistic. Split by patient."})
    n_exact = leakage.get("n_exact_duplicate_sets_cross_split", 0)
    near = leakage.get("near_duplicates", {})
    n_cross = near.get("n_cross_split", 0)
    if n_exact or n_cross:
        out.append({"severity": "high", "text": (
            f"Leakage: {n_cross} pair(s) of (near-)identical images sit in different splits"
            f"{f', {n_exact} set(s) of byte-identical files among them' if n_exact else ''}. The model may have "
            "been tested on images it was trained on (pairs listed in audit_pairs.csv).")})
    n_within = near.get("n_within_split_other_patient", 0)
    if n_within:
        out.append({"severity": "medium", "text": (
            f"{n_within} pair(s) of (near-)identical images are filed under different patients within one split: "
            "duplicated sources or wrong patient ids. A future split could leak them.")})
    if near.get("n_label_conflicts"):
        out.append({"severity": "medium", "text": f"{near['n_label_conflicts']} (near-)duplicate pair(s) carry "
                    "different labels: label noise."})
    return out


def _section(leak: dict[str, Any]) -> Section | None:
    if not leak:
        return None
    near = leak.get("near_duplicates", {})
    counts = [
        ("patients with images in more than one split", leak.get("n_patients_in_several_splits", 0)),
        ("sets of byte-identical files", leak.get("n_exact_duplicate_sets", 0)),
        ("... of which span splits", leak.get("n_exact_duplicate_sets_cross_split", 0)),
        ("near-duplicate pairs across splits (leakage)", near.get("n_cross_split", 0)),
        ("near-duplicate pairs within a split, different patients", near.get("n_within_split_other_patient", 0)),
        ("near-duplicate pairs of the same patient (expected)", near.get("n_same_patient", 0)),
        ("near-duplicate pairs with different labels", near.get("n_label_conflicts", 0)),
    ]
    blocks: list[str | Table] = [Table(["check", "count"], [{"check": c, "count": str(n)} for c, n in counts]),
                                 f"Near-duplicates: {near.get('method', '')}."]
    multi = leak.get("patients_in_several_splits", [])
    if multi:
        blocks.append(Table(["patient", "splits", "images"], [
            {"patient": m["patient"], "splits": ", ".join(m["splits"]), "images": str(m["n_images"])}
            for m in multi[:30]], title="Patients in several splits"))
    if near.get("by_site_pair"):
        blocks.append(Table(["sites", "kind", "pairs"], [
            {"sites": r["sites"], "kind": r["kind"], "pairs": str(r["pairs"])} for r in near["by_site_pair"]],
            title="Near-duplicate pairs by site pair", left=2))
    if near.get("n_unused"):
        blocks.append(f"{near['n_unused']} more pair(s) involve images this run did not use (listed in "
                      "audit_pairs.csv).")
    pairs = [p for p in near.get("pairs", []) if p.get("kind") != "unused"]
    if pairs:
        blocks.append(Table(
            ["image a", "image b", "splits", "labels", "kind", "correlation", "pHash bits"],
            [{"image a": p["image_a"], "image b": p["image_b"], "splits": f"{p['split_a']} / {p['split_b']}",
              "labels": f"{p['label_a']} / {p['label_b']}", "kind": p["kind"], "correlation": f"{p['correlation']:.3f}",
              "pHash bits": str(p["phash_distance"])} for p in pairs[:30]],
            title=f"Near-duplicate pairs (first {min(30, len(pairs))}; all in audit_pairs.csv)", left=5))
    return Section("Leakage", blocks)


register(Audit("leakage", order=2, analyse=_analyse, findings=_findings, section=_section))
