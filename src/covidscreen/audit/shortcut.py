"""Shortcut probe: can a simple model tell *where an image comes from* instead of what it shows?

A cross-validated logistic regression (patient-grouped folds) predicts a nuisance attribute:

- ``site``: the source collection;
- ``low_resolution``: whether the original file's long side was at most 256 px (from metadata ``width``/``height``);
- ``pediatric``: age under 18 (metadata ``age``) or an image of a site declared pediatric by the user.

Inputs are either cheap image features (a 16x16 thumbnail, the intensity histogram and the sharpness of the cached
image), or the trained model's pooled features (the input of its classification head). If the site is predictable
from the pixels, a classifier *can* use it; if it is predictable from the model's own features, the model *does*
encode it. Either is only harmful when site and label are aligned, which :mod:`.confounding` measures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..runtime import to_input
from .confounding import is_aligned
from .imagestats import ImageStats, pooled
from .registry import Audit, AuditContext, Cell, Finding, Section, Table, register

MAX_SAMPLES = 3000  # the probe uses at most this many images (stratified by target): seconds, not minutes


def pixel_features(stats: ImageStats) -> np.ndarray:
    """16x16 thumbnail + 32-bin histogram + sharpness: what a shallow model can see without learning filters."""
    thumb = pooled(stats.thumbs, (16, 16)).reshape(len(stats.thumbs), -1)
    return np.hstack([thumb, stats.hist, stats.edge]).astype(np.float64)


def low_resolution_target(table: pd.DataFrame, max_side: int = 256) -> pd.Series | None:
    """``"<=256 px"`` / ``">256 px"`` from the original width and height columns (None when they are absent)."""
    if not {"width", "height"} <= set(table.columns):
        return None
    w = pd.to_numeric(table["width"], errors="coerce")
    h = pd.to_numeric(table["height"], errors="coerce")
    side = np.fmax(w, h)
    return pd.Series(np.where(side.isna(), None, np.where(side <= max_side, f"<={max_side} px", f">{max_side} px")),
                     index=table.index, dtype=object)


def pediatric_target(table: pd.DataFrame, pediatric_sites: tuple[str, ...] = ()) -> pd.Series | None:
    """``"pediatric"`` / ``"adult"`` from ``age`` (years) and sites declared pediatric; None where unknown."""
    out = pd.Series([None] * len(table), index=table.index, dtype=object)
    if "age" in table.columns:
        age = pd.to_numeric(table["age"], errors="coerce")
        out[age.notna()] = np.where(age[age.notna()] < 18, "pediatric", "adult")
    if pediatric_sites:
        out[table["site"].isin(pediatric_sites)] = "pediatric"
    return out if out.notna().any() else None


def _subsample(target: pd.Series, max_samples: int, seed: int) -> np.ndarray:
    """Positions of at most ``max_samples`` labelled rows, as class-balanced as the data allow."""
    known = np.flatnonzero(target.notna().to_numpy())
    if len(known) <= max_samples:
        return known
    rng = np.random.default_rng(seed)
    labels = target.to_numpy()[known]
    classes = np.unique(labels)
    per = max_samples // len(classes)
    picked = [rng.permutation(known[labels == c])[:per] for c in classes]
    return np.sort(np.concatenate(picked))


def probe(features: np.ndarray, target: pd.Series, groups: np.ndarray | None = None, n_splits: int = 5,
          seed: int = 0, max_samples: int = MAX_SAMPLES, c: float = 0.1) -> dict[str, Any]:
    """Cross-validated logistic regression from ``features`` to ``target`` (None entries are skipped).

    Returns:
        ``balanced_accuracy`` (out-of-fold), ``chance`` (1 / number of classes), ``roc_auc`` (one-vs-rest macro),
        ``n``, ``classes``, ``n_splits`` and ``grouped``; or ``{"skipped": reason}``.
    """
    target = pd.Series(target).reset_index(drop=True)
    idx = _subsample(target, max_samples, seed)
    y = target.to_numpy()[idx].astype(str)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return {"skipped": f"only one value ({classes[0] if len(classes) else 'none'}) among labelled images"}
    g = None if groups is None else np.asarray(groups)[idx]
    n_groups_min = min(len(np.unique(g[y == cl])) if g is not None else int(n)
                       for cl, n in zip(classes, counts, strict=True))
    k = min(n_splits, n_groups_min)
    if k < 2:
        return {"skipped": "a value has fewer than 2 patients: cannot cross-validate"}
    cv = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if g is not None
          else StratifiedKFold(k, shuffle=True, random_state=seed))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    # one BLAS thread: on a shared 2-core machine, oversubscribed threads made this 20x slower
    with threadpool_limits(1):
        prob = cross_val_predict(model, np.asarray(features)[idx], y, groups=g, cv=cv, method="predict_proba")
    pred = classes[prob.argmax(1)]
    if len(classes) == 2:
        auc = float(roc_auc_score(y == classes[1], prob[:, 1]))
    else:
        auc = float(roc_auc_score(y, prob, multi_class="ovr", labels=classes))
    recall = {str(cl): float(np.mean(pred[y == cl] == cl)) for cl in classes}
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "chance": 1.0 / len(classes),
            "roc_auc": auc, "n": int(len(idx)),
            "classes": {str(cl): int(n) for cl, n in zip(classes, counts, strict=True)},
            "recall_per_class": recall, "n_splits": int(k), "grouped": g is not None}


def site_probe(features: np.ndarray, sites: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
               folds: int = 5, min_per_site: int = 5, seed: int = 0) -> dict:
    """How well a linear model predicts the site from features *within each label* (cross-validated).

    Within one label the site is not explained by the disease, so a probe that beats chance there shows the
    features still carry the source. Folds are grouped by patient when ``groups`` is given.

    Returns:
        ``{"per_label": {label: {"balanced_accuracy", "chance", "n", "sites"}}, "mean_balanced_accuracy",
        "mean_chance"}``; labels with fewer than two sites of ``min_per_site`` images are skipped.
    """
    sites, labels = np.asarray(sites).astype(str), np.asarray(labels).astype(str)
    groups = np.arange(len(sites)) if groups is None else np.asarray(groups)
    out: dict = {"per_label": {}}
    for label in np.unique(labels):
        m = labels == label
        counts = {s: int((sites[m] == s).sum()) for s in np.unique(sites[m])}
        keep_sites = [s for s, n in counts.items() if n >= min_per_site]
        if len(keep_sites) < 2:
            continue
        m &= np.isin(sites, keep_sites)
        x, y, g = features[m], sites[m], groups[m]
        k = min(folds, min(int((y == s).sum()) for s in keep_sites))
        pred = np.empty(len(y), dtype=object)
        for train, test in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, g):
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced"))
            clf.fit(x[train], y[train])
            pred[test] = clf.predict(x[test])
        out["per_label"][str(label)] = {"balanced_accuracy": float(balanced_accuracy_score(y, pred.astype(str))),
                                        "chance": 1.0 / len(keep_sites), "n": int(m.sum()), "sites": keep_sites}
    vals = list(out["per_label"].values())
    out["mean_balanced_accuracy"] = float(np.mean([v["balanced_accuracy"] for v in vals])) if vals else math.nan
    out["mean_chance"] = float(np.mean([v["chance"] for v in vals])) if vals else math.nan
    return out


def site_within_label(features: np.ndarray, table: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """:func:`site_probe` of ``table``'s rows (``site``, ``label``, ``group``), summarised like :func:`probe`.

    The plain site probe is inflated whenever site and label are aligned: features that encode the disease then
    also predict the site. Within one label that cannot happen, so this is the figure that shows whether the
    features (or the pixels) carry the source itself.

    Returns:
        ``balanced_accuracy`` and ``chance`` (means over the labels that hold two or more sites), ``n``, and
        ``per_label``; or ``{"skipped": reason}``.
    """
    if "label" not in table:
        return {"skipped": "the table has no labels"}
    sites = table["site"].astype(str)
    combo = (table["label"].astype(str) + "|" + sites).where(sites != "", None).reset_index(drop=True)
    rows = _subsample(combo, MAX_SAMPLES, seed)  # as balanced over (label, site) as the data allow
    res = site_probe(np.asarray(features)[rows], sites.to_numpy()[rows], table["label"].astype(str).to_numpy()[rows],
                     table["group"].astype(str).to_numpy()[rows], seed=seed)
    if not res["per_label"]:
        return {"skipped": "no label has images of two sites (at least 5 each)"}
    return {"balanced_accuracy": res["mean_balanced_accuracy"], "chance": res["mean_chance"],
            "n": int(sum(v["n"] for v in res["per_label"].values())), "per_label": res["per_label"]}


def is_predictable(result: dict[str, Any]) -> bool:
    """Balanced accuracy at least halfway from chance to perfect."""
    if "balanced_accuracy" not in result:
        return False
    chance = result["chance"]
    return result["balanced_accuracy"] >= chance + 0.5 * (1 - chance)


@torch.inference_mode()
def model_features(model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, device: torch.device | str = "cpu",
                   batch_size: int = 64) -> np.ndarray:
    """Pooled features of a :class:`~covidscreen.models.ScreeningModel`: the input of its classification head.

    A forward hook on the head (``spec.head`` of the registry) captures its input; 4-D inputs (a convolutional head)
    are global-average-pooled.
    """
    head = model.backbone.get_submodule(model.spec.head)
    captured: list[torch.Tensor] = []

    def hook(_module, inputs, _output) -> None:
        x = inputs[0].float()
        captured.append((x.mean((2, 3)) if x.ndim == 4 else x.flatten(1)).cpu())

    handle = head.register_forward_hook(hook)
    try:
        model.eval()
        dev = torch.device(device)
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            model(to_input(torch.from_numpy(np.ascontiguousarray(images[idx])), dev))
    finally:
        handle.remove()
    if not captured:
        return np.zeros((0, 0))
    return torch.cat(captured).numpy().astype(np.float64)


def shortcut_probes(table: pd.DataFrame, stats: ImageStats, pediatric_sites: tuple[str, ...] = (), seed: int = 0,
                    features: np.ndarray | None = None, feature_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Probe results from the pixels and, when ``features`` are given, from the model's features.

    Args:
        table: rows aligned with ``stats``; ``site``, ``group`` and optional ``width``, ``height``, ``age``.
        stats: image summaries.
        pediatric_sites: sites whose images are all pediatric (when the metadata has no age).
        features: model features of the rows ``feature_rows`` of ``table``.
    """
    targets = {"site": table["site"].astype(str).where(table["site"].astype(str) != "", None),
               "low_resolution": low_resolution_target(table),
               "pediatric": pediatric_target(table, pediatric_sites)}
    groups = table["group"].astype(str).to_numpy()
    pix = pixel_features(stats)
    out: dict[str, Any] = {"pixels": {}, "model_features": {}}
    for name, target in targets.items():
        if target is None:
            out["pixels"][name] = {"skipped": "the metadata has no column to derive it from"}
            continue
        out["pixels"][name] = probe(pix, target, groups, seed=seed)
        if features is not None and feature_rows is not None and len(feature_rows):
            sub = target.iloc[feature_rows].reset_index(drop=True)
            out["model_features"][name] = probe(features, sub, groups[feature_rows], seed=seed)
    with threadpool_limits(1):
        out["pixels"]["site_within_label"] = site_within_label(pix, table, seed)
        if features is not None and feature_rows is not None and len(feature_rows):
            out["model_features"]["site_within_label"] = site_within_label(
                features, table.iloc[feature_rows].reset_index(drop=True), seed)
    if features is None:
        out["model_features"] = {"skipped": "no trained model given"}
    out["features"] = {"pixels": "16x16 thumbnail + 32-bin intensity histogram + sharpness of the cached image",
                       "model": "pooled features at the input of the classification head"}
    return out


