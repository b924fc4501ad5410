"""Score a CT series with a trained run: one probability per slice, one per series, and the slices behind it.

Every slice is decoded in Hounsfield units through the window (default: lung; a run with ``ct_channels``
``lung+mediastinal`` uses the windows of its sidecar, one per channel), prepared with the run's own preprocessing
and scored by the run's :class:`~covidscreen.inference.predictor.Predictor`. Only slices that show lung (at least
:data:`MIN_LUNG_FRACTION` of their pixels between -950 and -400 HU) enter the series probability: the models are
trained on lung slices, and the neck or abdomen at the ends of a chest series are not evidence either way.
The series probability is the run's aggregation rule (:mod:`.aggregate`, chosen on validation patients) applied to
those slices; its decision uses the threshold chosen with the rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.decode import LUNG_WINDOW, apply_window, check_window, ct_slice_hu, ct_windows_to_uint8
from ..data.preprocess import crop_border, preprocess_decoded, preprocess_with_geometry
from ..errors import ConfigError, CovidscreenError, DataError, ModalityError
from ..inference.modality import check_dicom_modality
from ..inference.predictor import Predictor
from .aggregate import aggregate, load_or_fit_aggregation
from .series import CTSeries, read_series

LUNG_HU = (-950.0, -400.0)
MIN_LUNG_FRACTION = 0.03
N_DRIVING = 3  # at least this many slices are named, even for the max rule


def lung_fraction(hu: np.ndarray) -> float:
    """Share of a slice's pixels with lung density (air outside the body, below -950 HU, does not count)."""
    return float(((hu >= LUNG_HU[0]) & (hu <= LUNG_HU[1])).mean())


def series_windows(predictor: Predictor, window: tuple[float, float] | None) -> list[tuple[float, float]]:
    """The (level, width) windows a run reads a series through: ``window`` (default lung) for a one-channel run,
    the sidecar's windows for a run that reads several (a different ``window`` is refused: the model was trained on
    those)."""
    run_windows = predictor.preprocess.ct_windows
    if run_windows is None:
        return [check_window(LUNG_WINDOW if window is None else window)]
    if window is not None and tuple(map(float, window)) != tuple(run_windows[0]):
        shown = ", ".join(f"{lv:g},{w:g}" for lv, w in run_windows)
        raise ConfigError(f"this run reads CT slices through the windows {shown} (ct_channels "
                          f"{predictor.preprocess.ct_channels}, from its sidecar); another window ({window[0]:g},"
                          f"{window[1]:g}) would show it densities it was not trained on: leave --window out")
    return [check_window(w) for w in run_windows]


