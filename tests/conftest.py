"""Shared fixtures: the shared data folder next to the checkout, and small synthetic data folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

# fixtures shared by the tests of several packages (explain/, reporting/, workflows/; audit/, workflows/)
pytest_plugins = ["tests.explain_fixtures", "tests.audit_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not (path / "cxr" / "metadata.csv").is_file():
        pytest.fail(f"the shared data folder {path} is missing: tests read the real images from ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _same_threads_after_each_test():
    """A test that changes torch's thread count must not change the numbers of the tests after it (float sums
    differ between 1 and 2 threads, and some tests compare an in-process run with a subprocess run)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # every test session gets its own decode cache: tests never see stale caches from developers' runs
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_image_folder(root: Path, n_per_class: int = 6, size: int = 48, classes=("covid", "normal"),
                      seed: int = 0) -> Path:
    """A tiny metadata.csv data folder whose classes differ by brightness (learnable in one epoch)."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for ci, label in enumerate(classes):
        for i in range(n_per_class):
            arr = (rng.random((size, size)) * 60 + 40 + 120 * ci).astype(np.uint8)
            name = f"images/{label}_{i}.png"
            Image.fromarray(arr).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"p{label}{i // 2}", "site": "s1", "view": "PA"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root
