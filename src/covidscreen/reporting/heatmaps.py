"""The heatmap audit of a run's test split, for the evaluation report.

:func:`heatmap_summary` explains a sample of the test images (some of each outcome: true/false positives and
negatives of the positive class at the run's operating threshold, then images spread over labels and sites), writes
``explain/`` into the run folder (``heatmaps.csv``, ``summary.json``, one PNG per example shown) and returns an HTML
fragment: the border fraction (shortcut indicator) averaged per true class, per site and per outcome, the sanity
checks, example heatmaps of each outcome and the images whose heatmaps sit most on the border.

Maps are computed on the model's input (the run's own preprocessing); border fractions and figures use them placed
back into the original image (``inputs.py``: for a run that crops, the map is 0 outside what the model saw); the
sanity checks use the model inputs and their square maps.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.decode import read_image
from ..data.preprocess import InputGeometry
from ..errors import CheckpointError, ImageDecodeError
from ..evaluation.metrics import predict_labels
from ..explain.cam import Explainer, Explanation, check_method
from ..explain.figures import METHOD_NAMES, check_lines, explanation_png, img_tag, overlay_png
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
from ..inference.run import Run, load_checkpoint
from ..runtime import atomic_write_bytes, atomic_write_csv, atomic_write_text, resolve_device

OUTCOMES = {
    "TP": "true positives", "FP": "false positives", "FN": "false negatives", "TN": "true negatives",
    "correct": "correct", "wrong": "wrong",
}


def outcomes(labels: np.ndarray, probs: np.ndarray, classes: list[str], positive_class: str | None,
             threshold: float | None) -> np.ndarray:
    """TP/FP/FN/TN of the positive class at the run's threshold; correct/wrong when there is no positive class."""
    labels = np.asarray(labels).astype(str)
    pos = classes.index(positive_class) if positive_class in classes else None
    pred = predict_labels(probs, pos, threshold)
    if pos is None:
        y = np.array([classes.index(lab) for lab in labels])
        return np.where(pred == y, "correct", "wrong")
    is_pos, said = labels == positive_class, pred == pos
    return np.select([is_pos & said, ~is_pos & said, is_pos & ~said], ["TP", "FP", "FN"], "TN")


def sample_rows(table: pd.DataFrame, n: int, per_outcome: int, seed: int = 0) -> list[int]:
    """Row labels to explain: up to ``per_outcome`` of each outcome, then round-robin over (label, site) groups.

    The order interleaves outcomes first, so the first few rows (used for the costly sanity checks) mix them.
    """
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    by_outcome = [list(rng.permutation(g.index.to_numpy())[:per_outcome])
                  for _, g in sorted(table.groupby("outcome"), key=lambda kv: list(OUTCOMES).index(kv[0]))]
    while any(by_outcome) and len(chosen) < n:
        for lst in by_outcome:
            if lst and len(chosen) < n:
                chosen.append(int(lst.pop(0)))
    taken = set(chosen)
    groups = [list(rng.permutation([i for i in g.index if i not in taken]))
              for _, g in table.groupby(["label", "site"])]
    rng.shuffle(groups)
    while any(groups) and len(chosen) < n:
        for g in groups:
            if g and len(chosen) < n:
                chosen.append(int(g.pop(0)))
    return chosen


