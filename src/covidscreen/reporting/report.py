"""The HTML report of a run folder (plots embedded as PNG, no external files), written as ``report.html``.

It reads only files (``metrics.json``, ``predictions.csv``, ``split.csv``, ``history.csv``, ``audit.json``, and the
images for thumbnails) so it can be rebuilt at any time. Order, for a clinical reader:

1. *Read this first*: the audit's findings (shortcut risk, leakage, confounding) in plain words;
2. the data (images by site and label, by split);
3. the headline table with 95% confidence intervals, then the operating points chosen on validation;
4. ROC / PR curves with the operating points marked, calibration, confusion matrices;
5. results by site and by view, external validation (the drop from internal to external);
6. example true/false positives/negatives (thumbnails; Grad-CAM heatmaps can be overlaid, see
   :func:`example_images_section`), audit details, training history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..audit.confounding import confounding_warnings
from ..data.decode import read_image
from ..errors import ImageDecodeError
from ..evaluation.breakdown import subgroup_breakdown
from ..inference.run import optional_run
from ..ood import PLAIN_WARNING
from ..runtime import atomic_write_text
from . import plots
from .audit_page import audit_section, findings_html, read_audit
from .evaluation_extras import extra_sections
from .heatmaps import heatmap_summary
from .html import esc, fmt, fmt_ci, img, page, table

METRIC_LABELS = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity", "precision": "PPV (precision)", "npv": "NPV", "f1": "F1", "accuracy": "Accuracy",
}
HEADLINE = ["roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "npv", "f1", "accuracy"]

# A heatmap provider: given an image path, return a heatmap in that image's geometry with values in [0, 1].
HeatmapFn = Callable[[Path], np.ndarray]


def _read_first(metrics: dict, split: pd.DataFrame | None, audit: dict | None) -> list[str]:
    parts = ["<h2>Read this first</h2>",
             "<p>This report describes a research model. It is <b>not</b> a medical device and must not be used to "
             "diagnose or exclude COVID-19 or pneumonia in a patient. The numbers below describe these images only; "
             "every number comes with a 95% confidence interval, and the audit below says why they may not transfer "
             "to another hospital.</p>"]
    if audit is not None:
        parts.append(findings_html(audit))
    elif split is not None:
        warns = confounding_warnings(split)
        parts += [f"<div class='warn'>{esc(w)}</div>" for w in warns]
        parts.append("<p class='small'>No audit.json in this folder: run <code>covidscreen audit DATA_DIR RUN_DIR"
                     "</code> for the leakage and shortcut audit.</p>")
    return parts


def ood_section(run_dir: Path) -> list[str]:
    """What the run's out-of-distribution flag is, in plain words, and the commands around it (run folders only)."""
    run = optional_run(run_dir)
    if run is None:
        return []
    rec = run.ood
    parts = ["<h2>Knowing when not to answer</h2>"]
    if rec is None:
        parts.append("<div class='warn'>This run has no out-of-distribution model: its results cannot say when an "
                     f"image is unlike the training images. Fit one with <code>covidscreen ood fit "
                     f"{esc(run_dir)}</code>.</div>")
        return parts
    parts.append(f"<p>Every result of <code>covidscreen predict</code>, the service and the DICOM node carries an "
                 f"out-of-distribution score ({esc(rec.detector)} on the model's features, fitted on {rec.n_fit} "
                 f"training images) and a flag: an image scoring above {rec.threshold:.4g} is reported as "
                 f"<b>{esc(PLAIN_WARNING)}</b>. The threshold flags {rec.val_flag_rate:.1%} of the {rec.n_val} "
                 f"validation images (target {rec.flag_rate:.0%}). The flag guards against inputs that are not "
                 "frontal chest X-rays (photos, CT slices, rotated images); it does not catch another hospital's "
                 "chest X-rays, on which this model may still be wrong (docs/safety.md).</p>"
                 "<p class='small'>Before use at a site and while in use (docs/safety.md): <code>covidscreen "
                 "predict RUN_DIR FILES --ood-policy abstain</code> withholds the prediction of flagged images; "
                 "<code>covidscreen commission RUN_DIR --data LOCAL_DIR --output DIR</code> is the site's acceptance "
                 "test (go / no-go); <code>covidscreen monitor AUDIT_LOG --baseline RUN_DIR --output DIR</code> "
                 "raises drift alarms; <code>covidscreen ood fit RUN_DIR</code> refits the flag.</p>")
    return parts


