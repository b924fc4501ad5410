"""Drift monitoring: ``covidscreen monitor SOURCE --baseline RUN_DIR_or_COMMISSION_DIR --output DIR``.

SOURCE is an audit-log database (a URL, a SQLite file, or a run folder holding ``audit_log.sqlite``) or a predictions
CSV written by ``covidscreen predict`` (rows in time order). The stream is cut into consecutive windows of
``window`` predictions; each window is compared with the baseline by two-sample tests (scipy.stats), as CheXstray
does:

- Kolmogorov-Smirnov on the out-of-distribution scores and on the positive class's probability, against the
  baseline: a run's validation split (its OOD model's validation scores, its ``predictions.csv``), or a commissioning
  folder's local sample (``commission_scores.csv``);
- chi-squared on each categorical acquisition fact the audit log records (manufacturer, model, photometric
  interpretation, pixel spacing, image size, view position, file type) against the stream's first window (the
  baseline splits carry no DICOM headers).

False alarms: a window's p-value is the smallest of its tests' times their number (Bonferroni within the window);
window k alarms when that p-value is at most ``alpha * 6 / (pi^2 k^2)`` (alpha spending: the spent levels sum to
``alpha`` over an unbounded number of windows), so the chance of any false alarm over the whole stream is at most
``alpha`` when nothing drifts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..auditlog import AuditLog
from ..errors import ConfigError, DataError
from ..inference.run import Run, load_run
from ..ood import load_ood
from ..reporting import plots
from ..runtime import atomic_write_bytes, atomic_write_text

MIN_WINDOW = 20
FACTS = ("manufacturer", "manufacturer_model", "photometric", "pixel_spacing", "image_size", "view_position",
         "file_type")


def alpha_spent(alpha: float, k: int) -> float:
    """The level of window ``k`` (1-based): ``alpha * 6 / (pi^2 k^2)``, summing to ``alpha`` over all windows."""
    return alpha * 6.0 / (math.pi ** 2 * k * k)


def _baseline(path: Path) -> tuple[Run, dict[str, np.ndarray], str]:
    """The run, baseline samples (``ood_score``, ``prob``) and a description."""
    if (path / "commission.json").is_file():
        rec = json.loads((path / "commission.json").read_text())
        run = load_run(rec["run"])
        scores = pd.read_csv(path / "commission_scores.csv")
        base = {"prob": scores["prob_positive"].to_numpy(float), "ood_score": scores["ood_score"].to_numpy(float)}
        return run, base, f"commissioning sample {path} ({len(scores)} local images)"
    run = load_run(path)
    pos = run.positive_class
    base: dict[str, np.ndarray] = {}
    preds = path / "predictions.csv"
    if preds.is_file() and pos:
        p = pd.read_csv(preds)
        base["prob"] = p.loc[p["split"] == "val", f"prob_{pos}"].to_numpy(float)
    ood = load_ood(run)
    if ood is not None:
        base["ood_score"] = np.asarray(ood.val_scores, float)
    if not base:
        raise DataError(f"{path} holds no validation predictions and no OOD model: nothing to compare with; give a "
                        "run folder written by covidscreen train (or fit its OOD model: covidscreen ood fit)")
    return run, base, f"validation split of {run.path}"


def _stream(source: str, run: Run) -> pd.DataFrame:
    """The stream as a table in time order: ``prob``, ``ood_score`` and the fact columns (missing: NaN/None)."""
    pos = run.positive_class
    path = Path(source)
    if path.suffix.lower() == ".csv" and path.is_file():
        df = pd.read_csv(path, keep_default_na=False)
        need = [f"prob_{c}" for c in run.classes]
        if not set(need) <= set(df.columns):
            raise DataError(f"{path} has columns {', '.join(df.columns)}; a predictions CSV of this baseline's model "
                            f"has {', '.join(need)}: the baseline is from another model")
        if "error" in df:
            df = df[df["error"].astype(str) == ""]
        out = pd.DataFrame({"prob": pd.to_numeric(df[f"prob_{pos}"], errors="coerce")})
        out["ood_score"] = pd.to_numeric(df["ood_score"], errors="coerce") if "ood_score" in df else np.nan
        return out.dropna(subset=["prob"]).reset_index(drop=True)
    rows = []
    with AuditLog(source) as log:
        for rec in log.iter_records():
            rows.append({"weights": rec.weights_sha256, "prob": rec.probabilities.get(pos, math.nan),
                         "ood_score": rec.ood_score if rec.ood_score is not None else math.nan,
                         "manufacturer": rec.manufacturer, "manufacturer_model": rec.manufacturer_model,
                         "photometric": rec.photometric, "pixel_spacing": rec.pixel_spacing,
                         "image_size": f"{rec.image_rows}x{rec.image_columns}" if rec.image_rows else None,
                         "view_position": rec.view_position, "file_type": rec.file_type})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    want = _weights_id(run)
    other = sorted(set(df["weights"]) - {want})
    if other:
        raise DataError(f"the audit log holds predictions of other weights ({other[0][:12]}...) than the baseline's "
                        f"model ({want[:12]}...): the baseline is from another model; monitor each model against its "
                        "own baseline")
    return df.drop(columns=["weights"])


def _weights_id(run: Run) -> str:
    """The weights digest the service and the DICOM node log (an ensemble: sha256 of its members' digests)."""

    if run.weights_sha256:
        return str(run.weights_sha256)
    members = [m.weights_sha256 or "" for m in run.ensemble_members]
    return hashlib.sha256("".join(members).encode()).hexdigest()


def _ks(a: np.ndarray, b: np.ndarray) -> dict | None:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 5 or len(b) < 5:
        return None
    r = stats.ks_2samp(a, b)
    return {"statistic": float(r.statistic), "p_value": float(r.pvalue)}


def _chi2(ref: pd.Series, win: pd.Series) -> dict | None:
    ref, win = ref.fillna("unknown").astype(str), win.fillna("unknown").astype(str)
    cats = sorted(set(ref) | set(win))
    if len(cats) < 2:
        return None
    table = np.array([[int((ref == c).sum()) for c in cats], [int((win == c).sum()) for c in cats]])
    r = stats.chi2_contingency(table)
    return {"statistic": float(r.statistic), "p_value": float(r.pvalue)}


def monitor(source: str, baseline: str | Path, output: str | Path, window: int = 50, alpha: float = 0.05
            ) -> dict[str, Any]:
    """Test each window of the stream against the baseline; write ``drift.json`` and ``drift.png``.

    Raises:
        ConfigError: a window below :data:`MIN_WINDOW` or a bad alpha.
        DataError: a stream shorter than one window, or predictions of another model than the baseline's.
    """
    if window < MIN_WINDOW:
        raise ConfigError(f"--window {window} is smaller than the minimum of {MIN_WINDOW} predictions (the tests "
                          "have no power on fewer)")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha {alpha} is invalid: expected a level between 0 and 1")
    run, base, described = _baseline(Path(baseline))
    df = _stream(source, run)
    if len(df) < window:
        raise DataError(f"{source} holds {len(df)} prediction(s), fewer than one window of {window}; lower --window "
                        f"(at least {MIN_WINDOW}) or wait for more predictions")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    windows = []
    ref = df.iloc[:window]
    for k, start in enumerate(range(0, len(df) - window + 1, window), start=1):
        w = df.iloc[start:start + window]
        tests: dict[str, dict] = {}
        for name, col in (("ks_ood_score", "ood_score"), ("ks_probability", "prob")):
            if col in base and col in w:
                t = _ks(w[col].to_numpy(float), base[col])
                if t:
                    tests[name] = t
        if k > 1:
            for fact in FACTS:
                if fact in w:
                    t = _chi2(ref[fact], w[fact])
                    if t:
                        tests[f"chi2_{fact}"] = t
        p = min(1.0, min((t["p_value"] for t in tests.values()), default=1.0) * max(1, len(tests)))
        level = alpha_spent(alpha, k)
        main = tests.get("ks_ood_score") or tests.get("ks_probability") or {"statistic": math.nan}
        windows.append({"start": int(start), "end": int(start + window), "statistic": main["statistic"],
                        "p_value": p, "alarm": bool(p <= level), "level": level, "tests": tests})
    first = next((i for i, w in enumerate(windows) if w["alarm"]), None)
    record = {"source": str(source), "baseline": described, "model_id": run.model_id, "window": window,
              "alpha": alpha, "statistic": "Kolmogorov-Smirnov D of the OOD scores (of the probability when the "
              "stream has no OOD scores) against the baseline",
              "false_alarm_control": "Bonferroni within a window; alpha spending alpha*6/(pi^2 k^2) over windows "
              "(family-wise error over the whole stream <= alpha)",
              "n_predictions": int(len(df)), "n_windows": len(windows), "n_alarms": sum(w["alarm"] for w in windows),
              "first_alarm_window": first, "windows": windows}
    atomic_write_text(out / "drift.json", json.dumps(record, indent=2, allow_nan=True))
    png = plots.statistic_plot(np.array([w["end"] for w in windows]), np.array([w["statistic"] for w in windows]),
                               np.array([w["alarm"] for w in windows]), None,
                               f"drift per window of {window} (alarms: {record['n_alarms']})", "KS statistic D")
    atomic_write_bytes(out / "drift.png", png)
    return record


@dataclass(frozen=True)
class MonitorOutcome:
    """What ``covidscreen monitor`` found: the ``drift.json`` record, written into ``output``."""

    output: Path
    record: dict[str, Any]

    def summary(self) -> str:
        """The line the command prints: windows, alarms and where the first one is."""
        rec = self.record
        first = rec["first_alarm_window"]
        where = (f", first in window {first + 1} (predictions {rec['windows'][first]['start']}-"
                 f"{rec['windows'][first]['end']})" if first is not None else "")
        return (f"{rec['n_windows']} window(s) of {rec['window']}: {rec['n_alarms']} alarm(s){where}; "
                f"{self.output / 'drift.json'}")


def monitor_job(source: str, baseline: str | Path, output: str | Path, window: int = 50, alpha: float = 0.05
                ) -> MonitorOutcome:
    """``covidscreen monitor``: the drift tests of :func:`monitor` (its errors)."""
    return MonitorOutcome(Path(output), monitor(source, baseline, output, window=window, alpha=alpha))

