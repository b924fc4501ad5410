import numpy as np
import pytest

from covidscreen.data.cache import ImageCache
from covidscreen.data.splits import patient_grouped_split
from covidscreen.data.table import load_table
from tests.synthetic import make_dataset


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A synthetic data folder with planted problems, its table (with a planted split) and cached images."""
    root = make_dataset(tmp_path_factory.mktemp("data"))
    cache_dir = tmp_path_factory.mktemp("cache")
    table = load_table(root)
    table["split"] = patient_grouped_split(table, seed=0).to_numpy()
    # plant: patient beta:3 in two splits; the resized copy and the byte copy in other splits than their originals
    beta3 = np.flatnonzero(table["group"] == "beta:3")
    table.loc[beta3[0], "split"], table.loc[beta3[1], "split"] = "train", "test"
    table.loc[table["group"] == "beta:0", "split"] = "train"  # beta/img000.png and its patient's other image
    table.loc[table["image"] == "beta/dup_resized.jpg", "split"] = "test"
    table.loc[table["group"] == "gamma:0", "split"] = "val"  # gamma/img001.png and its patient's other image
    table.loc[table["image"] == "gamma/dup_bytes.png", "split"] = "train"
    cache = ImageCache(table["path"].tolist(), 64, cache_dir=cache_dir, progress=False)
    return root, table, cache