def _data_section(split: pd.DataFrame) -> list[str]:
    comp = split.groupby(["site", "label"]).size().unstack(fill_value=0)
    parts = ["<h2>Data: images by site and label</h2>" + comp.to_html()]
    if "split" in split:
        parts.append("<h3>Images by split and label (patient-grouped split)</h3>"
                     + split.groupby(["split", "label"]).size().unstack(fill_value=0).to_html())
    return parts


def skipped_section(run_dir: Path, preds: pd.DataFrame, data_dir: Path | None) -> list[str]:
    """The images a run could not use (``skipped.csv``: where and why), and the evaluated images that are gone from
    the data folder now (so they have no thumbnails or heatmaps below)."""
    skipped_file = run_dir / "skipped.csv"
    skipped = pd.read_csv(skipped_file, keep_default_na=False) if skipped_file.is_file() else pd.DataFrame()
    gone = []
    if data_dir is not None and Path(data_dir).is_dir() and "image" in preds:
        gone = [str(name) for name in preds["image"] if not (Path(data_dir) / str(name)).is_file()]
    if skipped.empty and not gone:
        return []
    parts = ["<h2>Images left out</h2>"]
    if not skipped.empty:
        parts.append(f"<div class='warn'>{len(skipped)} image(s) could not be used (listed in skipped.csv): where "
                     "they were met and why. <i>decode</i>: unreadable, left out of the whole run; <i>evaluation</i>: "
                     "vanished or changed during the run, left out of the metrics; <i>audit</i>: left out of the "
                     "audit.</div>")
        parts.append(skipped.head(50).to_html(index=False, escape=True))
    if gone:
        parts.append(f"<div class='warn'>{len(gone)} evaluated image(s) are no longer in the data folder: they have no "
                     f"thumbnail or heatmap here, e.g. {esc(gone[0])}.</div>")
    return parts


def _summary_section(metrics: dict, block: dict, split_name: str, pos: str | None) -> list[str]:
    parts = []
    boot = block.get("bootstrap", {})
    how = (f"95% CIs: percentile bootstrap over {boot.get('unit', 'patient')}s ({boot.get('n_boot')} replicates, "
           f"{boot.get('n_units')} {boot.get('unit', 'patient')}s, seed {boot.get('seed')})." if boot else
           "No confidence intervals in this metrics file (made by an older version).")
    if pos and "covid_vs_rest" in block:
        cv = block["covid_vs_rest"]
        ci = cv.get("ci", {})
        rows = [{"metric": esc(METRIC_LABELS[k]), "value (95% CI)": fmt_ci(cv.get(k, math.nan), ci.get(k))}
                for k in HEADLINE]
        dl = cv.get("ci_delong", {}).get("roc_auc")
        if dl:
            rows.insert(1, {"metric": "ROC AUC, DeLong CI (images independent)",
                            "value (95% CI)": fmt_ci(cv.get("roc_auc", math.nan), dl)})
        thr_src = metrics.get("threshold_source") or "argmax"
        parts.append(f"<h2>Summary: {esc(pos)} vs rest on the {esc(split_name)} data (n={cv['n']}, "
                     f"{cv['n_positive']} {esc(pos)})</h2>"
                     f"<p>Decisions at threshold {cv['threshold']:.3f} on p({esc(pos)}) ({esc(thr_src)}). "
                     f"{esc(how)}</p>" + table(rows, ["metric", "value (95% CI)"]))
        parts.append(f"<p class='small'>Counts: TP {cv['tp']}, FP {cv['fp']}, TN {cv['tn']}, FN {cv['fn']}. PPV and "
                     "NPV depend on how common the disease is in these data; they will differ where it is rarer.</p>")
    if "per_class" in block:
        rows = []
        for name, m in block["per_class"].items():
            ci = m.get("ci", {})
            rows.append({"class": esc(name), "n": str(m.get("n_positive", "")),
                         **{METRIC_LABELS[k].split(" (")[0]: fmt_ci(m.get(k, math.nan), ci.get(k)) for k in HEADLINE}})
        cols = ["class", "n", *[METRIC_LABELS[k].split(" (")[0] for k in HEADLINE]]
        bci = block.get("ci", {})
        parts.append(f"<h3>Per class, one vs rest ({esc(split_name)})</h3>" + table(rows, cols)
                     + f"<p>Multi-class accuracy {fmt_ci(block.get('accuracy', math.nan), bci.get('accuracy'))}, "
                       f"macro ROC AUC {fmt_ci(block.get('macro_roc_auc', math.nan), bci.get('macro_roc_auc'))}.</p>")
    return parts


