"""Image-quality warnings: signs that an image is not what a run's model was trained for.

Shared by every interface that answers for one image at a time (HTTP service, DICOM node, predict): the facts are
read cheaply from the file's header (DICOM tags without pixel data; PNG/JPEG size without decoding), or from a
pydicom dataset a DICOM node already holds, and turned into short warnings ``"<code>: <message>"``:

- ``modality``: a DICOM ``Modality`` other than CR/DX (radiographs) for a chest X-ray run, or other than CT for a CT
  run;
- ``lateral``: ``ViewPosition`` lateral (the runs are trained on frontal PA/AP views);
- ``body-part``: ``BodyPartExamined`` present and not the chest;
- ``small``: fewer than ``min_side`` pixels on a side (detail the model needs is missing);
- ``blank``: nearly uniform pixels (an empty or failed exposure).

A warning never stops a prediction: it is returned (and logged) next to it, for the reader to weigh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from .decode import is_dicom

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST", "TORAX")
MIN_SIDE = 256


@dataclass(frozen=True)
class ImageFacts:
    """What the header says about an image (``None``: not known, e.g. a PNG has no Modality)."""

    height: int | None = None
    width: int | None = None
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    # acquisition facts a site can see change (drift monitoring; never patient data)
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    photometric: str | None = None
    pixel_spacing: str | None = None  # "row\\column" in mm, as the header gives it
    file_type: str | None = None  # dicom, png, jpeg, ...
    # a DICOM input's UIDs (what a FHIR ImagingStudy reference names; never written to the audit log)
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None


def _tag(ds: Any, name: str) -> str | None:
    value = ds.get(name) if hasattr(ds, "get") else None
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def dicom_facts(ds: Any) -> ImageFacts:
    """Facts of a pydicom ``Dataset`` (pixel data not needed; patient tags are not read)."""
    rows, cols = ds.get("Rows"), ds.get("Columns")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return ImageFacts(height=int(rows) if rows else None, width=int(cols) if cols else None,
                      modality=_tag(ds, "Modality"), view_position=_tag(ds, "ViewPosition"),
                      body_part=_tag(ds, "BodyPartExamined"), manufacturer=_tag(ds, "Manufacturer"),
                      manufacturer_model=_tag(ds, "ManufacturerModelName"),
                      photometric=_tag(ds, "PhotometricInterpretation"),
                      pixel_spacing="\\".join(f"{float(v):.4g}" for v in spacing) if spacing else None,
                      file_type="dicom", study_uid=_uid(ds, "StudyInstanceUID"),
                      series_uid=_uid(ds, "SeriesInstanceUID"), sop_uid=_uid(ds, "SOPInstanceUID"))


def _uid(ds: Any, name: str) -> str | None:
    value = ds.get(name) if hasattr(ds, "get") else None
    return str(value).strip() or None if value is not None else None


def read_facts(path: str | Path) -> ImageFacts:
    """Facts from a file's header, without decoding its pixels; empty facts when the header cannot be read (the
    decoder reports unreadable files)."""
    path = Path(path)
    try:
        if is_dicom(path):
            return dicom_facts(pydicom.dcmread(str(path), stop_before_pixels=True))

        with Image.open(path) as im:
            return ImageFacts(height=im.height, width=im.width, file_type=(im.format or "").lower() or None)
    except Exception:  # noqa: BLE001 - any header fault is the decoder's to report, with its own message
        return ImageFacts()


def quality_warnings(facts: ImageFacts, image: np.ndarray | None = None, run_modality: str = "cxr",
                     min_side: int = MIN_SIDE) -> list[str]:
    """Warnings for one image.

    Args:
        facts: from :func:`read_facts` or :func:`dicom_facts`.
        image: the decoded greyscale image, if at hand (for ``blank``; its shape stands in for missing facts).
        run_modality: ``"cxr"`` or ``"ct"``, what the run was trained on.
        min_side: images with a shorter side get ``small``.
    """
    out: list[str] = []
    if facts.modality is not None:
        if run_modality == "ct" and facts.modality != "CT":
            out.append(f"modality: DICOM Modality is {facts.modality}; this model was trained on CT slices")
        elif run_modality != "ct" and facts.modality not in RADIOGRAPH_MODALITIES:
            out.append(f"modality: DICOM Modality is {facts.modality}, not a radiograph (CR/DX); this model was "
                       "trained on chest X-rays")
    if facts.view_position in LATERAL_VIEWS:
        out.append(f"lateral: ViewPosition is {facts.view_position}; this model was trained on frontal (PA/AP) views")
    if facts.body_part is not None and facts.body_part not in CHEST_PARTS:
        out.append(f"body-part: BodyPartExamined is {facts.body_part}, not the chest")
    h, w = facts.height, facts.width
    if (h is None or w is None) and image is not None:
        h, w = image.shape[:2]
    if h is not None and w is not None and min(h, w) < min_side:
        out.append(f"small: the image is {w} x {h} pixels (below {min_side} on a side); detail may be missing")
    if image is not None and image.size and float(np.std(image)) < 2.0:
        out.append("blank: the image is nearly uniform (an empty or failed exposure?)")
    return out
