"""The OOD flag and drift monitoring at a site the model has never seen: leave-one-site-out runs.

    covidscreen train --holdout-site nih --output runs/loso_nih      # one run per site (the quickstart's config)
    PYTHONPATH=src nice -n 5 python benchmarks/bench_loso_ood.py runs/loso_* --output runs/bench_loso

For each run (trained with ``holdout_site``: that site is in none of its splits, so neither training nor the OOD fit
saw it), with the run's own OOD model (detector and orientation check, threshold set on its validation split):

1. the flag rate on its in-distribution test split and on every image of the held-out site;
2. among the held-out site's non-COVID images: specificity (not called COVID at the run's default operating point)
   among the accepted and among the flagged images;
3. drift: a stream of ``--head`` of the run's validation and test predictions in random order, then every image of
   the held-out site in random order, given to ``covidscreen monitor`` with the run as baseline; the detection delay
   is the number of predictions after the switch until the end of the first alarming window (and the alarms before
   the switch are false alarms).

Writes ``OUTPUT/bench_loso.json`` and prints a Markdown table for docs/safety.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from covidscreen.data.table import load_table
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from covidscreen.ood import attach_ood
from covidscreen.workflows.monitor import monitor

sys.path.insert(0, str(Path(__file__).parent))
from bench_drift import score  # noqa: E402 (the same scoring as the drift benchmark)


def one_run(run_dir: Path, out: Path, head_n: int, window: int, seed: int) -> dict:
    run = load_run(run_dir)
    site = run.config.get("holdout_site")
    if not site:
        sys.exit(f"{run_dir} was not trained with --holdout-site")
    pred = Predictor(run, device="cpu")
    if attach_ood(pred) is None:
        sys.exit(f"{run_dir} has no OOD model: covidscreen ood fit {run_dir}")
    split = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    split["path"] = [str(Path(run.data_dir) / p) for p in split["image"]]
    inside = split[split["split"].isin(["val", "test"])]
    table = load_table(run.data_dir)
    held = table[table["site"] == site]
    print(f"{run_dir}: scoring {len(inside)} val+test and {len(held)} images of {site}", file=sys.stderr)
    s_in = score(pred, inside["path"].tolist()).merge(inside[["path", "split", "label"]], on="path")
    s_out = score(pred, [str(p) for p in held["path"]])
    s_out = s_out.merge(pd.DataFrame({"path": [str(p) for p in held["path"]], "label": held["label"].to_numpy()}),
                        on="path")
    thr_ood = pred.ood.threshold
    flag_in = s_in["ood_score"] > thr_ood
    flag_out = s_out["ood_score"] > thr_ood
    pos = run.positive_class
    thr = run.threshold()
    called = (s_out[f"prob_{pos}"] >= thr) if thr is not None else (
        s_out[[f"prob_{c}" for c in run.classes]].to_numpy().argmax(1) == run.positive_index)
    neg = (s_out["label"] != pos).to_numpy()
    acc, flg = neg & ~flag_out.to_numpy(), neg & flag_out.to_numpy()
    res = {"run": str(run_dir), "site": site, "threshold": thr, "ood_threshold": thr_ood,
           "orientation_check": bool(run.ood.orientation), "n_test": int((s_in["split"] == "test").sum()),
           "test_flag_rate": float(flag_in[s_in["split"] == "test"].mean()),
           "n_site": len(s_out), "site_flag_rate": float(flag_out.mean()), "n_site_negatives": int(neg.sum()),
           "n_site_covid": int((~neg).sum()),
           "spec_accepted": float((~called[acc]).mean()) if acc.any() else None, "n_neg_accepted": int(acc.sum()),
           "spec_flagged": float((~called[flg]).mean()) if flg.any() else None, "n_neg_flagged": int(flg.sum())}
    rng = np.random.default_rng(seed)
    head = s_in.sample(min(head_n, len(s_in)), random_state=int(rng.integers(1 << 31)))
    shifted = s_out.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    cols = [c for c in s_out.columns if c not in ("label", "split")]
    stream = pd.concat([head[cols], shifted[cols]])
    with tempfile.TemporaryDirectory() as tmp:
        stream.to_csv(Path(tmp) / "stream.csv", index=False)
        rec = monitor(str(Path(tmp) / "stream.csv"), run_dir, out / f"monitor_{site}", window=window)
    n0 = len(head)
    after = [w for w in rec["windows"] if w["start"] >= n0 and w["alarm"]]
    res["drift"] = {"window": window, "n_before_switch": n0, "n_after_switch": len(shifted),
                    "alarms_before_switch": int(sum(w["alarm"] for w in rec["windows"] if w["end"] <= n0)),
                    "windows_before_switch": int(sum(w["end"] <= n0 for w in rec["windows"])),
                    "delay": (after[0]["end"] - n0) if after else None}
    print(json.dumps(res), file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--output", type=Path, default=Path("runs/bench_loso"))
    ap.add_argument("--head", type=int, default=500, help="in-distribution predictions before the switch")
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    results = [one_run(r, args.output, args.head, args.window, args.seed) for r in args.run_dirs]
    (args.output / "bench_loso.json").write_text(json.dumps(results, indent=2))

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    print("| site left out | test flagged | site images | site flagged | specificity, accepted non-COVID (n) | "
          "specificity, flagged non-COVID (n) | false alarms before switch | detection delay |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        d = r["drift"]
        delay = "none" if d["delay"] is None else f"{d['delay']} predictions"
        print(f"| {r['site']} | {r['test_flag_rate']:.1%} | {r['n_site']} | {r['site_flag_rate']:.1%} | "
              f"{f(r['spec_accepted'])} ({r['n_neg_accepted']}) | {f(r['spec_flagged'])} ({r['n_neg_flagged']}) | "
              f"{d['alarms_before_switch']} of {d['windows_before_switch']} | {delay} |")


if __name__ == "__main__":
    main()