def _weakest_text(rec: dict | None) -> str:
    """"specificity 0.39 on nih" for a point's per-site record ('-' without one)."""
    if not rec or not rec.get("weakest_site"):
        return "-"
    f = (rec.get("sites") or {}).get(rec["weakest_site"], {})
    return f"specificity {fmt(f.get('specificity'))} on {esc(rec['weakest_site'])}"


def _site_cell(f: dict) -> str:
    spec = (fmt_ci(f["specificity"], f.get("specificity_ci")) if f.get("specificity") is not None else "-")
    cell = f"spec {spec} (n={f.get('n_negative', 0)})"
    if f.get("n_positive"):
        cell += f"<br>sens {fmt_ci(f.get('sensitivity'), f.get('sensitivity_ci'))} (n={f['n_positive']})"
    return cell


def _points_by_site(metrics: dict, names: list[str]) -> list[str]:
    """Per operating point: each validation site's specificity and sensitivity (Wilson 95%), the weakest named."""
    recs = metrics.get("operating_points_val_sites") or {}
    if not recs:
        return ["<div class='warn'>This run records no per-site validation figures for its operating points (it was "
                "trained before they were stored, or is an ensemble or cross-validation): the validation figures "
                "above are pooled over sites, and how each threshold holds on a single site is unknown. The "
                "results by site below show the test split.</div>"]
    sites = sorted({site for rec in recs.values() for site in (rec.get("sites") or {})})
    rows, notes = [], []
    for name in names:
        rec = recs.get(name) or {}
        row = {"operating point": esc(name), "weakest site": _weakest_text(rec)}
        row.update({esc(site): _site_cell((rec.get("sites") or {}).get(site, {})) for site in sites})
        rows.append(row)
        if rec.get("note"):
            notes.append(f"<div class='warn'>{esc(name)}: {esc(rec['note'])}</div>")
    min_n = next(iter(recs.values())).get("min_site_negatives", 20)
    return (["<h3>Operating points by validation site</h3><p class='small'>Specificity and sensitivity each threshold "
             "reached on each site's validation images, with Wilson 95% intervals and counts. The weakest site is "
             f"the one with the lowest specificity among sites with at least {min_n} non-COVID images: a pooled "
             "figure can hide a hospital where the point calls most normal images positive.</p>"]
            + [table(rows, ["operating point", "weakest site", *[esc(x) for x in sites]])] + notes)


def _points_section(metrics: dict, block: dict, pos: str) -> list[str]:
    at = block.get("at_operating_points", {})
    val = metrics.get("operating_points_val") or {}
    if not at:
        return []
    site_recs = metrics.get("operating_points_val_sites") or {}
    default = metrics.get("default_operating_point") or "youden"
    rows = []
    for name, m in at.items():
        ci = m.get("ci", {})
        v = val.get(name, {})
        rows.append({"operating point": esc(name) + (" (default)" if name == default else ""),
                     "threshold": fmt(m["threshold"]),
                     "val sens / spec": f"{fmt(v.get('sensitivity'))} / {fmt(v.get('specificity'))}",
                     "val weakest site": _weakest_text(site_recs.get(name)),
                     "sensitivity": fmt_ci(m["sensitivity"], ci.get("sensitivity")),
                     "specificity": fmt_ci(m["specificity"], ci.get("specificity")),
                     "PPV": fmt_ci(m["precision"], ci.get("precision")), "NPV": fmt_ci(m["npv"], ci.get("npv")),
                     "TP/FP/TN/FN": f"{m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}"})
    return ["<h2>Operating points (chosen on validation, measured here)</h2>"
            f"<p>Each threshold on p({esc(pos)}) was chosen on the validation split only: <b>youden</b> balances "
            "sensitivity and specificity pooled over sites; <b>sensitivity_*</b> is the screening choice (few missed "
            "cases); <b>specificity_*</b> the confirmation choice (few false alarms); <b>worst_site_specificity_*</b> "
            "reaches that specificity on every validation site with enough images; <b>balanced_youden</b> weighs "
            "each site's non-COVID images equally; <b>worst_group</b> maximises the worst site's (or the COVID "
            f"images') accuracy. The default is <b>{esc(default)}</b> (docs/results.md says why). "
            "<code>covidscreen predict --operating-point NAME</code> uses them.</p>"
            + table(rows, ["operating point", "threshold", "val sens / spec", "val weakest site", "sensitivity",
                           "specificity", "PPV", "NPV", "TP/FP/TN/FN"])] + _points_by_site(metrics, list(at))


