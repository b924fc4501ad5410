"""Build a validated table of images from a data folder.

A data folder is either

- a folder with ``metadata.csv`` (columns ``image`` and ``label`` required; ``patient_id``, ``site``, ``view``,
  ``lung_mask`` optional; ``image`` is a path relative to the folder), or
- an image-folder tree ``DIR/<label>/*.png|jpg|jpeg|dcm`` (one sub-folder per class).

The table always has the columns ``image``, ``path`` (absolute), ``label``, ``group`` (the patient used for grouping:
``patient_id``, or the image itself when that is empty), ``patient_id``, ``site`` and ``view``. Rows whose file does
not exist are dropped and *counted* (``table.attrs["missing"]``), never dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .decode import IMAGE_SUFFIXES

REQUIRED_COLUMNS = ("image", "label")
OPTIONAL_COLUMNS = ("patient_id", "site", "view", "lung_mask")
EXPECTED = (
    "a folder with metadata.csv (columns image,label; optional patient_id,site,view,lung_mask) "
    "or an image-folder tree DIR/<label>/*.png|jpg|jpeg|dcm"
)


def _from_metadata(root: Path) -> pd.DataFrame:
    csv = root / "metadata.csv"
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{csv}: cannot be parsed as CSV ({exc.__class__.__name__}). Expected {EXPECTED}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{csv}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'}). "
            f"Expected {EXPECTED}"
        )
    df = df[(df["image"].str.strip() != "") & (df["label"].str.strip() != "")].copy()
    df["label"] = df["label"].str.strip()
    df["path"] = [str((root / p).resolve()) for p in df["image"]]
    return df


def _from_tree(root: Path) -> pd.DataFrame:
    rows = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(label_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"image": str(f.relative_to(root)), "label": label_dir.name, "path": str(f.resolve())})
    return pd.DataFrame(rows, columns=["image", "label", "path"])


def load_table(data_dir: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    """Read a data folder into a validated table.

    Args:
        data_dir: folder with ``metadata.csv`` or ``<label>/`` sub-folders.
        classes: when given, rows with other labels are rejected with an error naming them (used when a trained
            model is evaluated on another folder: its labels must be among the model's classes).

    Raises:
        DataError: the folder does not exist, has neither layout, or holds no usable image.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. Expected {EXPECTED}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder. Expected {EXPECTED}")
    df = _from_metadata(root) if (root / "metadata.csv").is_file() else _from_tree(root)
    if df.empty:
        raise DataError(f"{root} holds no labelled images. Expected {EXPECTED}")
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df["site"] = df["site"].replace("", "unknown")
    df["view"] = df["view"].replace("", "unknown")
    df["group"] = [pid if pid else f"image:{img}" for pid, img in zip(df["patient_id"], df["image"])]
    exists = df["path"].map(lambda p: Path(p).is_file())
    n_missing = int((~exists).sum())
    df = df[exists].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{root}: none of the images listed in metadata.csv exist. Expected {EXPECTED}")
    if classes is not None:
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            raise DataError(
                f"{root}: label(s) {', '.join(unknown)} are not classes of this model ({', '.join(classes)})"
            )
    df.attrs["root"] = str(root.resolve())
    df.attrs["missing"] = n_missing
    return df


def class_names(df: pd.DataFrame) -> list[str]:
    """The sorted class names of a table (at least two are needed to train)."""
    names = sorted(df["label"].unique())
    if len(names) < 2:
        raise DataError(f"need at least two classes to train, found {names}")
    return names