def describe(name: str, result: dict[str, Any]) -> str:
    """One plain sentence about one probe result."""
    if "skipped" in result:
        return f"{name}: not probed ({result['skipped']})"
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    values = f"{len(result['classes'])} values, " if "classes" in result else ""
    return (f"{name}: predicted with balanced accuracy {pct(result['balanced_accuracy'])} (chance "
            f"{pct(result['chance'])}, {values}n={result['n']})")



def _analyse(ctx: AuditContext) -> dict[str, Any]:
    return shortcut_probes(ctx.table, ctx.stats, tuple(ctx.pediatric_sites), ctx.seed, ctx.features, ctx.feature_rows)


def _findings(results: dict[str, dict[str, Any]]) -> list[Finding]:
    """The shortcut risk (the site is predictable and aligned with the label) and the other predictable targets."""
    shortcut, confounding = results["shortcut"], results.get("confounding", {})
    out: list[Finding] = []
    aligned = is_aligned(confounding)
    site_pix = shortcut.get("pixels", {}).get("site", {})
    model_feats = shortcut.get("model_features") if isinstance(shortcut.get("model_features"), dict) else {}
    site_model, site_model_within = model_feats.get("site", {}), model_feats.get("site_within_label", {})
    predictable = [(src, r) for src, r in (("the images alone", site_pix), ("the model's own features", site_model))
                   if is_predictable(r)]
    if predictable and aligned:
        how = " and ".join(f"{src} (balanced accuracy {100 * r['balanced_accuracy']:.0f}%, chance "
                           f"{100 * r['chance']:.0f}%)" for src, r in predictable)
        single = confounding.get("single_source_classes", {})
        why = "; ".join(f"{100 * v['share']:.0f}% of '{k}' images come from {v['site']}" for k, v in single.items())
        why = why or f"Cramér's V between site and label is {confounding.get('cramers_v', math.nan):.2f}"
        within = [f"{src} {100 * r['balanced_accuracy']:.0f}% (chance {100 * r['chance']:.0f}%)" for src, r in (
            ("from the images", shortcut.get("pixels", {}).get("site_within_label", {})),
            ("from the model's features", site_model_within)) if "balanced_accuracy" in r]
        within_text = (f" Within each label, where the disease cannot explain it, the site is predicted with "
                       f"balanced accuracy {' and '.join(within)}." if within else "")
        out.append({"severity": "high", "text": (
            f"Shortcut risk: a simple model can tell which site an image comes from using {how}, and site is "
            f"aligned with the label ({why}).{within_text} High scores may mean the model recognises where an "
            "image was taken, "
            "not the disease. Treat the metrics below as an upper bound that may not hold at another hospital; "
            "look at the per-site results and at external validation.")})
    elif predictable:
        out.append({"severity": "info", "text": "The site can be predicted from the images (" + "; ".join(
            describe("site", r) for _, r in predictable) + "), but site and label are not strongly aligned."})
    for name in ("low_resolution", "pediatric"):
        r = shortcut.get("pixels", {}).get(name, {})
        if is_predictable(r):
            out.append({"severity": "info", "text": describe(f"{name.replace('_', ' ')} (from the images)", r)})
    return out