def _curves_section(preds: pd.DataFrame, pos: str, points: dict) -> list[str]:
    y = (preds["label"] == pos).to_numpy()
    s = preds[f"prob_{pos}"].to_numpy(dtype=float)
    if not (y.any() and (~y).any()):
        return [f"<p>ROC/PR curves need both {esc(pos)} and other images.</p>"]
    return ["<h2>ROC and precision-recall curves</h2><div class='grid'>"
            + img(plots.roc_plot(y, s, f"ROC: {pos} vs rest", points), "ROC curve")
            + img(plots.pr_plot(y, s, f"PR: {pos} vs rest", points), "precision-recall curve") + "</div>"]


def _calibration_section(metrics: dict, block: dict, pos: str | None) -> list[str]:
    cal = block.get("calibration")
    if not cal:
        return []
    after = metrics.get("calibration_if_temperature_scaled")
    fit = metrics.get("calibration_fit", {})
    rows = []
    for key, label in (("ece_positive", f"ECE, p({pos})"), ("brier_positive", f"Brier, p({pos})"),
                       ("ece_top_label", "ECE, top label"), ("brier_multiclass", "Brier, multi-class"),
                       ("nll", "log loss")):
        if key in cal:
            rows.append({"measure": esc(label), "model": fmt(cal[key]),
                         **({"after temperature scaling": fmt(after.get(key))} if after else {})})
    cols = ["measure", "model"] + (["after temperature scaling"] if after else [])
    temp = metrics.get("temperature")
    note = (f"Temperature scaling (T = {temp:.3f}, fitted on validation) is applied to every probability of this run."
            if temp else f"Temperature scaling was not applied; fitted on validation it would be T = "
            f"{fit['temperature_fitted_on_val']:.3f} (column on the right: its effect here)."
            if fit.get("temperature_fitted_on_val") else "")
    parts = ["<h2>Calibration</h2><p>Does a predicted probability of 0.8 mean 80%? ECE is the average gap between "
             "predicted and observed rates (0 is perfect); Brier is the mean squared error of the probabilities. "
             "Class weights in the loss push probabilities of rare classes up, so raw probabilities are not "
             f"risks. {esc(note)}</p>" + table(rows, cols)]
    curve = cal.get("reliability_positive")
    if curve and curve.get("count"):
        parts.append(img(plots.reliability_plot(curve, f"Reliability: p({pos})",
                                                (after or {}).get("reliability_positive")), "reliability diagram"))
    return parts


def _confusion_section(block: dict, classes: list[str], split_name: str, default: str = "youden") -> list[str]:
    figs = []
    if "confusion_matrix" in block:
        figs.append(img(plots.confusion_plot(block["confusion_matrix"], classes, f"default ({default})"),
                        "confusion matrix"))
    for name, m in block.get("at_operating_points", {}).items():
        if name != default and "confusion_matrix" in m:
            figs.append(img(plots.confusion_plot(m["confusion_matrix"], classes, name), f"confusion {name}"))
    if not figs:
        return []
    return [f"<h2>Confusion matrices ({esc(split_name)})</h2><p class='small'>Rows: true class; columns: decision. "
            "The positive class is decided by its threshold, the other classes by the highest probability.</p>"
            "<div class='grid'>" + "".join(figs) + "</div>"]


