"""Evaluate a trained run: on its own test split, or on another data folder (external validation).

Thresholds and temperature are the run's own (chosen on its validation split): external data never tune them. For
external data the run's internal test metrics are put side by side with the external ones (the drop).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import DEFAULT_N_BOOT
from ..data.cache import ImageCache
from ..data.duplicates import MAX_PHASH_DISTANCE, MIN_CORRELATION
from ..data.locate import resolve_data_dir
from ..data.modality import table_modality
from ..data.table import load_table
from ..errors import DataError, ModalityError
from ..evaluation.assess import assess
from ..evaluation.breakdown import subgroup_breakdown
from ..evaluation.external import compare_blocks
from ..evaluation.within_site import mixed_sites, within_site_metrics
from ..inference.predictor import Predictor
from ..inference.run import load_run
from ..reporting.report import write_report
from ..runtime import atomic_write_csv, atomic_write_text, read_optional_json
from ..training.distributed import World
from ..training.subsets import apply_task
from .grouping import images_with_copies_in
from .sharded import score_paths_sharded

NEAR_COPY_METHOD = (f"pHash distance <= {MAX_PHASH_DISTANCE} bits, confirmed by thumbnail correlation >= "
                    f"{MIN_CORRELATION} (the audit's detector, data/duplicates.py)")


def evaluate_table(run_dir: str | Path, table: pd.DataFrame, name: str, output: str | Path, device: str = "auto",
                   batch_size: int = 64, progress: bool = True, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   description: str = "", data_dir: str | Path | None = None, notes: list[str] | None = None,
                   world: World | None = None, near_copies: dict[str, Any] | None = None) -> Path | None:
    """Predict every image of ``table`` with the run's model and write ``metrics.json``, ``predictions.csv``,
    ``split.csv`` and ``report.html`` into ``output``.

    Args:
        table: rows with ``image``, ``path``, ``label`` (a class of the run), optional ``group``, ``site``, ``view``.
        name: the metrics block (``test`` or ``external``).
        description: one sentence for the report's external-validation section.
        data_dir: the folder ``image`` paths are relative to (for thumbnails).
        notes: warnings to show with the comparison (e.g. classes that could not be evaluated).
        world: under ``torchrun``, the ranks that share the scoring (each decodes and predicts every
            ``world_size``-th image); rank 0 computes and writes everything from the merged predictions, which equal
            a single process's, and the other ranks return ``None``.
        near_copies: ``{"images": [...], "n_pairs": k, "description": ...}``, test images with a near-copy in the
            run's training split: the metrics are then computed also without them, side by side (``near_copies``
            in ``metrics.json``).
    """
    run_dir = Path(run_dir)
    world = world or World()
    predictor = Predictor(run_dir, device=device)
    classes = predictor.classes
    if table.empty:
        raise DataError("nothing to evaluate: the chosen images are none")

    def score(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # the run's preprocessing; one cache per input size for an ensemble of members trained at several sizes, so
        # that each member reads images resized once, to its own size
        caches = [ImageCache(paths, size, progress=progress and world.is_main, preprocess=predictor.preprocess,
                             segmenter=predictor.segmenter) for size in predictor.sizes]
        ok = np.logical_and.reduce([c.ok for c in caches])
        kept = [p for p, good in zip(paths, ok, strict=True) if good]
        rows = [c.rows(kept) for c in caches]

        def batch(i: int) -> np.ndarray | dict[int, np.ndarray]:
            parts = {size: c.images[r[i:i + batch_size]] for size, c, r in zip(predictor.sizes, caches, rows,
                                                                                strict=True)}
            return parts if len(parts) > 1 else next(iter(parts.values()))

        probs = [predictor.predict_arrays(batch(i)) for i in range(0, len(kept), batch_size)]
        return ok, (np.concatenate(probs) if probs else np.zeros((0, len(classes)), dtype=np.float32))

    # under torchrun each rank scores its share of the images; rank 0 gets them all back in order
    scored = score_paths_sharded(score, table["path"].tolist(), world)
    if scored is None:  # not rank 0: its share is with rank 0, which writes the evaluation
        return None
    ok, probs = scored
    skipped = int((~ok).sum())
    table = table[ok].reset_index(drop=True)
    if table.empty:
        raise DataError("nothing to evaluate: none of the images could be decoded")
    y = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    preds = table[[c for c in ["image", "label", "split", "site", "view", "group"] if c in table]].copy()
    preds["split"] = name
    for i, c in enumerate(classes):
        preds[f"prob_{c}"] = probs[:, i]
    preds["prediction"] = predictor.decide(probs)
    atomic_write_csv(out / "predictions.csv", preds)
    run = predictor.run
    pos = run.positive_class if run.positive_class in classes else None
    points = run.thresholds
    groups = table["group"].to_numpy() if "group" in table else None
    m = assess(y, probs, classes, pos, predictor.threshold, groups, points, n_boot=n_boot, seed=seed)
    run_metrics = read_optional_json(run_dir / "metrics.json")  # only the comparison needs it
    metrics: dict[str, Any] = {
        "classes": classes, "positive_class": pos, "operating_points": points,
        "operating_points_val": run_metrics.get("operating_points_val"),
        "operating_points_val_sites": run_metrics.get("operating_points_val_sites"),
        "default_operating_point": run.default_point, "temperature": run.temperature,
        "threshold_source": "the run's validation split", name: m, "n_test": m["n"],
        "skipped_files": skipped, "data_dir": str(data_dir) if data_dir else None,
        "data": str(data_dir) if data_dir else run.data_dir,
    }
    if "covid_vs_rest" in m:
        metrics["covid_vs_rest"] = m["covid_vs_rest"]
    metrics["breakdown"] = {by: subgroup_breakdown(preds, classes, pos, predictor.threshold, by, n_boot=n_boot,
                                                   seed=seed) for by in ("site", "view") if by in preds}
    internal = run_metrics.get("test")
    if name != "test" and internal is not None:
        metrics["internal_vs_external"] = {
            "description": description or f"The run's own test split (internal) against {len(preds)} images of "
                                          f"{data_dir or 'another folder'} (external).",
            "comparison": compare_blocks(internal, m), "notes": notes or []}
    # within-site metrics for every site of these data that holds both classes
    if pos in classes and mixed_sites(preds, pos):
        m["within_site"] = within_site_metrics(preds, classes, pos, predictor.threshold)
    if near_copies is not None:
        metrics["near_copies"] = without_near_copies(preds, y, probs, classes, pos, predictor.threshold, points,
                                                     m, near_copies, n_boot, seed)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    table.assign(split=name)[[c for c in ["image", "label", "site", "split"] if c in table or c == "split"]].to_csv(
        out / "split.csv", index=False)
    write_report(out, split_name=name, title=f"covidscreen evaluation ({name}) of {run_dir.name}")
    return out


def without_near_copies(preds: pd.DataFrame, y: np.ndarray, probs: np.ndarray, classes: list[str], pos: str | None,
                        threshold: float | None, points: dict[str, float], everything: dict[str, Any],
                        near_copies: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """The ``near_copies`` block: how many test images have a near-copy in training, and the metrics without them
    next to the metrics of every test image (same threshold; the intervals of both are bootstraps of their own
    images, and the two sets overlap, so no interval of the difference is given)."""
    flagged = set(near_copies["images"])
    keep = ~preds["image"].isin(flagged).to_numpy()
    block: dict[str, Any] = {**near_copies, "n_test": int(len(preds)), "n_with_copy": int((~keep).sum()),
                             "images": sorted(flagged)[:200]}
    if keep.all() or not keep.any():
        return block
    groups = preds["group"].to_numpy()[keep] if "group" in preds else None
    without = assess(y[keep], probs[keep], classes, pos, threshold, groups, points, n_boot=n_boot, seed=seed)
    if pos in classes and mixed_sites(preds[keep], pos):
        without["within_site"] = within_site_metrics(preds[keep].reset_index(drop=True), classes, pos, threshold)
    rows = compare_blocks(everything, without)
    for r in rows:
        r["change_ci"] = [float("nan"), float("nan")]  # overlapping samples: no independent-samples interval
    block.update(without=without, comparison=rows)
    return block


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, output: str | Path | None = None,
                 device: str = "auto", batch_size: int = 64, progress: bool = True,
                 n_boot: int = DEFAULT_N_BOOT, world: World | None = None) -> Path | None:
    """Compute metrics of a run on its test split (default) or on every image of another data folder.

    Args:
        world: under ``torchrun``, the ranks that share the scoring (:func:`evaluate_table`).

    Returns:
        The folder holding ``metrics.json``, ``predictions.csv`` and ``report.html`` of this evaluation (``None`` on
        ranks other than 0).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    classes = list(run.classes)
    split_rows = None  # the run's own split: searched for test images with a near-copy in training
    if data is None:
        split_file = run_dir / "split.csv"
        if not split_file.is_file():
            raise DataError(f"{run_dir} has no split.csv; pass --data DIR to evaluate on another folder")
        table = pd.read_csv(split_file, keep_default_na=False)
        root = Path(run.data_dir)
        table["path"] = [str(root / p) for p in table["image"]]
        split_rows = table[table["path"].map(lambda p: Path(p).is_file())]  # the near-copy search reads them
        table = table[table["split"] == "test"].reset_index(drop=True)
        name, data_dir = "test", root
    elif run.task == "binary":  # a binary run scores every other label as non-<positive>
        table = apply_task(load_table(resolve_data_dir(data)), "binary", run.positive_class,
                           require_positive=False)
        name, data_dir = "external", Path(table.attrs.get("root", data))
    else:
        table = load_table(resolve_data_dir(data), classes=classes)
        name, data_dir = "external", Path(table.attrs["root"])
    if data is not None:  # external data of the other modality: refused before any image is scored
        modality, source = table_modality(table)
        if modality != run.modality and not source.startswith("nothing"):
            raise ModalityError(f"{data_dir} holds {modality} images (from {source}), but {run_dir} reads "
                                f"{run.modality}; evaluate it on data of its own modality")
    near_copies = None
    if split_rows is not None and (world is None or world.is_main) and (split_rows["split"] == "train").any():
        images, n_pairs = images_with_copies_in(split_rows, "test", "train", progress=progress)
        near_copies = {"images": images, "n_pairs": n_pairs, "method": NEAR_COPY_METHOD}
    out = Path(output) if output else run_dir / f"eval-{name}"
    return evaluate_table(run_dir, table, name, out, device=device, batch_size=batch_size, progress=progress,
                          n_boot=n_boot, seed=int(run.seed or 0), data_dir=data_dir, world=world,
                          near_copies=near_copies)
