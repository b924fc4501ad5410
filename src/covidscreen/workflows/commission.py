"""Site commissioning: an acceptance test of a run on a labelled local sample, with a go / no-go verdict.

``covidscreen commission RUN_DIR --data LOCAL_DIR --output DIR``:

1. Every image of the local sample is scored by the run's Predictor (probability and out-of-distribution score);
   unreadable files are counted (``n_skipped``), never fatal. COVID (the run's positive class) is positive, every
   other label negative: a sample of normals alone is the common case at a new site.
2. The sample is split in two halves by patient (``patient_id``; an image without one is its own patient),
   stratified by label (scikit-learn ``StratifiedGroupKFold``, seeded). The local operating point is chosen on the
   first half: the threshold at the planned specificity there (:func:`~covidscreen.evaluation.acceptance.
   planned_rate`: the target plus the margin an exact interval needs). Specificity (and sensitivity where COVID
   images exist) are estimated on the second half only, images the threshold was not chosen on, with exact
   (Clopper-Pearson) intervals; the AUC (both classes) on the whole sample, with a patient-level bootstrap interval.
3. Verdict (:mod:`covidscreen.evaluation.acceptance`): ``go`` when the lower bound of every targeted figure meets
   its target, ``no-go`` when an upper bound misses it, ``insufficient-data`` otherwise (too few images to decide).
4. ``DIR/commission.json``, ``DIR/commission.html`` (verdict first; OOD histogram local vs validation) and
   ``DIR/commission_scores.csv`` (the baseline ``covidscreen monitor`` can compare production with). On ``go`` the
   threshold is stored in the run as the operating point ``NAME`` with the commissioning record (data fingerprint,
   date, figures), which ``serve``/``dicom-node --require-commissioning NAME`` check before they start.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from ..config import DEFAULT_N_BOOT
from ..data.cache import ImageCache
from ..data.locate import resolve_data_dir
from ..data.table import load_table
from ..errors import ConfigError
from ..evaluation import acceptance
from ..evaluation.bootstrap import binary_ci
from ..inference.predictor import Predictor
from ..inference.run import load_run, update_record
from ..ood import attach_ood
from ..reporting import plots
from ..reporting.html import esc, fmt, img, page
from ..runtime import atomic_write_csv, atomic_write_text

MIN_PER_HALF = 1  # below this a half cannot choose or estimate anything: insufficient-data


def data_fingerprint(paths: list[str], labels: list[str]) -> str:
    """sha256 over the sample's files (content) and labels, in sorted order."""
    digest = hashlib.sha256()
    for p, lab in sorted(zip(paths, labels, strict=True)):
        h = hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else "missing"
        digest.update(f"{Path(p).name}\t{lab}\t{h}\n".encode())
    return digest.hexdigest()