FEW = 10  # fewer images than this of one kind: percentile bootstrap intervals are unreliable


def _breakdown_rows(rows: list[dict], by: str, classes: list[str], pos: str | None) -> str:
    out = []
    for r in rows:
        n_pos = r.get("n_positive", 0)
        n_neg = r["n"] - n_pos
        flag = lambda cond: " &dagger;" if cond else ""  # noqa: E731
        row = {by: esc(r[by]), "images": str(r["n"]), "patients": str(r["n_patients"]),
               **{c: str(r.get(f"n_{c}", "")) for c in classes},
               "accuracy": fmt_ci(r.get("accuracy"), r.get("accuracy_ci"))}
        if pos:
            row.update({"sensitivity": fmt_ci(r.get("sensitivity"), r.get("sensitivity_ci"))
                        + flag(0 < n_pos < FEW),
                        "specificity": fmt_ci(r.get("specificity"), r.get("specificity_ci")) + flag(0 < n_neg < FEW),
                        f"AUC within {by}": fmt_ci(r.get("roc_auc"), r.get("roc_auc_ci"))
                        + flag(n_pos and n_neg and min(n_pos, n_neg) < FEW),
                        f"mean p({pos})": fmt(r.get("mean_prob"))})
        out.append(row)
    return table(out)


def _breakdown_section(metrics: dict, preds: pd.DataFrame, classes: list[str], pos: str | None,
                       split_name: str) -> list[str]:
    bd = metrics.get("breakdown")
    if bd is None and "site" in preds:  # older metrics files: counts only

        thr = (metrics.get("operating_points") or {}).get("default")
        bd = {by: subgroup_breakdown(preds, classes, pos, thr, by, n_boot=0) for by in ("site", "view") if by in preds}
    if not bd:
        return []
    parts = [f"<h2>Results by site and by view ({esc(split_name)})</h2><p class='small'>Sensitivity needs "
             f"{esc(pos or 'positive')} images in the group, specificity other images, an AUC both; '-' or n/a where a "
             "group lacks them. A high pooled AUC with near-chance AUCs within sites means the model separates "
             f"sources, not diseases. &dagger;: fewer than {FEW} images of a class in the group; its interval is "
             "unreliable (a bootstrap cannot show the uncertainty of two or three images).</p>"]
    for by, rows in bd.items():
        if rows:
            parts.append(f"<h3>By {esc(by)}</h3>" + _breakdown_rows(rows, by, classes, pos))
    return parts


def _external_section(metrics: dict) -> list[str]:
    pos = metrics.get("positive_class")
    parts = []
    for key, title in (("internal_vs_external", "External validation"),
                       ("holdout_site", "Leave-one-site-out validation")):
        ext = metrics.get(key)
        if not ext:
            continue
        parts.append(f"<h2>{title}</h2><p>{esc(ext.get('description', ''))}</p>")
        for note in ext.get("notes", []):
            parts.append(f"<div class='warn'>{esc(note)}</div>")
        rows = [{"metric": esc(f"{pos} vs rest: {METRIC_LABELS[r['metric']]}" if r["metric"] in METRIC_LABELS
                               else r["metric"]),
                 "internal (test)": fmt_ci(r.get("internal"), r.get("internal_ci")),
                 "external": fmt_ci(r.get("external"), r.get("external_ci")),
                 "change": fmt_ci(r.get("change"), r.get("change_ci"))} for r in ext.get("comparison", [])]
        if rows:
            parts.append(table(rows, ["metric", "internal (test)", "external", "change"])
                         + "<p class='small'>Change = external - internal; its interval is a normal approximation "
                           "from the two bootstrap intervals (independent samples).</p>")
        if ext.get("report"):
            parts.append(f"<p>Full report of the external data: <a href='{esc(ext['report'])}'>"
                         f"{esc(ext['report'])}</a></p>")
    return parts + _near_copy_section(metrics)


