"""``covidscreen explain``: heatmaps of a trained run on image files and folders.

Three passes keep memory flat on large folders: (1) maps and probabilities of the model input (the run's own
preprocessing) for every file, (2) sanity checks on the first ``checks`` images (on the model inputs and their maps),
(3) one PNG per image (the file is decoded again at full resolution and the map placed back where the model's input
came from: resized to the whole image, or, for a run that crops, to its box with 0 outside). Border fractions are
computed in the original image's geometry. Outputs in the output folder: ``<name>.png`` per image,
``explanations.csv`` (one row per file, unreadable files included with their error; ``view_*``: the box of the image
the model saw, in its pixels), ``explain.json`` (settings and sanity-check summary) and, for a folder or several
images, ``index.html`` (the contact sheet).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.decode import read_image
from ..data.preprocess import InputGeometry
from ..errors import CovidscreenError, ImageDecodeError, ModalityError
from ..explain.cam import Explainer, check_method
from ..explain.figures import METHOD_NAMES, check_lines, contact_sheet_html, explanation_png
from ..explain.image import place_on_image
from ..explain.inputs import crop_description, crop_notes, run_input_loader
from ..explain.regions import DEFAULT_MARGIN
from ..explain.sanity import (
    fmt_value,
    per_image_checks,
    randomisation_test,
    road_faithfulness,
    sanity_notes,
    sanity_summary,
)
from ..inference.modality import ModalityWarning, check_input_modality, summarise_warnings
from ..inference.predictor import Predictor, expand_inputs
from ..inference.run import Run, load_checkpoint
from ..ood import PLAIN_WARNING, OODWarning, attach_ood
from ..runtime import atomic_write_bytes, atomic_write_csv, atomic_write_text, resolve_device
from .feature_maps import feature_map_files

#: Columns of ``explanations.csv`` that say which box of the image (full-resolution pixels) the model saw.
VIEW_COLUMNS = ("image_height", "image_width", "view_top", "view_bottom", "view_left", "view_right")


def _output_names(files: list[Path]) -> list[str]:
    """``<stem>.png`` per file, made unique with ``-2``, ``-3``, ... when stems repeat."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f.stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def explain_files(run_dir: str | Path, inputs: list[str | Path], output: str | Path, method: str = "gradcam",
                  target: str | None = None, checks: int = 4, device: str = "auto", margin: float = DEFAULT_MARGIN,
                  mask_fn: Callable[[np.ndarray], np.ndarray] | None = None, progress: bool = True) -> pd.DataFrame:
    """Explain image files with a trained run and write PNGs, a CSV, a JSON and (several images) a contact sheet.

    Args:
        run_dir: run folder written by ``covidscreen train``.
        inputs: image files (PNG, JPEG, DICOM) and/or folders (searched recursively).
        output: folder to write into.
        method: ``gradcam``, ``gradcam++``, ``scorecam`` or ``eigencam``.
        target: class to explain (name); None explains each image's most probable class.
        checks: run the sanity checks (randomisation test and ROAD) on the first ``checks`` readable images.
        device: ``auto``, ``cpu``, ``cuda``.
        margin: border band of the shortcut indicator (fraction of each side).
        mask_fn: optional ``mask_fn(image) -> mask``: the chest (or lung) mask of each decoded image, True inside,
            at any resolution; it replaces the central box of the border fraction (e.g. a lung segmentation model).

    Returns:
        The table written to ``explanations.csv``.

    Raises:
        CovidscreenError: bad run folder, method, class or inputs; also, after writing everything else, when some
            files could not be read (the message names the first).
    """
    check_method(method)
    if checks < 0:
        raise CovidscreenError(f"checks must be 0 or more images, got {checks}")
    model, run = load_checkpoint(run_dir, resolve_device(device))
    # the run's preprocessing, and its lung mask
    load_input, lung_mask_fn = run_input_loader(run.preprocess, run.image_size, run.path)
    mask_fn = mask_fn if mask_fn is not None else lung_mask_fn
    explainer = Explainer(model, method=method, classes=list(run.classes), image_size=run.image_size)
    target_idx = explainer.resolve_target(target)  # a bad class fails before any work
    files = expand_inputs(inputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    unchecked: list[str] = []

    def checked_input(f: Path) -> tuple[np.ndarray, InputGeometry]:
        note = check_input_modality(f, run.modality)  # a CT slice to an X-ray model (or the reverse): refused
        if note:
            unchecked.append(note)
        return load_input(f)

    first = _input_maps(explainer, files, checked_input, target_idx, method, progress)
    _add_ood(run, first, device)
    summary = summarise_warnings(unchecked, run.modality)
    if summary:
        warnings.warn(summary, ModalityWarning, stacklevel=2)
    checked = [i for i, r in enumerate(first.rows) if not r["error"] and np.ptp(first.maps[i]) > 0][:checks]
    rnd, road, per_image = _sanity_checks(model, first, checked, method, run)
    cards = [_figure(f, name, row, i, first, per_image, mask_fn, margin, method, out)
             for i, (f, name, row) in enumerate(zip(files, _output_names(files), first.rows, strict=True))]

    table = pd.DataFrame(first.rows)
    for col in VIEW_COLUMNS:  # pixel counts stay integers in the CSV, empty for unreadable files
        table[col] = table[col].astype("Int64") if col in table else pd.array([pd.NA] * len(table), dtype="Int64")
    atomic_write_csv(out / "explanations.csv", table)
    _write_summary(out, run, table, files, inputs, cards, method, target, margin, mask_fn is not None, rnd, road)
    bad = [r for r in first.rows if r["error"]]
    if bad:
        raise CovidscreenError(f"{len(bad)} of {len(files)} file(s) could not be read (the others were written to "
                               f"{out}); first: {bad[0]['error']}")
    return table


@dataclass
class _FirstPass:
    """Per file: its CSV row; for readable files the model input, its map and where the input came from."""

    classes: list[str]
    rows: list[dict]
    inputs: dict[int, np.ndarray]
    maps: dict[int, np.ndarray]
    geometries: dict[int, InputGeometry]


def _input_maps(explainer: Explainer, files: list[Path], load_input: Callable, target_idx: int | None, method: str,
                progress: bool) -> _FirstPass:
    """Pass 1: the heatmap of every readable file's model input (the hooks are held once for all files)."""
    classes = list(explainer.classes)
    first = _FirstPass(classes, [], {}, {}, {})
    with explainer as ex:
        for i, f in enumerate(tqdm(files, desc=f"{method}", unit="img", disable=not progress)):
            row = {"path": str(f), "png": "", "error": "", "target": "", "predicted": "",
                   **{f"prob_{c}": math.nan for c in classes}, "border_fraction": math.nan, "border_area": math.nan}
            first.rows.append(row)
            try:
                x, first.geometries[i] = load_input(f)
            except (ImageDecodeError, ModalityError) as exc:
                row["error"] = str(exc)
                continue
            m, probs, idx = ex.maps(x[None], target_idx)
            first.maps[i], first.inputs[i] = m[0], x
            row.update({"target": classes[idx[0]], "predicted": classes[int(np.argmax(probs[0]))],
                        **{f"prob_{c}": float(p) for c, p in zip(classes, probs[0], strict=True)}})
    return first


def _sanity_checks(model: Any, first: _FirstPass, checked: list[int], method: str, run: Run
                   ) -> tuple[dict | None, np.ndarray | None, dict[int, dict]]:
    """The randomisation test and ROAD on the ``checked`` images (their model inputs are released after)."""
    rnd, road = None, None
    classes = list(run.classes)
    if checked:
        imgs = np.stack([first.inputs[i] for i in checked])
        tg = [classes.index(first.rows[i]["target"]) for i in checked]
        orig = np.stack([first.maps[i] for i in checked])
        rnd = randomisation_test(model, imgs, tg, method, classes, run.image_size, original=orig)
        road = road_faithfulness(model, imgs, orig, tg)
    first.inputs.clear()
    return rnd, road, dict(zip(checked, per_image_checks(rnd, road, len(checked)), strict=True))


def _add_ood(run: Run, first: _FirstPass, device: str) -> None:
    """The out-of-distribution score and flag of each readable file (columns ``ood_score``, ``in_distribution``),
    from the run's Predictor on the very inputs that were explained; empty for a run without an OOD model."""
    for row in first.rows:
        row.update({"ood_score": math.nan, "in_distribution": None})
    if run.ood is None or run.kind == "ensemble" or not first.inputs:
        if run.ood is None:
            warnings.warn(f"{run.path} has no out-of-distribution model: the pages cannot say whether an image is "
                          f"unlike the training images; fit one with: covidscreen ood fit {run.path}", OODWarning,
                          stacklevel=3)
        return
    predictor = Predictor(run, device=device)
    attach_ood(predictor)
    idx = sorted(first.inputs)
    _, scores = predictor.score_arrays(np.stack([first.inputs[i] for i in idx]))
    inside = predictor.in_distribution(scores)
    for k, i in enumerate(idx):
        first.rows[i].update({"ood_score": float(scores[k]), "in_distribution": bool(inside[k])})


def _figure(f: Path, name: str, row: dict, i: int, first: _FirstPass, per_image: dict[int, dict],
            mask_fn: Callable | None, margin: float, method: str, out: Path) -> dict:
    """Pass 2 for one file: its map on the original image, its PNG, its CSV columns; returns its contact-sheet card."""
    if row["error"]:
        return {"name": f.name, "error": row["error"]}
    try:
        image = read_image(f)
    except ImageDecodeError as exc:  # changed on disk since pass 1
        row["error"] = str(exc)
        return {"name": f.name, "error": row["error"]}
    classes = first.classes
    e = place_on_image(first.maps.pop(i), first.geometries[i], image, np.array([row[f"prob_{c}"] for c in classes]),
                       classes.index(row["target"]), classes, method, str(f), mask_fn, margin, per_image.get(i, {}))
    view = first.geometries[i].scaled_to(*image.shape)
    atomic_write_bytes(out / name, explanation_png(e, margin, title=f.name))
    row.update({"png": name, "border_fraction": e.border_fraction, "border_area": e.border_area,
                "image_height": view.height, "image_width": view.width, "view_top": view.top,
                "view_bottom": view.bottom, "view_left": view.left, "view_right": view.right})
    row["randomisation_max_spearman"] = e.checks.get("randomisation", {}).get("max", math.nan)
    row["road"] = e.checks.get("road", math.nan)
    ood = [f"WARNING: {PLAIN_WARNING} (OOD score {row['ood_score']:.4g})"] if row.get("in_distribution") is False \
        else []
    return {"name": f.name, "href": name, "caption": [
        f.name, *ood, f"class '{e.target_name}': p={e.probs[e.target]:.3f} | top: {e.predicted}",
        f"border fraction {fmt_value(e.border_fraction)} (uniform {fmt_value(e.border_area)})",
        *check_lines(e.checks)]}


def _write_summary(out: Path, run: Run, table: pd.DataFrame, files: list[Path], inputs: list, cards: list[dict],
                   method: str, target: str | None, margin: float, masked: bool, rnd: dict | None,
                   road: np.ndarray | None) -> None:
    """``explain.json`` and, for several images, the contact sheet ``index.html``."""
    crop = crop_description(run.preprocess)
    chances = table["border_area"].dropna().tolist()
    n_ok = int((table["error"] == "").sum())
    summary = {"run": str(run.path.resolve()), "method": method, "target": target or "most probable class",
               "classes": list(run.classes), "image_size": run.image_size, "margin": margin,
               "region": "chest mask" if masked else "central box", "n_files": len(files),
               "n_unreadable": len(files) - n_ok, "mean_border_fraction": _nanmean(table["border_fraction"]),
               "crop": crop, "border_visible": bool(crop is None or any(c > 0 for c in chances)),
               "sanity": sanity_summary(rnd, road)}
    atomic_write_text(out / "explain.json", json.dumps(summary, indent=2))
    if len(files) > 1 or any(Path(p).is_dir() for p in inputs):
        region = ("the dashed chest mask" if masked else
                  f"the dashed central box (band of {margin:.3g} x each side, where burnt-in text and markers sit)")
        notes = [f"{METHOD_NAMES[method]} of {run.path.name} ({n_ok} of {len(files)} file(s) readable). "
                 f"Border fraction: share of the heatmap outside {region}; a uniform map scores the share of the "
                 "image outside it (shown per image)."]
        notes += crop_notes(crop, chances, masked) + sanity_notes(summary["sanity"], method)
        atomic_write_text(out / "index.html", contact_sheet_html(cards, f"covidscreen explain: {run.path.name}", notes))


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


__all__ = ["explain_files"]


def explain_job(run_dir: str | Path, inputs: list[str], output: str | Path, method: str = "gradcam",
                target: str | None = None, checks: int = 4, device: str = "auto", feature_maps: str | None = None,
                progress: bool = True) -> str:
    """``covidscreen explain``: heatmaps of ``inputs`` (:func:`explain_files`), or with ``feature_maps`` (a layer
    name) a grid of that layer's activations per image instead; returns the line to print (where to look)."""
    out = Path(output)
    if feature_maps:
        pngs = feature_map_files(run_dir, inputs, out, feature_maps, device=device)
        return f"{len(pngs)} feature-map grid(s) of {feature_maps}: {out}"
    table = explain_files(run_dir, inputs, out, method=method, target=target, checks=checks, device=device,
                          progress=progress)
    sheet = out / "index.html"
    return f"{len(table)} image(s) explained: {sheet if sheet.is_file() else out / table['png'].iloc[0]}"