def _nanmean(v) -> float:
    arr = np.asarray(v, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan


def _group_table(df: pd.DataFrame, by: str, pos: str | None) -> pd.DataFrame:
    rows = []
    for key, g in df.groupby(by):
        row = {by: key, "n": len(g), "empty maps": int(g["border_fraction"].isna().sum()),
               "mean border fraction": _nanmean(g["border_fraction"]),
               "max border fraction": float(g["border_fraction"].max())}
        if pos:
            row[f"mean p({pos})"] = float(g[f"prob_{pos}"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def heatmap_provider(run_dir: str | Path, method: str = "gradcam", target: str | None = None,
                     device: str = "auto") -> Callable[[Path], np.ndarray]:
    """A ``heatmap_fn(path) -> (H, W) map in [0, 1]`` of a run, e.g. for the report's example thumbnails.

    The map is of the input the run's model sees (its own preprocessing), placed back into the image as
    ``read_image(path)`` decodes it (0 outside what the model saw when the run crops). The model is loaded once;
    every call registers and releases its own hooks (nothing stays hooked between calls). ``target`` defaults to the
    run's positive class, else each image's most probable class.
    """
    check_method(method)
    model, run = load_checkpoint(run_dir, resolve_device(device))
    classes, size = list(run.classes), run.image_size
    if target is None and run.positive_class in classes:
        target = run.positive_class
    load_input, _ = run_input_loader(run.preprocess, size, run.path)

    def heatmap_fn(path: Path) -> np.ndarray:
        x, geometry = load_input(path)
        with Explainer(model, method=method, classes=classes, image_size=size) as ex:
            maps, _, _ = ex.maps(x[None], target)
        return map_to_image(maps[0], geometry, read_image(path).shape)

    return heatmap_fn


def heatmap_summary(run_dir: str | Path, n: int = 32, output: str | Path | None = None, method: str = "gradcam",
                    per_outcome: int = 4, worst: int = 6, checks: int = 4, seed: int = 0, device: str = "auto",
                    margin: float = DEFAULT_MARGIN, mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                    progress: bool = False) -> str:
    """Explain a sample of a run's test split; write ``explain/`` outputs and return the report's HTML fragment.

    Args:
        run_dir: run folder with checkpoint, ``predictions.csv`` and the data it was trained on.
        n: number of test images to explain (all when the split is smaller).
        output: folder for the outputs (default ``run_dir/explain``).
        method: CAM method.
        per_outcome: examples of each outcome (TP, FP, FN, TN) explained and shown.
        worst: images with the highest border fraction shown.
        checks: sanity checks (randomisation test, ROAD) on this many of the explained images.
        seed: seed of the sample and of the checks.
        device: ``auto``, ``cpu`` or ``cuda``.
        margin: border band of the shortcut indicator.
        mask_fn: optional ``mask_fn(image) -> mask`` (True inside the chest or lungs, any resolution) called with
            each decoded test image; it replaces the central box of the border fraction.

    Returns:
        An HTML fragment (``<h2>`` section with embedded images) for the evaluation report.
    """
    check_method(method)
    run_dir = Path(run_dir)
    out = Path(output) if output else run_dir / "explain"
    model, run = load_checkpoint(run_dir, resolve_device(device))
    pos = run.positive_class if run.positive_class in run.classes else None
    title = f"<h2>Where the model looks: {METHOD_NAMES[method]} audit of the test split</h2>"
    test = _test_split(run)
    if test.empty:
        return title + "<p>No test images in this run: nothing to explain.</p>"
    root = Path(run.data_dir or ".")
    # the run's preprocessing, and its lung mask
    load_input, lung_mask_fn = run_input_loader(run.preprocess, run.image_size, run.path)
    mask_fn = mask_fn if mask_fn is not None else lung_mask_fn
    sample = _explain_sample(model, run, test, sample_rows(test, n, per_outcome, seed), root, load_input, method, pos)
    if sample is None:
        return title + f"<p class='warn'>None of the sampled test images could be read from {html.escape(str(root))}."
    df = sample.table
    _border_scores(sample, root, mask_fn, margin)
    # sanity checks on the first images whose map is not empty (an empty map has nothing to check)
    checked = [j for j in range(len(df)) if np.isfinite(df.at[j, "border_fraction"])][:checks]
    rnd = road = None
    if checked:
        rnd = randomisation_test(model, sample.inputs[checked], sample.targets[checked], method, list(run.classes),
                                 run.image_size, seed=seed, original=sample.maps[checked])
        road = road_faithfulness(model, sample.inputs[checked], sample.maps[checked], sample.targets[checked],
                                 seed=seed)
    per_image = dict(zip(checked, per_image_checks(rnd, road, len(checked)), strict=True))
    df["randomisation_max_spearman"] = [per_image.get(j, {}).get("randomisation", {}).get("max", math.nan)
                                        for j in range(len(df))]
    df["road"] = [per_image.get(j, {}).get("road", math.nan) for j in range(len(df))]

    shown_outcome = [j for j in range(len(df)) if (df["outcome"][:j + 1] == df["outcome"][j]).sum() <= per_outcome]
    finite = df["border_fraction"].fillna(-1).to_numpy()
    shown_worst = [int(j) for j in np.argsort(-finite, kind="stable")[:worst] if finite[j] >= 0]
    thumbs = _example_figures(sample, sorted(set(shown_outcome) | set(shown_worst)), root, per_image, method, margin,
                              out, progress)
    atomic_write_csv(out / "heatmaps.csv", df)
    per_class, per_site, per_out = (_group_table(df, by, pos) for by in ("label", "site", "outcome"))
    crop = crop_description(run.preprocess)
    summary = {"method": method, "explained_class": pos or "most probable class", "margin": margin,
               "region": "chest mask" if mask_fn is not None else "central box", "crop": crop,
               "border_visible": bool(crop is None or (df["border_area"] > 0).any()),
               "mean_view_fraction": float(df["view_fraction"].mean()),
               "crop_notes": crop_notes(crop, df["border_area"].tolist(), mask_fn is not None),
               "image_size": run.image_size,
               "map_resolution": list(sample.resolution) if sample.resolution else None,
               "uniform_map_border_fraction": float(df["border_area"].mean()), "n_explained": len(df),
               "n_test": len(test), "mean_border_fraction": _nanmean(df["border_fraction"]),
               "per_class": per_class.to_dict(orient="records"), "per_site": per_site.to_dict(orient="records"),
               "per_outcome": per_out.to_dict(orient="records"), "sanity": sanity_summary(rnd, road)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))

    return _fragment(title, summary, per_class, per_site, per_out, df, thumbs, shown_outcome, shown_worst, pos,
                     method, out)


def _test_split(run: Run) -> pd.DataFrame:
    """The run's test predictions with each image's outcome (TP/FP/FN/TN at the default operating point)."""
    pred_file = run.path / "predictions.csv"
    if not pred_file.is_file():
        raise CheckpointError(f"{run.path} has no predictions.csv; train the run to the end first")
    preds = pd.read_csv(pred_file, keep_default_na=False)
    test = preds[preds["split"] == "test"].reset_index(drop=True) if "split" in preds else preds.iloc[:0]
    if test.empty:
        return test
    if "site" not in test:
        test["site"] = "unknown"
    classes = list(run.classes)
    pos = run.positive_class if run.positive_class in classes else None
    probs = test[[f"prob_{c}" for c in classes]].to_numpy(float)
    test["outcome"] = outcomes(test["label"].to_numpy(), probs, classes, pos, run.threshold())
    return test


@dataclass
class _Sample:
    """The explained test images: a table row each, with their model inputs, maps, targets and input geometry."""

    classes: list[str]
    table: pd.DataFrame
    inputs: np.ndarray
    maps: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    geometries: list[InputGeometry]
    resolution: tuple[int, int] | None
    masks: list[np.ndarray | None] = field(default_factory=list)


def _explain_sample(model: Any, run: Run, test: pd.DataFrame, rows: list[int], root: Path, load_input: Callable,
                    method: str, pos: str | None) -> _Sample | None:
    """The maps of the sampled test images that can be read (None when none can)."""
    classes = list(run.classes)
    records, inputs, geometries = [], [], []
    for i in rows:
        try:
            x_i, geometry = load_input(root / test.at[i, "image"])
        except ImageDecodeError:
            continue  # images that fail here failed in training too and are listed in skipped.csv
        inputs.append(x_i)
        geometries.append(geometry)
        records.append(i)
    if not records:
        return None
    x = np.stack(inputs)
    with Explainer(model, method=method, classes=classes, image_size=run.image_size) as ex:
        maps, p_now, idx = ex.maps(x, pos if pos else None)
        resolution = ex.map_resolution
    df = test.loc[records, ["image", "label", "site", "outcome"]].reset_index(drop=True)
    df["target"] = [classes[t] for t in idx]
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = p_now[:, j]
    return _Sample(classes, df, x, maps, p_now, idx, geometries, resolution)


def _border_scores(sample: _Sample, root: Path, mask_fn: Callable | None, margin: float) -> None:
    """Border fraction, its chance level and the share of the image the model saw, per explained image.

    Scores are in the original image's geometry, at the size preprocessing decoded it (the band is relative and a
    mask is resized to the map, so the full-resolution decode would give the same numbers): a cropping run's map is
    0 outside what its model saw."""
    df, geometries = sample.table, sample.geometries
    sample.masks = [None] * len(df)
    if mask_fn is not None:
        sample.masks = [mask_fn(read_image(root / name)) for name in df["image"]]
    placed = [map_to_image(m, g, (g.height, g.width)) for m, g in zip(sample.maps, geometries, strict=True)]
    df["border_fraction"] = [border_fraction(m, k, margin) for m, k in zip(placed, sample.masks, strict=True)]
    df["border_area"] = [chance_level(m.shape, g, k, margin)
                         for m, g, k in zip(placed, geometries, sample.masks, strict=True)]
    df["view_fraction"] = [(g.bottom - g.top) * (g.right - g.left) / (g.height * g.width) for g in geometries]


def _example_figures(sample: _Sample, shown: list[int], root: Path, per_image: dict[int, dict], method: str,
                     margin: float, out: Path, progress: bool) -> dict[int, str]:
    """The PNG of every shown example (``examples/``) and its thumbnail card for the report."""
    df, classes = sample.table, sample.classes
    (out / "examples").mkdir(parents=True, exist_ok=True)
    thumbs: dict[int, str] = {}
    for j in tqdm(shown, desc="heatmap figures", disable=not progress):
        src = root / df.at[j, "image"]
        try:
            image = read_image(src)
        except ImageDecodeError:
            continue
        view = sample.geometries[j].scaled_to(*image.shape)
        heat = map_to_image(sample.maps[j], view, image.shape)
        mask = sample.masks[j]
        e = Explanation(heatmap=heat, input_heatmap=sample.maps[j], image=image, probs=sample.probs[j],
                        target=int(sample.targets[j]), classes=classes, method=method,
                        border_fraction=border_fraction(heat, mask, margin),
                        border_area=chance_level(heat.shape, view, mask, margin), source=str(src),
                        checks=per_image.get(j, {}), mask=mask, view=view if view.crops else None)
        name = f"{j:03d}_{df.at[j, 'outcome']}_{Path(df.at[j, 'image']).stem}.png"
        atomic_write_bytes(out / "examples" / name, explanation_png(e, margin, title=str(df.at[j, "image"])))
        df.loc[j, "png"] = f"examples/{name}"
        caption = [f"{df.at[j, 'image']}", f"true {df.at[j, 'label']} | site {df.at[j, 'site']} | "
                   f"{df.at[j, 'outcome']}", f"p({e.target_name})={e.probs[e.target]:.3f} | border fraction "
                   f"{fmt_value(e.border_fraction)}", *check_lines(e.checks)]
        thumb = img_tag(overlay_png(e, margin), df.at[j, "image"], 200)
        thumbs[j] = (f"<div style='width:200px;font-size:.8em'>{thumb}<br>"
                     f"{'<br>'.join(html.escape(c) for c in caption)}</div>")
        del image, heat, e
    return thumbs


def _fragment(title: str, summary: dict, per_class: pd.DataFrame, per_site: pd.DataFrame, per_out: pd.DataFrame,
              df: pd.DataFrame, thumbs: dict[int, str], shown_outcome: list[int], shown_worst: list[int],
              pos: str | None, method: str, out: Path) -> str:
    chance = summary["uniform_map_border_fraction"]
    fmt = {"float_format": lambda v: f"{v:.3f}", "index": False, "na_rep": "-"}
    target = f"class '{pos}'" if pos else "each image's most probable class"
    region = ("the chest mask" if summary["region"] == "chest mask" else
              f"the central box that leaves a band of {summary['margin']:.3g} x each side, where burnt-in text, side "
              "markers and collimation edges sit")
    parts = [title, f"<p class='small'>{summary['n_explained']} of {summary['n_test']} test images explained for "
             f"{html.escape(target)} (up to a few of each outcome, then spread over labels and sites; so errors are "
             f"over-represented). <b>Border fraction</b>: share of the heatmap outside {region}. A uniform map "
             f"scores {chance:.2f}; well above that, the model looks at borders and corners rather than the chest. "
             "An <b>empty map</b> means no region supports the explained class (expected on images the model is "
             "sure do not belong to it). Map resolution: "
             f"{' x '.join(map(str, summary['map_resolution'] or ['?']))} cells at {summary['image_size']} px. "
             f"Outputs: {html.escape(str(out))}</p>"]
    warn = []
    res = summary.get("map_resolution")
    if res and min(res) < 4:
        warn.append(f"At {summary['image_size']} px the Grad-CAM layer has only {res[0]} x {res[1]} cells: the maps "
                    "are too coarse to tell borders from the chest, so border fractions here are close to a uniform "
                    "map's by construction. Use a larger image size to audit where the model looks.")
    if df["border_fraction"].isna().all():
        warn.append("Every explained map is empty: no region supports the explained class in any sampled image.")
    for table, by in ((per_class, "label"), (per_site, "site")):
        for _, r in table.iterrows():
            if r["n"] - r["empty maps"] >= 3 and r["mean border fraction"] > chance:
                warn.append(f"Heatmaps of {by} '{r[by]}' put on average {r['mean border fraction']:.2f} of their "
                            f"mass on the border band (uniform map: {chance:.2f}): the model may be reading labels, "
                            "markers or image edges of these images rather than the lungs.")
    rnd = summary["sanity"].get("randomisation")
    if rnd and not rnd["passed"]:
        warn.append("The model-randomisation test failed: these heatmaps hardly depend on the model's weights and "
                    "must not be read as evidence of what it learned.")
    parts += [f"<div class='warn'>{html.escape(w)}</div>" for w in warn]
    parts += [f"<p>{html.escape(note)}</p>" for note in summary.get("crop_notes", [])]
    parts.append("<h3>Border fraction by true class</h3>" + per_class.to_html(**fmt))
    parts.append("<h3>Border fraction by site</h3>" + per_site.to_html(**fmt))
    parts.append("<h3>Border fraction by outcome</h3>" + per_out.to_html(**fmt))
    notes = sanity_notes(summary["sanity"], method)
    if notes:
        parts.append("<h3>Can these heatmaps be trusted? Sanity checks</h3>"
                     + "".join(f"<p>{html.escape(s)}</p>" for s in notes))
    for code in OUTCOMES:
        js = [j for j in shown_outcome if df.at[j, "outcome"] == code and j in thumbs]
        if js:
            parts.append(f"<h3>Examples: {OUTCOMES[code]}</h3><div class='grid'>"
                         + "".join(thumbs[j] for j in js) + "</div>")
    js = [j for j in shown_worst if j in thumbs]
    if js:
        parts.append("<h3>Highest border fractions (the most suspicious heatmaps)</h3><div class='grid'>"
                     + "".join(thumbs[j] for j in js) + "</div>")
    return "\n".join(parts)