def _near_copy_section(metrics: dict) -> list[str]:
    """Test images with a near-copy in the training split, and the metrics without them (``evaluate`` of a run)."""
    nc = metrics.get("near_copies")
    if not nc:
        return []
    pos = metrics.get("positive_class")
    parts = [f"<h2>Test images with a near-copy in training</h2><p>{nc['n_with_copy']} of {nc['n_test']} test "
             f"images have a near-duplicate in the run's training split ({nc['n_pairs']} pair(s); "
             f"{esc(nc.get('method', ''))}).</p>"]
    if nc["n_with_copy"]:
        parts.append("<div class='warn'>The model may have been tested on images it was trained on. The metrics "
                     "without those images are shown beside the metrics of every test image (same threshold).</div>")
    rows = [{"metric": esc(f"{pos} vs rest: {METRIC_LABELS[r['metric']]}" if r["metric"] in METRIC_LABELS
                           else r["metric"]),
             "all test images": fmt_ci(r.get("internal"), r.get("internal_ci")),
             "without near-copies": fmt_ci(r.get("external"), r.get("external_ci")),
             "change": fmt_ci(r.get("change"), None)} for r in nc.get("comparison", [])]
    if rows:
        parts.append(table(rows, ["metric", "all test images", "without near-copies", "change"]))
    return parts


def select_examples(preds: pd.DataFrame, classes: list[str], pos: str | None, threshold: float | None,
                    per_kind: int = 4) -> pd.DataFrame:
    """The most confident true/false positives/negatives for the positive class (or errors, without one)."""
    if pos is None or f"prob_{pos}" not in preds:
        probs = preds[[f"prob_{c}" for c in classes]].to_numpy(float)
        p = preds.assign(pred=[classes[i] for i in probs.argmax(1)], prob=probs.max(1))
        wrong = p[p["pred"] != p["label"]].sort_values("prob", ascending=False).head(2 * per_kind)
        right = p[p["pred"] == p["label"]].sort_values("prob", ascending=False).head(2 * per_kind)
        return pd.concat([right.assign(kind="correct"), wrong.assign(kind="wrong")], ignore_index=True)
    t = 0.5 if threshold is None else threshold
    y = (preds["label"] == pos).to_numpy()
    s = preds[f"prob_{pos}"].to_numpy(float)
    kinds = {"true positive": (y & (s >= t), False), "false positive": (~y & (s >= t), False),
             "false negative": (y & (s < t), True), "true negative": (~y & (s < t), True)}
    out = []
    for kind, (mask, ascending) in kinds.items():
        # the most confident of each kind: a false positive with p=0.99 teaches more than one with p=0.51
        sub = preds[mask].assign(prob=s[mask]).sort_values("prob", ascending=ascending).head(per_kind)
        out.append(sub.assign(kind=kind))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def example_images_section(examples: pd.DataFrame, data_dir: str | Path | None, pos: str | None,
                           heatmap_fn: HeatmapFn | None = None) -> list[str]:
    """Thumbnails of example decisions, with heatmaps when given.

    Args:
        examples: rows of :func:`select_examples` (``image``, ``label``, ``site``, ``prob``, ``kind``).
        data_dir: folder the ``image`` paths are relative to (None or missing files: a note instead of pictures).
        pos: the positive class (captions).
        heatmap_fn: ``heatmap_fn(path) -> array`` in the image's own geometry, values in [0, 1] (e.g. Grad-CAM for
            the positive class); overlaid on each thumbnail. None: plain thumbnails.
    """
    if examples is None or examples.empty:
        return []
    title = "Example decisions" + (" with heatmaps" if heatmap_fn else "")
    parts = [f"<h2>{title}</h2><p class='small'>The most confident cases of each kind at the default operating "
             "point. Look for what errors have in common (site, view, markers, devices).</p>"]
    if data_dir is None or not Path(data_dir).is_dir():
        return parts + [f"<p class='small'>Images not available (data folder {esc(data_dir)} not found).</p>"]
    for kind, g in examples.groupby("kind", sort=False):
        figs = []
        for _, r in g.iterrows():
            path = Path(data_dir) / str(r["image"])
            try:
                image = read_image(path)
            except ImageDecodeError:
                continue
            heat = heatmap_fn(path) if heatmap_fn else None
            caption = (f"{esc(r['label'])} &middot; {esc(r.get('site', ''))}<br>"
                       + (f"p({esc(pos)}) = {r['prob']:.3f}" if pos else f"p = {r['prob']:.3f}"))
            figs.append(f"<figure>{img(plots.thumbnail(image, heat), str(r['image']))}"
                        f"<figcaption>{caption}</figcaption></figure>")
        if figs:
            parts.append(f"<h3>{esc(kind)} ({len(figs)})</h3><div class='grid'>" + "".join(figs) + "</div>")
    return parts


