"""Run every audit on a table of images and write ``audit.json`` (+ ``audit_pairs.csv``, ``audit.html``).

Two entry points:

- :func:`audit_table`: the core, on an already split table and its cached images (training calls it at the end of a
  run, with the trained model for the feature probe);
- :func:`audit_data_dir`: ``covidscreen audit DATA_DIR [RUN_DIR]``. With a run folder whose data is ``DATA_DIR`` the
  run's own split is audited; with a run trained on other data, ``DATA_DIR`` is treated as external data and checked
  for overlap with the run's images; without a run, the default patient-grouped split is audited.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..audit.confounding import confounding_audit, is_aligned
from ..audit.hashing import file_sha256
from ..audit.imagestats import image_stats
from ..audit.leakage import EVAL_SPLITS, leakage_audit
from ..audit.shortcut import describe, is_predictable, model_features, shortcut_probes
from ..data.cache import ImageCache
from ..data.locate import resolve_data_dir
from ..data.splits import patient_grouped_split
from ..data.table import load_table
from ..errors import CheckpointError, DataError
from ..inference.predictor import Predictor
from ..inference.run import load_run
from ..reporting.audit_page import write_audit_html
from ..reporting.model_card import write_model_card
from ..reporting.report import write_report
from ..runtime import resolve_device

AUDIT_FILE = "audit.json"
PAIRS_FILE = "audit_pairs.csv"
MAX_FEATURE_IMAGES = 1000  # images passed through the model for the feature probe


def _feature_rows(table: pd.DataFrame, seed: int) -> np.ndarray:
    """Rows for the model-feature probe: images the model was not trained on (val/test/external), at most
    ``MAX_FEATURE_IMAGES``, spread over sites."""
    held = np.flatnonzero(table["split"].isin(["val", "test", "external"]).to_numpy())
    if len(held) == 0:
        held = np.arange(len(table))
    if len(held) <= MAX_FEATURE_IMAGES:
        return held
    rng = np.random.default_rng(seed)
    sites = table["site"].to_numpy()[held]
    per = MAX_FEATURE_IMAGES // len(np.unique(sites))
    picked = np.concatenate([rng.permutation(held[sites == s])[:per] for s in np.unique(sites)])
    rest = rng.permutation(np.setdiff1d(held, picked))[:MAX_FEATURE_IMAGES - len(picked)]
    return np.sort(np.concatenate([picked, rest]))


def findings(confounding: dict, leakage: dict, shortcut: dict) -> list[dict[str, str]]:
    """Plain-words findings, most serious first (``severity``: high, medium or info)."""
    out: list[dict[str, str]] = []
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
    out += [{"severity": "medium", "text": w} for w in confounding.get("warnings", [])]
    for name in ("low_resolution", "pediatric"):
        r = shortcut.get("pixels", {}).get(name, {})
        if is_predictable(r):
            out.append({"severity": "info", "text": describe(f"{name.replace('_', ' ')} (from the images)", r)})
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def audit_table(table: pd.DataFrame, images: np.ndarray, rows: np.ndarray | None = None,
                out_dir: str | Path | None = None, model: Any = None, device: Any = "cpu",
                pediatric_sites: tuple[str, ...] = (), seed: int = 0, split_source: str = "",
                data_dir: str | None = None, run_dir: str | None = None) -> dict[str, Any]:
    """Leakage, shortcut and confounding audits of ``table`` (with ``split``, ``group``, ``path`` columns).

    Args:
        table: one row per image.
        images: cached ``uint8`` images; ``images[rows[i]]`` is row ``i`` of ``table``.
        out_dir: where to write ``audit.json`` and ``audit_pairs.csv`` (None: write nothing).
        model: a trained :class:`~covidscreen.models.ScreeningModel` for the feature probe (optional).
        pediatric_sites: sites known to be pediatric (for the pediatric-vs-adult probe).
        split_source: where the splits come from, for the reader.
    """
    t0 = time.time()
    table = table.reset_index(drop=True)
    for col in ("split", "group", "path", "image", "label", "site"):
        if col not in table.columns:
            raise DataError(f"audit: the table lacks column '{col}'")
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    stats = image_stats(images, rows)
    sha = file_sha256(table["path"].tolist())
    leakage, pairs = leakage_audit(table, stats.thumbs, sha)
    confounding = confounding_audit(table[table["split"].isin(EVAL_SPLITS)])
    feats, frows = None, None
    if model is not None:
        frows = _feature_rows(table, seed)
        feats = model_features(model, images, rows[frows], device)
    shortcut = shortcut_probes(table, stats, tuple(pediatric_sites), seed, feats, frows)
    audit = {
        "data_dir": data_dir, "run_dir": run_dir, "n_images": int(len(table)),
        "split_source": split_source,
        "split_counts": {str(k): int(v) for k, v in table["split"].value_counts().items()},
        "findings": findings(confounding, leakage, shortcut),
        "confounding": confounding, "leakage": leakage, "shortcut": shortcut,
        "seconds": round(time.time() - t0, 1),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / AUDIT_FILE).write_text(json.dumps(audit, indent=2, default=_jsonable))
        pairs.to_csv(out / PAIRS_FILE, index=False)
    return audit


def _audit_split(table: pd.DataFrame, data_dir: Path, run_dir: Path | None, seed: int) -> tuple[pd.DataFrame, str]:
    """Attach a ``split`` column (and the run's images when the data are external to the run)."""
    if run_dir is None:
        table["split"] = patient_grouped_split(table, seed=seed).to_numpy()
        return table, f"the default patient-grouped split (seed {seed}) that covidscreen train would make"
    run = load_run(run_dir)
    split_file = run_dir / "split.csv"
    if not split_file.is_file():
        raise CheckpointError(f"{run_dir} has no split.csv; give a run folder written by covidscreen train")
    split = pd.read_csv(split_file, keep_default_na=False, dtype=str)
    run_data = Path(run.data_dir or "").resolve()
    if run_data == data_dir.resolve():
        split_of = dict(zip(split["image"], split["split"], strict=True))
        table["split"] = table["image"].map(split_of).fillna("unused").to_numpy()
        return table, f"the run's split ({run_dir}/split.csv); images the run did not use are 'unused'"
    # external data: audit it together with the run's own images, so that overlap shows up as cross-split pairs
    table["split"] = "external"
    table["group"] = [g if pid else f"external|{g}" for g, pid in zip(table["group"], table["patient_id"], strict=True)]
    own = split.copy()
    own["path"] = [str(run_data / p) for p in own["image"]]
    own = own[own["path"].map(lambda p: Path(p).is_file())]
    if "group" not in own or own["group"].eq("").all():
        own["group"] = own.get("patient_id", own["image"])
    own = own[own["split"].isin(["train", "val", "test"])]
    return (pd.concat([own, table], ignore_index=True).fillna(""),
            f"the run's images ({run_data}, its train/val/test split) and {data_dir} as 'external'")


def audit_data_dir(data_dir: str | Path, run_dir: str | Path | None = None, output: str | Path | None = None,
                   image_size: int | None = None, pediatric_sites: tuple[str, ...] = (), device: str = "auto",
                   seed: int = 0, progress: bool = True) -> Path:
    """``covidscreen audit``: audit a data folder (and a run), write ``audit.json``, ``audit_pairs.csv`` and
    ``audit.html``; with a run folder as output, its ``report.html`` and ``model_card.md`` are rebuilt too.

    Args:
        image_size: side of the cached images; default: the run's input size (its features must be computed at the
            size it was trained on), else 224.

    Returns:
        The output folder.
    """
    data_dir = resolve_data_dir(data_dir)
    run = Path(run_dir) if run_dir is not None else None
    table = load_table(data_dir)
    table, source = _audit_split(table, Path(data_dir), run, seed)
    # a run's model is probed on what it was trained on: its own preprocessing (lung ROI, intensity, border crop)
    # and segmenter, as the audit at the end of training does; Predictor resolves them as evaluate and predict do
    predictor = Predictor(run, device=device) if run is not None else None
    if image_size is None:
        image_size = predictor.size if predictor is not None else 224
    cache = ImageCache(table["path"].tolist(), image_size, progress=progress,
                       preprocess=predictor.preprocess if predictor is not None else None,
                       segmenter=predictor.segmenter if predictor is not None else None)
    table = table[cache.ok].reset_index(drop=True)
    rows = cache.rows(table["path"].tolist())
    model = predictor.model if predictor is not None else None
    dev = predictor.device if predictor is not None else resolve_device(device)
    out = Path(output) if output is not None else (run if run is not None else Path(f"audit-{Path(data_dir).name}"))
    audit_table(table, cache.images, rows, out, model=model, device=dev, pediatric_sites=pediatric_sites, seed=seed,
                split_source=source, data_dir=str(Path(data_dir).resolve()),
                run_dir=str(run.resolve()) if run is not None else None)
    write_audit_html(out)
    if run is not None and out.resolve() == run.resolve() and (run / "metrics.json").is_file():
        write_report(run)
        write_model_card(run)
    return out
