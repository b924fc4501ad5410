"""The image-format audit (``audit/image_format.py``) on the shared chest X-rays: can the label be told from how the
images were made? A label-stratified sample (up to 300 per label, seed 0), images at 64 px, the audit's own
probe (patient-grouped 5-fold logistic regression). Prints the probe's figures and the per-label medians.

    PYTHONPATH=src .venv/bin/python benchmarks/audit_format_cxr.py [DATA_DIR]
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from PIL import Image

from covidscreen.audit.image_format import format_audit


def main(root: str = "../shared/data/cxr", per_label: int = 300) -> None:
    table = pd.read_csv(f"{root}/metadata.csv", keep_default_na=False)
    table = pd.concat([g.sample(min(len(g), per_label), random_state=0) for _, g in table.groupby("label")],
                      ignore_index=True)
    table["path"] = root + "/" + table["image"]
    table["group"] = np.where(table["patient_id"] != "", table["patient_id"], table["image"])
    images = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64), Image.BILINEAR))
                       for p in table["path"]])
    block = format_audit(table, images, np.arange(len(table)))
    res = block["label_from_format"]
    print(f"label from format alone: ROC AUC {res['roc_auc']:.3f}, balanced accuracy {res['balanced_accuracy']:.3f} "
          f"(chance {res['chance']:.3f}), recall per label {res['recall_per_class']}, n={res['n']}")
    for label, s in block["by_label"].items():
        print(f"{label}: median {s['width']:.0f}x{s['height']:.0f} px, border brightness {s['border_mean']:.0f}, "
              f"empty {100 * s['black']:.1f}%, edge marks {100 * s['edge_marks']:.2f}%")


if __name__ == "__main__":
    main(*sys.argv[1:2])
