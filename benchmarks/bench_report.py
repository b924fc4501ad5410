"""CPU seconds of ``write_report`` (the run's HTML report, its Grad-CAM audit included) on a tiny run.

Every training run ends with its report, and on the tiny runs of the test suite the report costs far more than the
training (about 10 CPU s against under 1 s of epochs): example heatmap figures, report plots, PNG encoding. This
benchmark trains one tiny run once (``mobilenet_v2_035`` from random weights at 64 px, one epoch, a synthetic data
folder of 48 images whose covid images carry a corner marker), then writes its report ``--repeats`` times and prints
the CPU seconds of each (this process; one torch thread), their median and best, the split of the best one into
the heatmap audit and the rest, and the size of the report and of the example PNGs. CPU seconds, not wall time:
the machine is shared (and even CPU seconds grow by a quarter or more when the other core is busy: compare the
best of several). Compare two commits by running the same script on each.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/bench_report.py [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from covidscreen.config import TrainConfig
from covidscreen.reporting import heatmaps, report
from covidscreen.workflows.fit import fit


def synthetic_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """Covid images (site a) with a bright corner marker, normals (site b) without: 72 x 60 px PNGs."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, site in (("covid", "a"), ("normal", "b")):
        for i in range(per_class):
            img = (rng.random((60, 72)) * 80 + 60).astype(np.uint8)
            if label == "covid":
                img[:10, :10] = 250
            name = f"{label}_{i:02d}.png"
            Image.fromarray(img).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"{site}:{label}{i}", "site": site})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        data = synthetic_folder(base / "data")
        cfg = TrainConfig(data=str(data), output=str(base / "run"), model="mobilenet_v2_035", pretrained=False,
                          image_size=64, epochs=1, samples_per_epoch=None, batch_size=8, train_stages=None,
                          split=(0.5, 0.25, 0.25), cache_dir=str(base / "cache"), device="cpu", augment=False)
        run_dir = Path(fit(cfg, progress=False))
        report.write_report(run_dir)  # warm-up: fonts, imports, the model's first forward

        audit_cpu = []
        inner = heatmaps.heatmap_summary

        def timed_summary(*a, **k):
            t = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                audit_cpu.append(time.process_time() - t)

        report.heatmap_summary = timed_summary
        cpu = []
        for _ in range(args.repeats):
            t = time.process_time()
            out = report.write_report(run_dir)
            cpu.append(time.process_time() - t)
        report.heatmap_summary = inner
        examples = sorted((run_dir / "explain" / "examples").glob("*.png"))
        print(f"write_report on a tiny run (mobilenet_v2_035, 64 px, {len(examples)} example figures), "
              f"torch threads {torch.get_num_threads()}, {args.repeats} repeats")
        print("CPU s per report: " + " ".join(f"{c:.2f}" for c in cpu)
              + f"  median {statistics.median(cpu):.2f}, best {min(cpu):.2f}")
        best = cpu.index(min(cpu))
        print(f"  the best one's heatmap audit (heatmap_summary): {audit_cpu[best]:.2f}; "
              f"the rest {cpu[best] - audit_cpu[best]:.2f}")
        print(f"report.html {out.stat().st_size / 1024:.0f} KiB; example PNGs {len(examples)}, "
              f"{sum(p.stat().st_size for p in examples) / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