def _data_dir_of(run_dir: Path, metrics: dict) -> Path | None:
    for cand in (metrics.get("data_dir"), metrics.get("data")):
        if cand:
            return Path(cand)
    run = optional_run(run_dir)
    return Path(run.data_dir) if run is not None and run.data_dir else None


def write_report(run_dir: str | Path, metrics_file: str = "metrics.json", predictions_file: str = "predictions.csv",
                 split_name: str = "test", out_name: str = "report.html", title: str | None = None,
                 heatmap_fn: HeatmapFn | None = None) -> Path:
    """Write the HTML report of a run (or of an evaluation folder with the same files).

    Args:
        run_dir: folder with ``metrics.json`` and ``predictions.csv`` (and optionally ``split.csv``,
            ``history.csv``, ``audit.json``).
        split_name: the block of ``metrics.json`` to report (``test``, ``external``, ...).
        heatmap_fn: optional heatmap provider for the example images (see :func:`example_images_section`).
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / metrics_file).read_text())
    preds = pd.read_csv(run_dir / predictions_file, keep_default_na=False)
    classes = metrics["classes"]
    pos = metrics.get("positive_class")
    points = metrics.get("operating_points") or {}
    audit = read_audit(run_dir)
    split_file = run_dir / "split.csv"
    split = pd.read_csv(split_file, keep_default_na=False) if split_file.is_file() else None

    parts = [f"<h1>{esc(title or 'covidscreen run report')}</h1>", f"<p class='small'>{esc(run_dir.resolve())}</p>"]
    parts += _read_first(metrics, split, audit)
    parts += ood_section(run_dir)
    if split is not None:
        parts += _data_section(split)
    parts += skipped_section(run_dir, preds, _data_dir_of(run_dir, metrics))
    block = metrics.get(split_name, metrics)
    sub = preds[preds["split"] == split_name] if "split" in preds else preds
    for c in classes:
        sub = sub.assign(**{f"prob_{c}": pd.to_numeric(sub[f"prob_{c}"], errors="coerce")})
    parts += _summary_section(metrics, block, split_name, pos)
    if pos:
        parts += _points_section(metrics, block, pos)
        parts += _curves_section(sub, pos, points)
    parts += _calibration_section(metrics, block, pos)
    parts += _confusion_section(block, classes, split_name, metrics.get("default_operating_point") or "youden")
    parts += _breakdown_section(metrics, sub, classes, pos, split_name)
    parts += _external_section(metrics)
    parts += extra_sections(run_dir)  # robustness, human readers: when evaluate wrote them
    examples = select_examples(sub, classes, pos, points.get("default"))
    parts += example_images_section(examples, _data_dir_of(run_dir, metrics), pos, heatmap_fn)
    if audit is not None:
        parts.append(audit_section(audit))
    hist = run_dir / "history.csv"
    if hist.is_file():
        h = pd.read_csv(hist)
        if len(h):
            parts.append("<h2>Training history</h2>" + img(plots.history_plot(h), "history")
                         + h.to_html(index=False, float_format=lambda v: f"{v:.4f}"))
    # --- explanations (covidscreen.explain): Grad-CAM audit of the test split when there is a checkpoint ---
    if (run_dir / "model.safetensors").is_file():
        try:
            parts.append(heatmap_summary(run_dir))
        except Exception as exc:  # the report must render even when the explanations fail
            parts.append(f"<h2>Explanations</h2><div class='warn'>Grad-CAM audit failed: {esc(str(exc))}</div>")
    # --- end explanations ---
    out = run_dir / out_name
    atomic_write_text(out, page("covidscreen report", parts))
    return out


__all__ = ["write_report", "confounding_warnings", "example_images_section", "select_examples"]
