"""Tiny trained runs for the CT tests: a CT model (synthetic lung-window slices) and a chest X-ray model.

Both train for one epoch at 32 px from scratch (seconds); they are only used to check modality handling and the
shape of the outputs, never accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidscreen.config import resolve_train_config
from covidscreen.data.decode import apply_window
from covidscreen.workflows.fit import fit
from tests.conftest import make_image_folder
from tests.ct.synthetic_ct import phantom_hu


def make_ct_folder(root: Path, n_per_class: int = 10, modality_column: bool = True) -> Path:
    """PNG slices (lung window) of two labels; covid slices carry a ground-glass patch; two slices per patient."""
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for label in ("covid", "non_covid"):
        for i in range(n_per_class):
            noise = np.random.default_rng(i).normal(0, 30, (48, 48))
            img = apply_window(phantom_hu(48, opacity=label == "covid") + noise, -600, 1500)
            name = f"images/{label}_{i}.png"
            Image.fromarray(img).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"{label}_{i // 2}", "view": "axial",
                         **({"modality": "ct"} if modality_column else {})})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def tiny_fit(data: Path, out: Path, **kw) -> Path:
    cfg = dict(data=str(data), output=str(out), model="mobilenet_v2_035", pretrained=False, image_size=32, epochs=1,
               batch_size=4, samples_per_epoch=None, split=[0.5, 0.25, 0.25], train_stages=None, bootstrap=0,
               audit=False, cache_dir=str(out.parent / "cache"),
               group_near_duplicates=False)  # the phantoms are near-copies of each other by construction
    cfg.update(kw)
    return fit(resolve_train_config(None, **cfg), progress=False)


@pytest.fixture(scope="session")
def ct_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ctrun")
    return tiny_fit(make_ct_folder(base / "data"), base / "run")


@pytest.fixture(scope="session")
def cxr_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cxrrun")
    return tiny_fit(make_image_folder(base / "data", n_per_class=8, size=40), base / "run")