def score_series(predictor: Predictor, series: str | Path | CTSeries, window: tuple[float, float] | None = None,
                 aggregation: dict[str, Any] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Per-slice and per-series scores of one series.

    Args:
        predictor: a CT run (its modality must be ``ct``; a radiograph model refuses the series).
        series: a folder or zip of DICOM slices, or an already read series.
        window: (level, width) in HU of a one-channel run (None: the lung window); runs that read several windows
            use their own (:func:`series_windows`).
        aggregation: rule and threshold (default: the run's, chosen on its validation patients).

    Returns:
        A JSON-ready dict: ``series`` (checks, gaps), ``probability``, ``prediction``, ``rule``, ``threshold``,
        ``driving_slices`` (the slices the probability was computed from, highest first) and ``slices`` (every
        slice: index, file, position, probability, lung fraction, whether it was used).

    Raises:
        SeriesError: the series fails a check. ModalityError: the series is not CT, or the model does not read CT.
    """
    pos = predictor.run.positive_class
    if pos not in predictor.classes:
        raise DataError("scoring a series needs a run with a positive class (e.g. covid); this run has none")
    s = series if isinstance(series, CTSeries) else read_series(series)
    note = check_dicom_modality(s.modality, predictor.modality, s.source)
    windows = series_windows(predictor, window)
    agg = aggregation or load_or_fit_aggregation(predictor.run.path, pos)
    rule, threshold = agg["rule"], float(agg["threshold"])
    pi = predictor.classes.index(pos)
    cfg = predictor.preprocess
    probs = np.empty(len(s), dtype=np.float64)
    lungs = np.empty(len(s), dtype=np.float64)
    for start in range(0, len(s), batch_size):
        part = s.slices[start:start + batch_size]
        hus = [ct_slice_hu(sl.dataset, sl.source) for sl in part]
        lungs[start:start + len(part)] = [lung_fraction(h) for h in hus]
        if cfg.ct_windows is None:
            images = [crop_border(apply_window(h, *windows[0]), cfg.border_crop) for h in hus]
            batch = np.stack(preprocess_decoded(images, predictor.size, cfg, predictor.segmenter))
        else:  # one channel per window, (B, C, size, size)
            batch = np.stack([preprocess_with_geometry(ct_windows_to_uint8(h, cfg.ct_windows), predictor.size,
                                                       cfg, predictor.segmenter)[0] for h in hus])
        probs[start:start + len(part)] = predictor.predict_arrays(batch)[:, pi]
    used = lungs >= MIN_LUNG_FRACTION
    notes = [note] if note else []
    if not used.any():
        notes.append(f"no slice shows lung (>= {MIN_LUNG_FRACTION:.0%} of pixels at {LUNG_HU[0]:.0f}.."
                     f"{LUNG_HU[1]:.0f} HU): every slice was used; check that this is a chest series")
        used[:] = True
    idx = np.flatnonzero(used)
    prob, top = aggregate(probs[idx], rule)
    driving = idx[top]
    if len(driving) < N_DRIVING:  # name a few more, highest first, so a reader can look at them
        rest = [i for i in idx[np.argsort(-probs[idx], kind="stable")] if i not in set(driving)]
        driving = np.concatenate([driving, rest[:N_DRIVING - len(driving)]]).astype(int)
    other = [c for c in predictor.classes if c != pos]
    negative = other[0] if len(other) == 1 else f"non_{pos}"
    rows = [{"index": sl.index, "file": sl.source, "instance_number": sl.instance_number,
             "position_mm": round(sl.position, 3), f"prob_{pos}": float(probs[sl.index]),
             "lung_fraction": round(float(lungs[sl.index]), 4), "used": bool(used[sl.index])} for sl in s.slices]
    return {
        "series": s.summary(),
        "window": {"level": windows[0][0], "width": windows[0][1]},
        **({"windows": [{"level": lv, "width": w} for lv, w in windows]} if len(windows) > 1 else {}),
        "rule": rule, "threshold": threshold, "rule_chosen_on": agg.get("chosen_on", "given"),
        f"prob_{pos}": prob, "prediction": pos if prob >= threshold else negative,
        "slices_used": int(used.sum()),
        "driving_slices": [{**rows[i], "in_rule": bool(i in set(idx[top]))} for i in driving],
        "notes": notes,
        "slices": rows,
    }


def series_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per scored series (for CSV output)."""
    rows = []
    for r in results:
        if "error" in r:
            rows.append({"series": r["source"], "error": r["error"]})
            continue
        prob_key = next(k for k in r if k.startswith("prob_"))
        rows.append({"series": r["series"]["source"], "series_instance_uid": r["series"]["series_instance_uid"],
                     "n_slices": r["series"]["n_slices"], "slices_used": r["slices_used"], prob_key: r[prob_key],
                     "prediction": r["prediction"], "rule": r["rule"], "threshold": r["threshold"],
                     "driving_slices": ";".join(f"{d['index']}:{Path(d['file']).name}" for d in r["driving_slices"]),
                     "gaps": len(r["series"]["gaps"]), "notes": " | ".join(r["notes"]), "error": ""})
    return pd.DataFrame(rows)


def predict_series(run_dir: str | Path, series: list[str | Path], window: tuple[float, float] | None = None,
                   device: str = "auto") -> list[dict[str, Any]]:
    """Score several series with one run; a series that fails its checks gets ``{"source", "error"}``, never stops
    the others. A run of the wrong modality fails at once (every series would be refused)."""
    predictor = Predictor(run_dir, device=device)
    if predictor.modality != "ct":
        raise ModalityError(f"{run_dir} reads {predictor.modality}, not CT series; use a run trained on CT slices "
                            "(covidscreen train --data CT_DIR)")
    series_windows(predictor, window)  # a window the run cannot read fails once, not once per series
    out = []
    for item in series:
        try:
            out.append(score_series(predictor, item, window))
        except CovidscreenError as exc:
            out.append({"source": str(item), "error": str(exc)})
    return out
