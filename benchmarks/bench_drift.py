"""Drift monitoring of a trained run: false alarms on in-distribution streams, detection delay after a switch.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_drift.py runs/qs --output runs/bench_drift [--orders 20]

Every validation and test image of the run is scored once (the run's Predictor with its OOD model); streams are
predictions CSVs in a chosen order, given to ``covidscreen monitor`` (workflows.monitor) with the run as baseline:

- false alarms: ``--orders`` random orders of all validation+test images (the stream the issue names); the share
  of streams with any alarm estimates the family-wise false-alarm rate (the design bounds it by alpha = 0.05);
- detection delay: ``--head`` in-distribution images in random order (a multiple of ``--window``), then only the
  other scored images of one site (and, if given, ``--switch-data``: every image of another data folder, e.g. a site
  left out of training); the delay is the number of predictions after the switch until the end of the first
  alarming window.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from covidscreen.data.cache import ImageCache
from covidscreen.data.table import load_table
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from covidscreen.ood import attach_ood
from covidscreen.workflows.monitor import monitor


def score(pred: Predictor, paths: list[str]) -> pd.DataFrame:
    cache = ImageCache(paths, pred.size, progress=True, preprocess=pred.preprocess, segmenter=pred.segmenter)
    ok = [p for p, good in zip(paths, cache.ok, strict=True) if good]
    rows = cache.rows(ok)
    probs, scores = [], []
    for i in range(0, len(rows), 64):
        p, s = pred.score_arrays(np.asarray(cache.images[rows[i:i + 64]]))
        probs.append(p)
        scores.append(s)
    p, s = np.concatenate(probs), np.concatenate(scores)
    out = pd.DataFrame({"path": ok, **{f"prob_{c}": p[:, i] for i, c in enumerate(pred.classes)}})
    out["prediction"], out["ood_score"], out["in_distribution"], out["error"] = "", s, "", ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--output", type=Path, default=Path("runs/bench_drift"))
    ap.add_argument("--orders", type=int, default=20)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--switch-data", type=Path, default=None)
    ap.add_argument("--max-images", type=int, default=None, help="score at most this many val+test images")
    ap.add_argument("--head", type=int, default=500, help="in-distribution predictions before the switch")
    args = ap.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    run = load_run(args.run_dir)
    pred = Predictor(run, device="cpu")
    if attach_ood(pred) is None:
        sys.exit(f"{args.run_dir} has no OOD model: covidscreen ood fit {args.run_dir}")
    split = pd.read_csv(args.run_dir / "split.csv", keep_default_na=False)
    split = split[split["split"].isin(["val", "test"])].reset_index(drop=True)
    split["path"] = [str(Path(run.data_dir) / p) for p in split["image"]]
    if args.max_images and args.max_images < len(split):
        split = split.sample(args.max_images, random_state=5).reset_index(drop=True)
    scored = score(pred, split["path"].tolist()).merge(split[["path", "site", "split"]], on="path")
    rng = np.random.default_rng(0)
    result: dict = {"run": str(args.run_dir), "window": args.window, "n_images": len(scored)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        alarms = []
        for k in range(args.orders):
            stream = scored.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
            stream.drop(columns=["site", "split"]).to_csv(tmp / "s.csv", index=False)
            rec = monitor(str(tmp / "s.csv"), args.run_dir, tmp / f"m{k}", window=args.window)
            alarms.append(rec["n_alarms"])
            print(f"order {k}: {rec['n_windows']} windows, {rec['n_alarms']} alarm(s)", file=sys.stderr)
        result["false_alarms"] = {"orders": args.orders, "windows_per_stream": rec["n_windows"],
                                  "streams_with_an_alarm": int(sum(a > 0 for a in alarms)),
                                  "alarms": alarms}
        head = scored.sample(min(args.head, len(scored) // 2), random_state=1)
        rest = scored.drop(head.index)
        switches = {f"images of site {s}": rest[rest["site"] == s] for s in sorted(rest["site"].unique())}
        if args.switch_data is not None:
            table = load_table(args.switch_data)
            switches[f"every image of {args.switch_data}"] = score(pred, table["path"].tolist())
        delays = {}
        n0 = len(head)
        for name, shifted in switches.items():
            if len(shifted) < args.window:
                continue
            stream = pd.concat([head, shifted.sample(frac=1.0, random_state=2)])
            stream[[c for c in stream.columns if c not in ("site", "split")]].to_csv(tmp / "d.csv", index=False)
            rec = monitor(str(tmp / "d.csv"), args.run_dir, args.output / name.replace(" ", "_"), window=args.window)
            after = [w for w in rec["windows"] if w["start"] >= n0 and w["alarm"]]
            before = sum(w["alarm"] for w in rec["windows"] if w["end"] <= n0)
            delays[name] = {"n_before_switch": n0, "n_after_switch": len(shifted),
                            "alarms_before_switch": int(before), "delay": (after[0]["end"] - n0) if after else None,
                            "flag_rate_after": float((shifted["ood_score"] > pred.ood.threshold).mean())}
            print(name, delays[name], file=sys.stderr)
        result["detection_delay"] = delays
    (args.output / "bench_drift.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
