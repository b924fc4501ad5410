"""How each operating point holds at a hospital the model has not seen: leave-one-site-out on the shared data.

For each held-out case, one model is trained (``covidscreen train``'s ``fit``) on the data without the held-out
images; every operating-point rule (``evaluation/thresholds.py``) is then applied to that run's *validation*
predictions (the rules are post-hoc, so one training serves every rule) and measured on

- the held-out images: specificity (COVID vs rest) with a Wilson 95% interval (the held-out cases hold no COVID);
- the COVID images of the run's internal test split: sensitivity with a Wilson 95% interval.

Cases: ``nih`` (every NIH image left out: the closest the shared data has to a new adult hospital) and
``cohen_noncovid`` (cohen's pneumonia and normal images left out). The held-out folders are metadata-only
(``metadata.csv`` with absolute image paths, under ``--output``); no image is copied.

This is a regression benchmark, not a test: run it before and after a change to training or preprocessing and
compare the printed figures (docs/results.md keeps the last ones with their commit). The default budget is the
quickstart's configuration; ``--epochs`` / ``--samples-per-epoch`` give a smaller one (the same for every rule).
A case whose run folder already holds a trained model and its held-out evaluation is not trained again.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sites.py --output runs/bench_sites
    PYTHONPATH=src .venv/bin/python benchmarks/bench_sites.py --epochs 2 --samples-per-epoch 1500 -o runs/loso
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import binomtest

from covidscreen.config import TrainConfig
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table
from covidscreen.evaluation.thresholds import DEFAULT_RULE, choose_points
from covidscreen.workflows.evaluate import evaluate_table
from covidscreen.workflows.fit import fit

CASES = {
    "nih": ("every NIH image", lambda t: t["site"] == "nih"),
    "cohen_noncovid": ("cohen's non-COVID images", lambda t: (t["site"] == "cohen") & (t["label"] != "covid")),
}


def write_case_folders(data_dir: Path, out: Path, case: str) -> tuple[Path, Path]:
    """``(train folder, held-out folder)``: metadata.csv files with absolute image paths, split by the case's mask."""
    table = pd.read_csv(data_dir / "metadata.csv", keep_default_na=False)
    table["image"] = [str((data_dir / p).resolve()) for p in table["image"]]
    if "lung_mask" in table:
        table["lung_mask"] = [str((data_dir / p).resolve()) if p else "" for p in table["lung_mask"]]
    held = CASES[case][1](table)
    folders = out / "data" / f"no_{case}", out / "data" / case
    for folder, mask in zip(folders, (~held, held), strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        table[mask].to_csv(folder / "metadata.csv", index=False)
    return folders


def train_case(case: str, cfg: TrainConfig, data_dir: Path, out: Path) -> Path:
    """Train (unless done) and evaluate on the held-out images; returns the run folder."""
    train_dir, held_dir = write_case_folders(data_dir, out, case)
    run_dir = out / case
    if not (run_dir / "model.json").is_file():
        fit(dataclasses.replace(cfg, data=str(train_dir), output=str(run_dir)))
    held_eval = run_dir / "eval-heldout"
    if not (held_eval / "predictions.csv").is_file():
        evaluate_table(run_dir, load_table(held_dir), "external", held_eval, data_dir=held_dir,
                       description=f"{CASES[case][0]}, left out of training, validation and test")
    return run_dir


def wilson_text(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return f"{k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({k}/{n})"


def rule_figures(run_dir: Path, positive: str = "covid") -> dict[str, dict]:
    """Every rule chosen on the run's validation predictions, measured on held-out and internal-test images."""
    preds = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    held = pd.read_csv(run_dir / "eval-heldout" / "predictions.csv", keep_default_na=False)
    val, test = preds[preds["split"] == "val"], preds[preds["split"] == "test"]
    col = f"prob_{positive}"
    points, notes = choose_points((val["label"] == positive).to_numpy(), val[col].to_numpy(), sites=val["site"])
    test_pos = test[test["label"] == positive][col].to_numpy()
    held_neg = held[held["label"] != positive][col].to_numpy()
    out = {}
    for name, t in points.items():
        if name == "default":
            continue
        tn, tp = int((held_neg < t).sum()), int((test_pos >= t).sum())
        out[name] = {"threshold": t, "heldout_specificity": tn / len(held_neg), "heldout_tn": tn,
                     "heldout_n": len(held_neg), "test_sensitivity": tp / len(test_pos), "test_tp": tp,
                     "test_n": len(test_pos), "note": notes.get(name),
                     "heldout_text": wilson_text(tn, len(held_neg)), "test_text": wilson_text(tp, len(test_pos))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", "-o", type=Path, default=Path("runs/bench_sites"))
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--data", default=None, help="cxr data folder (default: ../shared/data/cxr)")
    p.add_argument("--epochs", type=int, default=None, help="smaller budget (default: the quickstart's)")
    p.add_argument("--samples-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(audit=False, seed=a.seed)  # the quickstart's configuration (the audit does not change scores)
    if a.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=a.epochs)
    if a.samples_per_epoch is not None:
        cfg = dataclasses.replace(cfg, samples_per_epoch=a.samples_per_epoch)
    data_dir = Path(resolve_data_dir(a.data, "cxr"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}; budget: {cfg.epochs} epochs x {cfg.samples_per_epoch} samples, seed {cfg.seed}; "
          f"default rule now: {DEFAULT_RULE}")
    results = {}
    for case in a.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"error: case {case!r} is unknown; expected one of {', '.join(CASES)}")
        results[case] = rule_figures(train_case(case, cfg, data_dir, a.output))
        print(f"\nheld out: {CASES[case][0]} (run {a.output / case})")
        print(f"{'rule':<28} {'threshold':>9}  {'held-out specificity [95% CI]':<34} internal-test COVID sensitivity")
        for name, r in results[case].items():
            print(f"{name:<28} {r['threshold']:>9.3f}  {r['heldout_text']:<34} {r['test_text']}")
            if r["note"]:
                print(f"    note: {r['note']}")
    a.output.mkdir(parents=True, exist_ok=True)
    (a.output / "bench_sites.json").write_text(json.dumps({"commit": commit, "epochs": cfg.epochs,
                                                           "samples_per_epoch": cfg.samples_per_epoch,
                                                           "seed": cfg.seed, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
