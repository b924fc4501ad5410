"""The one modality check of every interface: is this input of the modality the model reads?

A run reads one modality (:attr:`~covidscreen.inference.run.Run.modality`: ``cxr`` or ``ct``; runs that predate
the sidecar key read chest radiographs). :class:`~covidscreen.inference.predictor.Predictor` calls
:func:`check_input_modality` on every file before decoding it, and the CT series scorer calls
:func:`check_dicom_modality` with the series' tag, so ``predict``, ``explain``, ``evaluate``, the HTTP service and
the DICOM node all refuse the same inputs with the same message.

- A DICOM input whose ``Modality`` tells (CR/DX: radiograph, CT: CT slice) and disagrees is refused
  (:class:`~covidscreen.errors.ModalityError`).
- A PNG/JPEG input, or a DICOM without an informative ``Modality`` (absent, OT, SC), cannot be checked: it is
  accepted with a warning that says what the model reads.
"""

from __future__ import annotations

from pathlib import Path

from ..data.decode import dicom_modality, is_dicom
from ..data.modality import DICOM_MODALITIES, modality_from_dicom
from ..errors import DataError, ModalityError


class ModalityWarning(UserWarning):
    """Inputs whose modality could not be checked against the model's (PNG/JPEG, DICOM without a telling tag)."""


NAMES = {"cxr": "chest radiographs (DICOM CR/DX)", "ct": "CT slices (DICOM CT)"}


def dicom_tags_for(modality: str) -> str:
    """``CR/DX`` or ``CT``: the DICOM Modality values of one of our modalities."""
    return "/".join(tag for tag, m in DICOM_MODALITIES.items() if m == modality)


def check_dicom_modality(tag: str | None, expected: str, source: str) -> str | None:
    """Refuse a DICOM ``Modality`` ``tag`` that contradicts the model's ``expected`` modality.

    Returns:
        None when the tag confirms the modality, else a warning (the tag is absent or says nothing).

    Raises:
        ModalityError: the tag names the other modality, or one no model here reads.
    """
    try:
        found = modality_from_dicom(tag)
    except DataError:
        raise ModalityError(f"{source}: DICOM Modality {tag} cannot be read by this model, which reads "
                            f"{NAMES[expected]}") from None
    if found is None:
        what = f"Modality {tag}" if tag else "no Modality tag"
        return (f"{source}: DICOM file with {what}: cannot check that it is one of the {NAMES[expected]} this "
                "model reads")
    if found != expected:
        raise ModalityError(f"{source}: DICOM Modality {tag} is a {'CT slice' if found == 'ct' else 'radiograph'}, "
                            f"but this model reads {NAMES[expected]}; use a model trained on {found} "
                            f"(DICOM {dicom_tags_for(found)})")
    return None


def check_input_modality(path: str | Path, expected: str) -> str | None:
    """Check one input file against the model's modality (see the module doc).

    Returns:
        None when the file is confirmed to be of ``expected`` modality, else a warning saying why it could not be
        checked (PNG/JPEG, uninformative DICOM tag).

    Raises:
        ModalityError: a DICOM file of another modality.
        ImageDecodeError: a file that claims to be DICOM but whose header cannot be read.
    """
    path = Path(path)
    if is_dicom(path):
        return check_dicom_modality(dicom_modality(path), expected, str(path))
    return f"{path}: not DICOM, so its modality cannot be checked; this model reads {NAMES[expected]}"


def summarise_warnings(warnings: list[str], expected: str) -> str | None:
    """One line for a batch: how many inputs could not be checked, and an example."""
    if not warnings:
        return None
    return (f"{len(warnings)} input(s) could not be checked for modality (PNG/JPEG or DICOM without a telling "
            f"Modality); this model reads {NAMES[expected]} only. E.g. {warnings[0]}")