def _probe_cell(r: dict[str, Any] | None) -> Cell:
    if not r:
        return Cell("-")
    if "skipped" in r:
        return Cell("", r["skipped"], "small")
    auc = f"AUC {r['roc_auc']:.2f}, " if "roc_auc" in r else ""
    per = "; ".join(f"{lab} {100 * v['balanced_accuracy']:.0f}%" for lab, v in r.get("per_label", {}).items())
    return Cell(f"{100 * r['balanced_accuracy']:.0f}%",
                f"(chance {100 * r['chance']:.0f}%, {auc}n={r['n']}{'; ' + per if per else ''})")


PROBED = {"site": "site", "site_within_label": "site, within each label", "low_resolution": "low resolution",
          "pediatric": "pediatric"}


def _section(sc: dict[str, Any]) -> Section | None:
    if not sc:
        return None
    mf = sc.get("model_features", {})
    rows: list[dict[str, str | Cell]] = [
        {"what is predicted": shown, "from the images": _probe_cell(sc.get("pixels", {}).get(name)),
         "from the model's features": _probe_cell(mf.get(name)) if "skipped" not in mf
         else Cell("", mf["skipped"], "small")} for name, shown in PROBED.items()]
    return Section("Shortcut probe", [
        "Balanced accuracy of a cross-validated logistic regression (folds grouped by patient). 'Within each label' "
        "predicts the site among images of one label only (the mean over labels that hold two or more sites), where "
        "the disease cannot explain it; when site and label are aligned, the plain site probe is inflated by the "
        f"label. Images: {sc.get('features', {}).get('pixels', '')}. Model: {sc.get('features', {}).get('model', '')}.",
        Table(["what is predicted", "from the images", "from the model's features"], rows)])


register(Audit("shortcut", order=1, analyse=_analyse, findings=_findings, section=_section))
