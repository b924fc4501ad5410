"""Find the data folder: ``--data``, else ``$COVIDSCREEN_DATA``, else ``../shared/data`` next to the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

DEFAULT_DATASET = "cxr"

HOW_TO_GET_DATA = (
    "Point covidscreen at a data folder with --data DIR or the COVIDSCREEN_DATA environment variable. A data folder "
    "holds metadata.csv (columns image,label[,patient_id,site,view]) or <label>/ sub-folders of images. Public "
    "sources: the COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset), Kermany et al. 2018 "
    "pediatric pneumonia (data.mendeley.com/datasets/rscbjbr9sj), NIH ChestX-ray14, the COVID-19 Radiography "
    "Database (kaggle), UCSD COVID-CT."
)


def _is_dataset(path: Path) -> bool:
    return (path / "metadata.csv").is_file() or (path.is_dir() and any(p.is_dir() for p in path.iterdir()))


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    # src/covidscreen/data/locate.py -> repository root is parents[3]
    repo = here.parents[3]
    return [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]


def data_roots() -> list[Path]:
    """Folders that may hold datasets (``<root>/cxr``, ``<root>/ct``): ``$COVIDSCREEN_DATA`` when set, then
    ``../shared/data`` next to the checkout or the working directory."""
    env = os.environ.get("COVIDSCREEN_DATA")
    return ([Path(env).expanduser()] if env else []) + _candidates()


def resolve_data_dir(explicit: str | Path | None = None, dataset: str = DEFAULT_DATASET) -> Path:
    """Return the dataset folder to use.

    An explicit path (or ``$COVIDSCREEN_DATA``) may name the dataset folder itself or a root that holds
    ``<dataset>/`` (as ``shared/data`` holds ``cxr/``).

    Raises:
        DataError: nothing usable was found; the message says how to point covidscreen at data.
    """
    given = explicit if explicit is not None else os.environ.get("COVIDSCREEN_DATA") or None
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            source = "--data" if explicit is not None else "COVIDSCREEN_DATA"
            raise DataError(f"data folder {path} (from {source}) does not exist. {HOW_TO_GET_DATA}")
        if (path / "metadata.csv").is_file():
            return path
        if (path / dataset / "metadata.csv").is_file():
            return path / dataset
        return path  # image-folder tree, validated by load_table
    for root in _candidates():
        if (root / dataset / "metadata.csv").is_file():
            return root / dataset
    raise DataError(f"no data folder given and none found next to the checkout. {HOW_TO_GET_DATA}")