def _halves(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:

    if len(np.unique(groups)) < 2:
        return None
    strat = y.astype(int) if len(np.unique(y)) > 1 and min(np.bincount(y.astype(int))) >= 2 else np.zeros(len(y))
    choose, estimate = next(StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(
        np.zeros(len(y)), strat, groups))
    return choose, estimate


def commission(run_dir: str | Path, data: str | Path, output: str | Path, target_specificity: float = 0.90,
               target_sensitivity: float = 0.90, confidence: float = 0.95, name: str = "site", seed: int = 0,
               device: str = "auto", n_boot: int = DEFAULT_N_BOOT, progress: bool = True) -> dict[str, Any]:
    """Run the acceptance test; returns the ``commission.json`` record (see the module docstring).

    Raises:
        ConfigError: a target or confidence out of range, a bad name, a run without a positive class.
        DataError: the local folder is missing or holds no labelled image.
    """
    for key, v in (("--target-specificity", target_specificity), ("--target-sensitivity", target_sensitivity),
                   ("--confidence", confidence)):
        if not 0.5 <= v < 1:
            raise ConfigError(f"{key} {v} is invalid: expected a value in [0.5, 1)")
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or name == "default":
        raise ConfigError(f"--name {name!r} is invalid: use letters, digits, '-', '_' or '.', not 'default'")
    run = load_run(run_dir)
    if run.positive_index is None:
        raise ConfigError(f"{run.path} has no positive class; commissioning tests the {run.positive_class}-vs-rest "
                          "decision")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = load_table(resolve_data_dir(data))
    n_listed = len(table) + int(table.attrs.get("missing", 0))
    predictor = Predictor(run, device=device)
    ood = attach_ood(predictor)
    cache = ImageCache(table["path"].tolist(), predictor.size, progress=progress, preprocess=predictor.preprocess,
                       segmenter=predictor.segmenter)
    skipped = n_listed - int(cache.ok.sum())
    table = table[cache.ok].reset_index(drop=True)
    rows = cache.rows(table["path"].tolist()) if len(table) else np.zeros(0, int)
    probs, scores = [], []
    for i in range(0, len(rows), 64):
        p, s = predictor.score_arrays(np.asarray(cache.images[rows[i:i + 64]]))
        probs.append(p[:, run.positive_index])
        scores.append(s if s is not None else np.full(len(p), np.nan))
    prob = np.concatenate(probs) if probs else np.zeros(0)
    ood_score = np.concatenate(scores) if scores else np.zeros(0)
    y = (table["label"] == run.positive_class).to_numpy()
    groups = table["group"].to_numpy() if len(table) else np.zeros(0, str)

    record: dict[str, Any] = {
        "run": str(run.path.resolve()), "model_id": run.model_id, "weights_sha256": run.weights_sha256,
        "name": name, "data": str(Path(table.attrs.get("root", data))), "created": datetime.now().isoformat(
            timespec="seconds"), "n_images": int(len(table)), "n_skipped": int(skipped),
        "n_positive": int(y.sum()), "n_negative": int((~y).sum()), "positive_class": run.positive_class,
        "target_specificity": target_specificity, "target_sensitivity": target_sensitivity if y.any() else None,
        "confidence": confidence, "ood_flag_rate": float(ood.flags(ood_score).mean()) if ood and len(table) else None,
        "ood_detector": ood.name if ood else None,
        "split": "two halves by patient, stratified by label (StratifiedGroupKFold, seed "
                 f"{seed}): threshold chosen on one, figures estimated on the other",
        "interval": f"exact (Clopper-Pearson) binomial, {confidence:.0%}",
        "operating_point": None, "specificity": None, "sensitivity": None, "auc": None,
        "images_needed": {"negative": None, "positive": None},
        "data_fingerprint": data_fingerprint(table["path"].tolist(), table["label"].tolist()) if len(table) else None,
    }
    halves = _halves(y, groups, seed) if len(table) else None
    reason = None
    if not len(table):
        reason = f"none of the {n_listed} local image(s) could be read"
    elif not (~y).any():
        reason = f"the sample holds no non-{run.positive_class} image, so specificity cannot be estimated"
    elif halves is None:
        reason = "the sample holds a single patient: it cannot be split into a part that chooses the threshold and " \
                 "a part that tests it"
    else:
        choose, estimate = halves
        if (~y[choose]).sum() < MIN_PER_HALF or (~y[estimate]).sum() < MIN_PER_HALF:
            reason = "too few patients with non-COVID images to choose the threshold on one part and test it on the " \
                     "other"
        else:
            planned = acceptance.planned_rate(target_specificity, int((~y[estimate]).sum()), confidence)
            thr = acceptance.threshold_at_rate(prob[choose][~y[choose]], planned)
            record["operating_point"] = thr
            record["planned_specificity"] = planned
            called = prob >= thr
            neg, pos = estimate[~y[estimate]], estimate[y[estimate]]
            record["specificity"] = acceptance.figure(int((~called[neg]).sum()), len(neg), confidence)
            if y.any():
                record["sensitivity"] = acceptance.figure(int(called[pos].sum()), len(pos), confidence) \
                    if len(pos) else {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
            record["images_needed"] = {
                "negative": acceptance.images_needed(record["specificity"]["estimate"], target_specificity,
                                                     confidence),
                "positive": acceptance.images_needed(record["sensitivity"]["estimate"], target_sensitivity,
                                                     confidence) if record["sensitivity"] else None}
    if y.any() and (~y).any():

        ci = binary_ci(y, prob >= 0.5, prob, groups, n_boot=n_boot, seed=seed, level=confidence)
        record["auc"] = {"estimate": float(roc_auc_score(y, prob)), "ci_low": float(ci["roc_auc"][0]),
                         "ci_high": float(ci["roc_auc"][1]), "n": int(len(y))}
    verdicts = {"specificity": acceptance.figure_verdict(record["specificity"], target_specificity)}
    if record["sensitivity"] is not None:
        verdicts["sensitivity"] = acceptance.figure_verdict(record["sensitivity"], target_sensitivity)
    verdict = acceptance.INSUFFICIENT if reason else acceptance.overall_verdict(list(verdicts.values()))
    record["figure_verdicts"] = verdicts
    record["verdict"] = verdict
    record["reason"] = reason or _reason(record, verdicts)
    scores_table = table[["image", "label"]].assign(path=table["path"], positive=y, prob_positive=prob,
                                                    ood_score=ood_score)
    if halves is not None:
        part = np.full(len(table), "", object)
        part[halves[0]], part[halves[1]] = "choose", "estimate"
        scores_table["part"] = part
    atomic_write_csv(out / "commission_scores.csv", scores_table)
    atomic_write_text(out / "commission.json", json.dumps(record, indent=2, allow_nan=True))
    atomic_write_text(out / "commission.html", _html(record, ood_score, ood))
    if verdict == acceptance.GO:
        _store(run.path, name, record)
    return record


def _fig_text(f: dict) -> str:
    return f"{f['estimate']:.3f} ({f['ci_low']:.3f} to {f['ci_high']:.3f}, n={f['n']})"


def _reason(record: dict, verdicts: dict[str, str]) -> str:
    parts = []
    for key, v in verdicts.items():
        f, target = record[key], record[f"target_{key}"]
        if v == acceptance.NO_GO:
            parts.append(f"{key} {_fig_text(f)} is below the target {target:.2f} even at its upper bound")
        elif v == acceptance.INSUFFICIENT:
            parts.append(f"the {key} interval {f['ci_low']:.3f} to {f['ci_high']:.3f} (n={f['n']}) straddles the "
                         f"target {target:.2f}: more local images are needed to decide")
        else:
            parts.append(f"{key} is at least {f['ci_low']:.3f} (lower bound), meeting the target {target:.2f}")
    return "; ".join(parts).capitalize() + "."


def _store(run_dir: Path, name: str, record: dict) -> None:
    """On ``go``: the threshold as operating point ``name`` and the commissioning record, in the run's sidecar."""
    figures = {"threshold": record["operating_point"], "specificity": record["specificity"]["estimate"],
               "sensitivity": (record["sensitivity"] or {}).get("estimate", math.nan)}
    keep = ("verdict", "reason", "data", "data_fingerprint", "created", "n_images", "n_skipped", "operating_point",
            "specificity", "sensitivity", "auc", "ood_flag_rate", "target_specificity", "target_sensitivity",
            "confidence")
    update_record(run_dir, merge={"operating_points": {name: record["operating_point"]},
                                  "operating_point_figures": {name: figures},
                                  "commissioning": {name: {k: record[k] for k in keep}}})


def _html(record: dict, ood_score: np.ndarray, ood: Any) -> str:
    colour = {"go": "#1b7f3b", "no-go": "#b00020", "insufficient-data": "#8a6d00"}[record["verdict"]]
    body = [f"<h1>Site commissioning: <span style='color:{colour}'>{esc(record['verdict'].upper())}</span></h1>",
            f"<p><b>{esc(record['reason'])}</b></p>",
            f"<p class='small'>Run {esc(record['run'])} ({esc(record['model_id'])}); local sample {esc(record['data'])}"
            f" ({record['n_images']} images scored, {record['n_skipped']} unreadable and skipped; "
            f"{record['n_negative']} non-{esc(record['positive_class'])}, {record['n_positive']} "
            f"{esc(record['positive_class'])}); {esc(record['created'])}.</p>"]
    rows = []
    for key in ("specificity", "sensitivity", "auc"):
        f = record.get(key)
        if f:
            target = record.get(f"target_{key}")
            rows.append(f"<tr><td>{key}</td><td>{fmt(f['estimate'])}</td><td>{fmt(f['ci_low'])} to "
                        f"{fmt(f['ci_high'])}</td><td>{f['n']}</td><td>{fmt(target) if target else ''}</td>"
                        f"<td>{esc(record['figure_verdicts'].get(key, ''))}</td></tr>")
    if rows:
        body.append("<h2>Figures</h2><table><tr><th>figure</th><th>estimate</th><th>"
                    f"{record['confidence']:.0%} interval</th><th>n</th><th>target</th><th>verdict</th></tr>"
                    + "".join(rows) + "</table>")
    thr = record["operating_point"]
    body.append(f"<p>Operating point (threshold on p({esc(record['positive_class'])})): "
                f"{fmt(thr, 4) if thr is not None else 'none'}; {esc(record['split'])}. Intervals: "
                f"{esc(record['interval'])}; AUC: patient-level bootstrap on the whole sample.</p>")
    need = record["images_needed"]
    body.append("<p>Images needed to show the targets at this confidence if the estimates held: "
                f"non-COVID {need['negative'] if need['negative'] is not None else 'not reachable'}"
                + (f", COVID {need['positive'] if need['positive'] is not None else 'not reachable'}"
                   if record["sensitivity"] else "") + ".</p>")
    body.append("<h2>Out-of-distribution scores: local sample vs validation</h2>")
    if ood is None:
        body.append("<div class='warn'>The run has no out-of-distribution model (covidscreen ood fit RUN_DIR).</div>")
    elif record["ood_flag_rate"] is None:
        body.append("<p>No local image could be scored.</p>")
    else:
        body.append(f"<p>{record['ood_flag_rate']:.1%} of the local images are flagged as unlike the images this "
                    f"model was validated on (validation: {ood.flag_rate:.0%} by construction). A local distribution "
                    "far to the right of validation's means the site's images differ from the training sources.</p>")
        body.append(img(plots.score_histogram({"local sample": ood_score, "validation": ood.val_scores},
                                              ood.threshold, "OOD score"), "OOD score histogram"))
    return page(f"Commissioning {record['name']}", body)


def require_commissioning(run_dir: str | Path, name: str) -> str:
    """Refuse (ConfigError) unless the run holds a ``go`` commissioning record ``name``; returns a one-line summary.

    ``serve`` and ``dicom-node --require-commissioning NAME`` call this before they start."""
    run = load_run(run_dir)
    rec = run.commissioning.get(name)
    if rec is None or rec.verdict != acceptance.GO:
        have = ", ".join(f"{n} ({c.verdict})" for n, c in run.commissioning.items()) or "none"
        raise ConfigError(f"{run.path} has no 'go' commissioning record named {name!r} (records: {have}); refusing "
                          f"to start. Commission the site first: covidscreen commission {run.path} --data LOCAL_DIR "
                          f"--output DIR --name {name}")
    return (f"commissioning '{name}': go on {rec.created} (threshold {rec.operating_point:.4g}, data "
            f"{str(rec.data_fingerprint)[:12]})")


@dataclass(frozen=True)
class CommissionOutcome:
    """What ``covidscreen commission`` decided: the ``commission.json`` record, written into ``output``."""

    run_dir: Path
    output: Path
    name: str
    record: dict[str, Any]

    def lines(self) -> list[str]:
        """What the command prints: the verdict and its reason, the counts, and on ``go`` how to use the point."""
        rec = self.record
        lines = [f"verdict: {rec['verdict']} - {rec['reason']}",
                 f"{rec['n_images']} image(s) scored, {rec['n_skipped']} skipped; {self.output / 'commission.html'}"]
        if rec["verdict"] == acceptance.GO:
            lines.append(f"stored as operating point '{self.name}': covidscreen predict {self.run_dir} FILES "
                         f"--operating-point {self.name}")
        return lines


def commission_job(run_dir: str | Path, data: str | Path, output: str | Path, target_specificity: float = 0.90,
                   target_sensitivity: float = 0.90, confidence: float = 0.95, name: str = "site", seed: int = 0,
                   device: str = "auto") -> CommissionOutcome:
    """``covidscreen commission``: the acceptance test (:func:`commission`; its errors)."""
    record = commission(run_dir, data, output, target_specificity=target_specificity,
                        target_sensitivity=target_sensitivity, confidence=confidence, name=name, seed=seed,
                        device=device)
    return CommissionOutcome(Path(run_dir), Path(output), name, record)

