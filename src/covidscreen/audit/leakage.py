"""Leakage audit: patients in more than one split, exact duplicate files, and near-duplicate images.

Near-duplicates are found by the detector the default split uses (:mod:`covidscreen.data.duplicates`: pHash
distance at most ``MAX_PHASH_DISTANCE`` bits by multi-index hashing, confirmed by a thumbnail correlation of at least
``MIN_CORRELATION``; both thresholds are recorded in ``audit.json``). A default split keeps every such pair in one
split, so its audit finds none across splits; a split given by the user (``split_file``) or made by another tool may
not, and this audit is where that shows.

A pair is *leakage* when its two images sit in different evaluation splits (train, val, test, external): the model
may have seen the test image in training. Pairs inside one split but under different patient ids inflate the
effective sample size and hint at wrong patient ids; pairs within one patient are expected (follow-up films).
Patients are the table's ``patient`` column where it has one (a run's ``split.csv``: its ``group`` is then the
split group, patients linked by near-duplicates), else ``group``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..data.duplicates import (
    MAX_PHASH_DISTANCE,
    MIN_CORRELATION,
    dhash_from_pooled,
    near_duplicate_pairs,
    pair_correlation,  # noqa: F401  (re-exported)
    pooled,
    popcount,
)
from .hashing import file_sha256
from .registry import EVAL_SPLITS, Audit, AuditContext, Finding, Section, Table, register

MAX_LISTED = 200  # pairs listed in audit.json; all of them go to audit_pairs.csv


def patient_key(table: pd.DataFrame) -> pd.Series:
    """The patient of each row: ``patient`` where the table has that column (non-empty), else ``group``."""
    if "patient" in table:
        patient = table["patient"].astype(str)
        return patient.where(patient != "", table["group"].astype(str))
    return table["group"].astype(str)


def patients_in_several_splits(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Patients whose images sit in more than one evaluation split."""
    t = table.assign(_patient=patient_key(table))
    t = t[t["split"].isin(EVAL_SPLITS)]
    out = []
    for group, g in t.groupby("_patient", sort=True):
        splits = sorted(g["split"].unique())
        if len(splits) > 1:
            out.append({"patient": str(group), "splits": splits, "n_images": int(len(g)),
                        "images": g["image"].astype(str).tolist()[:10]})
    return out


def exact_duplicates(table: pd.DataFrame, sha256: list[str] | None = None) -> list[dict[str, Any]]:
    """Sets of files with identical bytes (sha256), with their splits and patients."""
    sha = sha256 if sha256 is not None else file_sha256(table["path"].tolist())
    t = table.assign(_sha=sha, _patient=patient_key(table))
    out = []
    for digest, g in t.groupby("_sha", sort=True):
        if len(g) > 1:
            splits = sorted(set(g["split"]) & set(EVAL_SPLITS))
            out.append({"sha256": digest, "images": g["image"].astype(str).tolist(), "splits": g["split"].tolist(),
                        "patients": g["_patient"].tolist(), "labels": g["label"].tolist(),
                        "cross_split": len(splits) > 1, "cross_patient": g["_patient"].nunique() > 1})
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
        table: rows aligned with ``thumbs``; columns ``image``, ``split``, ``group``, ``label``, ``site`` (and
            ``patient``, when ``group`` is not the patient).
        thumbs: ``(N, 64, 64)`` thumbnails (:func:`~covidscreen.audit.imagestats.image_stats`).
        sha256: file digests, to mark byte-identical pairs.
    """
    found = near_duplicate_pairs(thumbs, max_phash, min_correlation)
    i, j, dist, corr = found.i, found.j, found.phash_distance, found.correlation
    dh = dhash_from_pooled(pooled(thumbs, (8, 9)))
    cols = ["image", "split", "group", "label", "site"]
    t = table.assign(patient=patient_key(table))
    a = t.iloc[i][[*cols, "patient"]].reset_index(drop=True).add_suffix("_a")
    b = t.iloc[j][[*cols, "patient"]].reset_index(drop=True).add_suffix("_b")
    pairs = pd.concat([a, b], axis=1)
    pairs["phash_distance"] = dist
    pairs["dhash_distance"] = popcount(dh[i] ^ dh[j]).astype(int) if len(i) else np.zeros(0, int)
    pairs["correlation"] = np.round(corr, 4)
    pairs["identical_file"] = ([sha256[x] == sha256[y] for x, y in zip(i, j, strict=True)] if sha256 is not None
                               else False)
    same = (pairs["patient_a"] == pairs["patient_b"]).to_numpy()
    pairs["kind"] = [pair_kind(sa, sb, s) for sa, sb, s in zip(pairs["split_a"], pairs["split_b"], same, strict=True)]
    pairs["label_conflict"] = pairs["label_a"] != pairs["label_b"]
    pairs["same_group"] = (pairs["group_a"] == pairs["group_b"]).to_numpy()  # the split keeps them together
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
            "n_within_split_other_patient_grouped": int(((pairs["kind"] == "within split, different patients")
                                                         & pairs["same_group"]).sum()) if len(pairs) else 0,
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
    n_grouped = near.get("n_within_split_other_patient_grouped", 0)
    if n_within and n_grouped == n_within:
        out.append({"severity": "info", "text": (
            f"{n_within} pair(s) of (near-)identical images are filed under different patients: duplicated sources "
            "or wrong patient ids. The split joined their patients into one group, so they sit in one split and do "
            "not leak; each copy still counts as an image of its own in the figures.")})
    elif n_within:
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
