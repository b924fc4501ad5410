"""Small synthetic chest-X-ray-like data folders with *planted* problems, for audit and evaluation tests.

Images are smooth random textures (every image distinct), 96 x 96, with a per-site intensity offset; site
``alpha`` also carries a bright corner marker (burnt-in text stands in for it) and holds every ``covid`` image, so
site and label are perfectly aligned and the site is visible in the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SITES = {"alpha": (["covid"], 40), "beta": (["normal", "pneumonia"], 0), "gamma": (["normal", "pneumonia"], -35)}


def texture(rng: np.random.Generator, offset: int, marker: bool, label: str, side: int = 96) -> np.ndarray:
    coarse = rng.normal(0, 1, (12, 12))
    img = np.asarray(Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    img = 60 + img * 0.55 + offset
    if label == "pneumonia":  # a faint disease-like blob, so that labels are learnable within sites too
        yy, xx = np.mgrid[:side, :side]
        img += 25 * np.exp(-((yy - 60) ** 2 + (xx - 40) ** 2) / 200)
    if marker:
        img[4:16, 4:20] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_site: int = 40, seed: int = 0, plant: bool = True) -> Path:
    """Write ``root/metadata.csv`` and images; with ``plant``, also a re-encoded near-duplicate and a byte copy.

    Planted rows (``plant=True``): ``beta/dup_resized.jpg`` is ``beta/img000.png`` resized to 80 px and re-encoded
    as JPEG quality 70, filed under another patient; ``gamma/dup_bytes.png`` is a byte copy of ``gamma/img001.png``
    under another patient.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for site, (labels, offset) in SITES.items():
        (root / site).mkdir(parents=True, exist_ok=True)
        for i in range(per_site):
            label = labels[i % len(labels)]
            arr = texture(rng, offset, site == "alpha", label)
            name = f"{site}/img{i:03d}.png"
            Image.fromarray(arr).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"{site}:{i // 2}", "site": site,
                         "view": "PA" if i % 3 else "AP", "width": 96, "height": 96 if site != "gamma" else 400,
                         "age": ""})
    if plant:
        src = Image.open(root / "beta/img000.png")
        src.resize((80, 80), Image.Resampling.BILINEAR).save(root / "beta/dup_resized.jpg", quality=70)
        rows.append({"image": "beta/dup_resized.jpg", "label": rows[site_row("beta", 0, per_site)]["label"],
                     "patient_id": "beta:copy", "site": "beta", "view": "PA", "width": 80, "height": 80, "age": ""})
        (root / "gamma/dup_bytes.png").write_bytes((root / "gamma/img001.png").read_bytes())
        rows.append({"image": "gamma/dup_bytes.png", "label": rows[site_row("gamma", 1, per_site)]["label"],
                     "patient_id": "gamma:copy", "site": "gamma", "view": "PA", "width": 96, "height": 400,
                     "age": ""})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def site_row(site: str, i: int, per_site: int) -> int:
    """Row of metadata.csv holding the ``i``-th image of ``site``."""
    return list(SITES).index(site) * per_site + i
