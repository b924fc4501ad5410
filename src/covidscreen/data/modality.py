"""Which imaging modality a data folder or an input file holds: ``cxr`` (chest radiograph) or ``ct`` (CT slice).

A model reads one modality; a run records it (sidecar key ``modality``) and inputs of the other one are refused
(:mod:`covidscreen.inference.modality`). The modality of training data comes, in this order of trust, from an
explicit choice (``--modality`` / config key ``modality``), a ``modality`` column in ``metadata.csv``, the DICOM
``Modality`` tag of the folder's DICOM files, or a ``view`` column naming CT planes (axial, coronal, sagittal).
Data that says nothing is taken as chest radiographs, the project's original modality.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .decode import dicom_modality, is_dicom

DEFAULT_MODALITY = "cxr"
#: DICOM Modality values that tell which of our modalities an image is.
DICOM_MODALITIES = {"CR": "cxr", "DX": "cxr", "CT": "ct"}
#: DICOM Modality values that say nothing about the kind of image (secondary capture, other).
UNINFORMATIVE_DICOM = {"OT", "SC"}
CT_VIEWS = {"axial", "coronal", "sagittal"}
_ALIASES = {"cxr": "cxr", "xray": "cxr", "x-ray": "cxr", "cr": "cxr", "dx": "cxr", "radiograph": "cxr", "ct": "ct"}
MAX_DICOM_HEADERS = 50  # DICOM headers read to tell a folder's modality (all agree in practice; reading is cheap)


def normalise_modality(value: str, what: str = "modality") -> str:
    """``cxr`` or ``ct`` from a user's spelling (``CXR``, ``x-ray``, ``CR``, ``DX``, ``CT``)."""
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise DataError(f"{what} {value!r} is not known; use cxr (chest radiograph: DICOM CR/DX) or ct (CT slice)")
    return _ALIASES[key]


def modality_from_dicom(tag: str | None) -> str | None:
    """Our modality for a DICOM ``Modality`` value; None when it says nothing (absent, OT, SC).

    Raises:
        DataError: a modality that is neither (MR, US, MG, ...): no model here reads it.
    """
    if tag is None or tag in UNINFORMATIVE_DICOM:
        return None
    if tag not in DICOM_MODALITIES:
        raise DataError(f"DICOM Modality {tag} is not supported; covidscreen reads chest radiographs (CR, DX) and "
                        "CT slices (CT)")
    return DICOM_MODALITIES[tag]


def table_modality(table: pd.DataFrame, override: str | None = None) -> tuple[str, str]:
    """The one modality of a table of images and where it was read from.

    Args:
        table: from :func:`~covidscreen.data.table.load_table` (``path``; optional ``modality``, ``view``).
        override: an explicit choice (``--modality``); it must not contradict what the data says.

    Returns:
        ``(modality, source)``, e.g. ``("ct", "the DICOM Modality of 12 file(s)")``.

    Raises:
        DataError: the data mixes modalities, or contradicts ``override``.
    """
    found: list[tuple[str, str]] = []
    if "modality" in table.columns:
        values = {v for v in table["modality"].astype(str).str.strip() if v}
        if values:
            mods = {normalise_modality(v, "metadata.csv modality") for v in values}
            if len(mods) > 1:
                raise DataError(f"the data mixes modalities ({', '.join(sorted(values))} in column modality); "
                                "train one model per modality")
            found.append((mods.pop(), "the modality column of metadata.csv"))
    dicoms = [p for p in table["path"] if is_dicom(Path(p))][:MAX_DICOM_HEADERS]
    if dicoms:
        mods = {m for m in (modality_from_dicom(dicom_modality(p)) for p in dicoms) if m}
        if len(mods) > 1:
            raise DataError(f"the data mixes modalities: DICOM files of {', '.join(sorted(mods))}; train one model "
                            "per modality")
        if mods:
            found.append((mods.pop(), f"the DICOM Modality of {len(dicoms)} file(s)"))
    if not found and "view" in table.columns:
        views = {str(v).strip().lower() for v in table["view"]} - {"", "unknown"}
        if views and views <= CT_VIEWS:
            found.append(("ct", f"the view column ({', '.join(sorted(views))}: CT planes)"))
    if len({m for m, _ in found}) > 1:
        raise DataError("the data contradicts itself about its modality: " +
                        "; ".join(f"{m} from {src}" for m, src in found))
    if override is not None:
        chosen = normalise_modality(override)
        if found and found[0][0] != chosen:
            raise DataError(f"modality {chosen} was asked for, but the data is {found[0][0]} "
                            f"(from {found[0][1]})")
        return chosen, "the modality option"
    if found:
        return found[0]
    return DEFAULT_MODALITY, "nothing in the data (assumed: chest radiographs)"
