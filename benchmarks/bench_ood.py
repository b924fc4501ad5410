"""The out-of-distribution flag of a trained run: detectors compared, the default chosen, flag rates measured.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_ood.py runs/qs --output runs/bench_ood [--n 200]

1. Features (the run's Predictor) of at most 3,000 training images, every validation and test image, and of probe
   sets that are not frontal chest X-rays (covidscreen.ood.probes).
2. Every detector (Mahalanobis, KNN, ViM, energy) fitted on the training features, alone and combined with the
   orientation check (covidscreen.ood.orientation: fitted on training images shown upright and turned), its
   threshold set on validation to flag 5%.
3. The default is chosen on validation and on OOD sets built from ../shared/data only: CT slices (half of those
   drawn) and *validation* X-rays rotated 90 degrees / flipped upside down. Rule: the most detectors' minimum
   flag rate over these selection sets (ties: the mean AUROC against validation).
4. Reported, never used for the choice: the flag rate on the test split, on the other half of the CT slices, on test
   X-rays rotated/flipped, natural photos (scikit-image), blank, noise and text images; per test site.
5. Speed of plain predict vs predict with the OOD score, interleaved in one process (ratio of CPU seconds).

Writes ``OUTPUT/bench_ood.json`` and prints Markdown tables for docs/safety.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from covidscreen.data.cache import ImageCache
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from covidscreen.ood import probes
from covidscreen.ood.detectors import DETECTORS
from covidscreen.ood.fit import fit_on_features, linear_head, turned_features
from covidscreen.ood.orientation import TURNED_PER_VIEW, fit_orientation


def prepared(pred: Predictor, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``paths`` as the Predictor reads them (decoded once, through the run's preprocessing), and which
    decoded (a file the decoder refuses is never answered: it counts as not predicted, reported apart)."""
    cache = ImageCache([str(p) for p in paths], pred.size, progress=False, preprocess=pred.preprocess,
                       segmenter=pred.segmenter)
    rows = cache.rows([p for p, ok in zip(cache.paths, cache.ok, strict=True) if ok])
    return np.asarray(cache.images[rows]), cache.ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--output", type=Path, default=Path("runs/bench_ood"))
    ap.add_argument("--n", type=int, default=200, help="images per probe set built from X-rays / CT")
    ap.add_argument("--flag-rate", type=float, default=0.05)
    ap.add_argument("--train-n", type=int, default=3000, help="training images the detectors are fitted on")
    ap.add_argument("--val-n", type=int, default=None, help="validation images (default: all)")
    ap.add_argument("--test-n", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--speed-n", type=int, default=256, help="images of the speed comparison")
    ap.add_argument("--speed-reps", type=int, default=5)
    ap.add_argument("--turned-n", type=int, default=TURNED_PER_VIEW, help="training images per turned view of the "
                    "orientation check")
    ap.add_argument("--save", action="store_true", help="store the chosen detector as the run's OOD model")
    args = ap.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    run = load_run(args.run_dir)
    pred = Predictor(run, device="cpu")
    root = Path(run.data_dir)
    split = pd.read_csv(args.run_dir / "split.csv", keep_default_na=False)
    split["path"] = [str(root / p) for p in split["image"]]
    train = split[split["split"] == "train"]
    train = train.iloc[np.sort(rng.choice(len(train), min(args.train_n, len(train)), replace=False))]
    val, test = split[split["split"] == "val"], split[split["split"] == "test"]
    if args.val_n and args.val_n < len(val):
        val = val.sample(args.val_n, random_state=3).sort_index()
    if args.test_n and args.test_n < len(test):
        test = test.sample(args.test_n, random_state=4).sort_index()
    ct_meta = pd.read_csv(root.parent / "ct" / "metadata.csv", keep_default_na=False)
    ct_paths = [str(root.parent / "ct" / p) for p in ct_meta["image"].sample(2 * args.n, random_state=0)]
    t0 = time.time()
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    decoded: dict[str, tuple[int, int]] = {}

    def embed(name: str, paths: list[str]) -> np.ndarray:
        imgs, ok = prepared(pred, paths)
        feats[name] = pred.features(imgs, progress=True, desc=name)
        decoded[name] = (int(ok.sum()), len(ok))
        print(f"{name}: {ok.sum()}/{len(ok)} decoded ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        return imgs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_imgs = embed("train", train["path"].tolist())
        check = fit_orientation(turned_features(pred, train_imgs, feats["train"][0], seed=0, per_view=args.turned_n))
        del train_imgs
        embed("val", val["path"].tolist())
        embed("test", test["path"].tolist())
        val_x = val["path"].sample(min(args.n, len(val)), random_state=1).tolist()
        test_x = test["path"].sample(min(args.n, len(test)), random_state=2).tolist()
        embed("sel: CT slices", ct_paths[:args.n])
        embed("sel: val X-rays rotated 90", [str(p) for p in probes.transformed_xrays(val_x, tmp / "vr", "rot90")])
        embed("sel: val X-rays upside down", [str(p) for p in probes.transformed_xrays(val_x, tmp / "vf", "flipud")])
        embed("CT slices (other half)", ct_paths[args.n:])
        embed("test X-rays rotated 90", [str(p) for p in probes.transformed_xrays(test_x, tmp / "tr", "rot90")])
        embed("test X-rays upside down", [str(p) for p in probes.transformed_xrays(test_x, tmp / "tf", "flipud")])
        embed("natural photos (scikit-image)", [str(p) for p in probes.natural_photos(tmp / "photos")])
        embed("blank", [str(p) for p in probes.blank_images(tmp / "blank")])
        embed("noise", [str(p) for p in probes.noise_images(tmp / "noise")])
        embed("text", [str(p) for p in probes.text_images(tmp / "text")])
    y_train = train["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    head = linear_head(pred)
    selection = [k for k in feats if k.startswith("sel: ")]
    reported = [k for k in feats if k not in ("train", "val") and not k.startswith("sel: ")]
    results = {}
    variants = [(d, o) for d in DETECTORS for o in (False, True)]
    for det, with_check in variants:
        name = f"{det}+orientation" if with_check else det
        m = fit_on_features(det, feats["train"][0], y_train, feats["val"][0], feats["val"][1], args.flag_rate,
                            head=head, orientation=check if with_check else None)
        scores = {k: m.score(*v) for k, v in feats.items()}
        rates = {k: float(m.flags(s).mean()) for k, s in scores.items() if len(s)}
        aurocs = {k: float(roc_auc_score(np.r_[np.zeros(len(scores["val"])), np.ones(len(scores[k]))],
                                         np.nan_to_num(np.r_[scores["val"], scores[k]], nan=np.inf)))
                  for k in selection}
        results[name] = {"threshold": m.threshold, "flag_rate": rates, "selection_auroc": aurocs,
                        "selection_min_flag_rate": min(rates[k] for k in selection),
                        "selection_mean_auroc": float(np.mean(list(aurocs.values())))}
        # per test site: flag rate, and specificity (non-COVID called non-COVID) among accepted vs flagged
        site_rows = []
        flags = m.flags(scores["test"])
        tdec = test.reset_index(drop=True)  # every test image decoded (the shared data are clean)
        if len(tdec) == len(flags):
            lg = feats["test"][1] / run.temperature
            lg = lg - lg.max(1, keepdims=True)
            probs = np.exp(lg) / np.exp(lg).sum(1, keepdims=True)
            thr = run.threshold()
            pos = run.positive_index
            called = probs[:, pos] >= thr if thr is not None else probs.argmax(1) == pos
            for site, g in tdec.groupby("site"):
                idx = g.index.to_numpy()
                neg = idx[g["label"].to_numpy() != run.positive_class]
                acc, flg = neg[~flags[neg]], neg[flags[neg]]
                site_rows.append({"site": site, "n": len(idx), "flag_rate": float(flags[idx].mean()),
                                  "spec_accepted": float((~called[acc]).mean()) if len(acc) else None,
                                  "n_neg_flagged": int(len(flg)),
                                  "spec_flagged": float((~called[flg]).mean()) if len(flg) else None})
        results[name]["test_sites"] = site_rows
    chosen = max(results, key=lambda d: (results[d]["selection_min_flag_rate"], results[d]["selection_mean_auroc"]))
    chosen_det, chosen_check = chosen.split("+")[0], chosen.endswith("+orientation")

    # speed: plain predict vs predict with the OOD score, same images, interleaved (CPU seconds)
    imgs = prepared(pred, test["path"].head(args.speed_n).tolist())[0]
    m = fit_on_features(chosen_det, feats["train"][0], y_train, feats["val"][0], feats["val"][1], args.flag_rate,
                        head=head, orientation=check if chosen_check else None)
    timed = {"plain": [], "with OOD": []}
    for _ in range(args.speed_reps):
        for mode in timed:
            pred.ood = m if mode == "with OOD" else None
            c0 = time.process_time()
            for i in range(0, len(imgs), 32):
                pred.score_arrays(imgs[i:i + 32])
            timed[mode].append(time.process_time() - c0)
    pred.ood = None
    if args.save:
        from covidscreen.ood import save_ood

        rec = save_ood(args.run_dir, m)
        print(f"stored {rec.detector} as the run's OOD model (threshold {rec.threshold:.4g})", file=sys.stderr)
    speed = {k: float(np.median(v)) for k, v in timed.items()}
    out = {"run": str(args.run_dir), "flag_rate_target": args.flag_rate, "decoded": decoded, "chosen": chosen,
           "selection_sets": selection, "reported_sets": reported, "detectors": results,
           "speed_cpu_s": speed, "speed_images": len(imgs), "slowdown": speed["with OOD"] / speed["plain"] - 1,
           "seconds": time.time() - t0}
    (args.output / "bench_ood.json").write_text(json.dumps(out, indent=2))

    print(f"\nchosen on validation + selection sets: **{chosen}**\n")
    print("| detector | " + " | ".join(["val"] + selection) + " | mean AUROC (sel.) |")
    print("|---" * (len(selection) + 3) + "|")
    for d, r in results.items():
        print(f"| {d} | " + " | ".join(f"{r['flag_rate'][k]:.1%}" for k in ["val"] + selection)
              + f" | {r['selection_mean_auroc']:.3f} |")
    print("\n| detector | " + " | ".join(reported) + " |")
    print("|---" * (len(reported) + 1) + "|")
    for d, r in results.items():
        print(f"| {d} | " + " | ".join(f"{r['flag_rate'][k]:.1%}" for k in reported) + " |")
    print(f"\nper test site ({chosen}):")
    for s in results[chosen]["test_sites"]:
        print(s)
    print(f"\ndecoded: {decoded}")
    print(f"speed: {speed} (CPU s per {len(imgs)} images; slowdown {out['slowdown']:+.1%}); "
          f"total {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
