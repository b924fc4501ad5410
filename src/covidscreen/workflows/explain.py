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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.decode import read_image
from ..data.preprocess import InputGeometry
from ..errors import CovidscreenError, ImageDecodeError
from ..explain.cam import Explainer, Explanation, check_method
from ..explain.figures import METHOD_NAMES, check_lines, contact_sheet_html, explanation_png
from ..explain.inputs import chance_level, crop_description, crop_notes, map_to_image, run_input_loader
from ..explain.regions import DEFAULT_MARGIN, border_fraction
from ..explain.sanity import (
    fmt_value,
    per_image_checks,
    randomisation_test,
    road_faithfulness,
    sanity_notes,
    sanity_summary,
)
from ..inference.predictor import expand_inputs
from ..inference.run import load_checkpoint
from ..runtime import resolve_device

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
    classes, size = list(run.classes), run.image_size
    # the run's preprocessing, and its lung mask
    load_input, lung_mask_fn = run_input_loader(run.preprocess, size, run.path)
    if mask_fn is None:
        mask_fn = lung_mask_fn
    explainer = Explainer(model, method=method, classes=classes, image_size=size)
    target_idx = explainer.resolve_target(target)  # a bad class fails before any work
    files = expand_inputs(inputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(files)
    inputs_u8: dict[int, np.ndarray] = {}
    rows: list[dict] = []
    maps: dict[int, np.ndarray] = {}
    geometries: dict[int, InputGeometry] = {}
    with explainer as ex:
        for i, f in enumerate(tqdm(files, desc=f"{method}", unit="img", disable=not progress)):
            row = {"path": str(f), "png": "", "error": "", "target": "", "predicted": "",
                   **{f"prob_{c}": math.nan for c in classes}, "border_fraction": math.nan, "border_area": math.nan}
            rows.append(row)
            try:
                x, geometries[i] = load_input(f)
            except ImageDecodeError as exc:
                row["error"] = str(exc)
                continue
            m, probs, idx = ex.maps(x[None], target_idx)
            maps[i], inputs_u8[i] = m[0], x
            row.update({"target": classes[idx[0]], "predicted": classes[int(np.argmax(probs[0]))],
                        **{f"prob_{c}": float(p) for c, p in zip(classes, probs[0], strict=True)}})

    ok = [i for i, r in enumerate(rows) if not r["error"]]
    checked = [i for i in ok if np.ptp(maps[i]) > 0][:checks]  # an empty map has nothing to check
    rnd, road = None, None
    if checked:
        imgs = np.stack([inputs_u8[i] for i in checked])
        tg = [classes.index(rows[i]["target"]) for i in checked]
        orig = np.stack([maps[i] for i in checked])
        rnd = randomisation_test(model, imgs, tg, method, classes, size, original=orig)
        road = road_faithfulness(model, imgs, orig, tg)
    per_image = dict(zip(checked, per_image_checks(rnd, road, len(checked)), strict=True))
    del inputs_u8

    cards = []
    for i, (f, name, row) in enumerate(zip(files, names, rows, strict=True)):
        if row["error"]:
            cards.append({"name": f.name, "error": row["error"]})
            continue
        try:
            image = read_image(f)
        except ImageDecodeError as exc:  # changed on disk since pass 1
            row["error"] = str(exc)
            cards.append({"name": f.name, "error": row["error"]})
            continue
        view = geometries[i].scaled_to(*image.shape)  # preprocessing may have decoded a JPEG at a reduced scale
        input_map = maps.pop(i)
        heat = map_to_image(input_map, view, image.shape)
        mask = mask_fn(image) if mask_fn is not None else None
        e = Explanation(heatmap=heat, input_heatmap=input_map, image=image,
                        probs=np.array([row[f"prob_{c}"] for c in classes]), target=classes.index(row["target"]),
                        classes=classes, method=method, border_fraction=border_fraction(heat, mask, margin),
                        border_area=chance_level(heat.shape, view, mask, margin), source=str(f),
                        checks=per_image.get(i, {}), mask=mask, view=view if view.crops else None)
        (out / name).write_bytes(explanation_png(e, margin, title=f.name))
        row.update({"png": name, "border_fraction": e.border_fraction, "border_area": e.border_area,
                    "image_height": view.height, "image_width": view.width, "view_top": view.top,
                    "view_bottom": view.bottom, "view_left": view.left, "view_right": view.right})
        rnd_i = e.checks.get("randomisation", {})
        row["randomisation_max_spearman"] = rnd_i.get("max", math.nan)
        row["road"] = e.checks.get("road", math.nan)
        cards.append({"name": f.name, "href": name, "caption": [
            f.name, f"class '{e.target_name}': p={e.probs[e.target]:.3f} | top: {e.predicted}",
            f"border fraction {fmt_value(e.border_fraction)} (uniform {fmt_value(e.border_area)})",
            *check_lines(e.checks)]})
        del image, heat, e

    table = pd.DataFrame(rows)
    for col in VIEW_COLUMNS:  # pixel counts stay integers in the CSV, empty for unreadable files
        table[col] = table[col].astype("Int64") if col in table else pd.array([pd.NA] * len(table), dtype="Int64")
    table.to_csv(out / "explanations.csv", index=False)
    crop = crop_description(run.preprocess)
    chances = table["border_area"].dropna().tolist()
    summary = {"run": str(Path(run_dir).resolve()), "method": method, "target": target or "most probable class",
               "classes": classes, "image_size": size, "margin": margin,
               "region": "chest mask" if mask_fn is not None else "central box", "n_files": len(files),
               "n_unreadable": len(files) - len(ok), "mean_border_fraction": _nanmean(table["border_fraction"]),
               "crop": crop, "border_visible": bool(crop is None or any(c > 0 for c in chances)),
               "sanity": sanity_summary(rnd, road)}
    (out / "explain.json").write_text(json.dumps(summary, indent=2))
    several = len(files) > 1 or any(Path(p).is_dir() for p in inputs)
    if several:
        region = ("the dashed chest mask" if mask_fn is not None else
                  f"the dashed central box (band of {margin:.3g} x each side, where burnt-in text and markers sit)")
        notes = [f"{METHOD_NAMES[method]} of {Path(run_dir).name} ({len(ok)} of {len(files)} file(s) readable). "
                 f"Border fraction: share of the heatmap outside {region}; a uniform map scores the share of the "
                 "image outside it (shown per image)."]
        notes += crop_notes(crop, chances, mask_fn is not None) + sanity_notes(summary["sanity"], method)
        (out / "index.html").write_text(contact_sheet_html(cards, f"covidscreen explain: {Path(run_dir).name}",
                                                           notes))
    bad = [r for r in rows if r["error"]]
    if bad:
        raise CovidscreenError(f"{len(bad)} of {len(files)} file(s) could not be read (the others were written to "
                               f"{out}); first: {bad[0]['error']}")
    return table


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


__all__ = ["explain_files"]
