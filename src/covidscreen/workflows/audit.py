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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..audit import AuditContext, all_findings, registered
from ..audit.hashing import try_file_sha256
from ..audit.imagestats import image_stats
from ..audit.shortcut import model_features
from ..data.cache import ImageCache
from ..data.locate import resolve_data_dir
from ..data.splits import patient_grouped_split
from ..data.table import load_table
from ..errors import CheckpointError, ConfigError, DataError
from ..inference.predictor import Predictor
from ..inference.run import load_run
from ..reporting.audit_page import read_audit, write_audit_html
from ..reporting.model_card import write_model_card
from ..reporting.report import write_report
from ..runtime import atomic_write_csv, atomic_write_text, resolve_device
from .grouping import group_near_duplicates

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
    """Every registered audit (leakage, shortcut, confounding, ...) of ``table`` (with ``split``, ``group``, ``path``
    columns), with the findings of all of them.

    Args:
        table: one row per image.
        images: cached ``uint8`` images; ``images[rows[i]]`` is row ``i`` of ``table`` (``(N, S, S)``, or
            ``(N, C, S, S)`` for runs reading several CT windows: the audits see channel 0, the lung window).
        out_dir: where to write ``audit.json`` and the audits' CSV files (``audit_pairs.csv``; None: write nothing).
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
    sha, unreadable = try_file_sha256(table["path"].tolist())
    if unreadable:  # vanished or unreadable since the table was read: left out of the audit, listed in it
        keep = table["path"].map(lambda p: p not in unreadable).to_numpy()
        table, rows = table[keep].reset_index(drop=True), rows[keep]
        sha = [d for d in sha if d is not None]
    # image statistics, hashes and format probes read one grey image: the lung-window channel of a run that reads
    # several CT windows (the model's feature probe below still gets every channel)
    grey = images if images.ndim == 3 else images[:, 0]
    ctx = AuditContext(table, grey, rows, image_stats(grey, rows), sha, seed, tuple(pediatric_sites))
    if model is not None:
        ctx.feature_rows = _feature_rows(table, seed)
        ctx.features = model_features(model, images, rows[ctx.feature_rows], device)
    results = {a.name: a.analyse(ctx) for a in registered()}
    audit = {
        "data_dir": data_dir, "run_dir": run_dir, "n_images": int(len(table)),
        "split_source": split_source,
        "split_counts": {str(k): int(v) for k, v in table["split"].value_counts().items()},
        "findings": all_findings(results),
        **results,
        "seconds": round(time.time() - t0, 1),
        "left_out": [{"path": p, "error": e} for p, e in unreadable.items()],
    }
    if unreadable:
        audit["findings"].append({"severity": "medium", "text": (
            f"{len(unreadable)} image(s) vanished or became unreadable after the data table was read and were left "
            f"out of this audit, e.g. {next(iter(unreadable))}. Check the data folder (a sync job?) and rerun.")})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / AUDIT_FILE, json.dumps(audit, indent=2, default=_jsonable))
        for name, frame in ctx.artefacts.items():
            atomic_write_csv(out / name, frame)
    return audit


def _audit_split(table: pd.DataFrame, data_dir: Path, run_dir: Path | None, seed: int,
                 progress: bool = True) -> tuple[pd.DataFrame, str]:
    """Attach a ``split`` column (and the run's images when the data are external to the run)."""
    if run_dir is None:
        table = group_near_duplicates(table, table["path"].tolist(), progress=progress)
        table["split"] = patient_grouped_split(table, seed=seed).to_numpy()
        return table, (f"the default patient-grouped split (seed {seed}) that covidscreen train would make, "
                       "near-duplicates kept together")
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
    table, source = _audit_split(table, Path(data_dir), run, seed, progress)
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


@dataclass(frozen=True)
class AuditOutcome:
    """What ``covidscreen audit`` wrote: the output folder and the findings of its ``audit.json``."""

    output: Path
    findings: list[dict[str, Any]]

    def lines(self) -> list[str]:
        """What the command prints: one line per finding (``[severity] text``), then where the audit is."""
        return [f"[{f['severity']}] {f['text']}" for f in self.findings] + [
            f"audit: {self.output / 'audit.json'} | {self.output / 'audit.html'}"]


def audit_job(data_dir: str | Path, run_dir: str | Path | None = None, output: str | Path | None = None,
              image_size: int | None = None, pediatric_sites: tuple[str, ...] = (), device: str = "auto",
              seed: int = 0, progress: bool = True) -> AuditOutcome:
    """``covidscreen audit``: :func:`audit_data_dir`, then its findings read back from ``audit.json``.

    Raises:
        ConfigError: an image size outside 32-1024 pixels (before anything is read).
    """
    if image_size is not None and not 32 <= image_size <= 1024:
        raise ConfigError(f"--image-size {image_size}: use an integer from 32 to 1024")
    out = audit_data_dir(data_dir, run_dir, output, image_size=image_size, pediatric_sites=pediatric_sites,
                         device=device, seed=seed, progress=progress)
    return AuditOutcome(out, (read_audit(out) or {}).get("findings", []))

