"""Read a CT series from a folder or a zip of DICOM files, check that it is one coherent series, order its slices.

Checks, each failing with a :class:`SeriesError` that says what is wrong:

- every file is DICOM (other files are skipped and counted; a file with a DICOM preamble that cannot be parsed is
  an error), with pixel data, ImagePositionPatient and ImageOrientationPatient;
- one SeriesInstanceUID (a folder mixing series is refused, naming them and their slice counts);
- one Modality, CT (or absent/OT/SC, which the scorer warns about); radiographs are refused (``ModalityError``);
- one orientation (row/column direction cosines within 1e-3), one PixelSpacing, one image size;
- no two slices at the same position.

Slices are sorted by their position along the slice normal (row cosines x column cosines), so file names and the
direction the scanner moved do not matter. Gaps (a spacing more than 1.5 times the median spacing) are reported,
with how many slices seem to be missing, not refused: a series with a missing slice can still be scored.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..data.decode import LUNG_WINDOW, ct_slice_to_uint8, dicom_modality_of
from ..errors import DataError, ModalityError

ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-3  # mm
GAP_FACTOR = 1.5  # a step this much larger than the median step is a gap
MAX_SLICES = 2000
MAX_ZIP_BYTES = 2 * 1024**3  # uncompressed; a chest CT series is rarely above a few hundred MB


class SeriesError(DataError):
    """A CT series that cannot be read or is not one coherent series."""


@dataclass
class CTSlice:
    """One slice of a series, in order (``index`` 0 is the lowest position along the slice normal)."""

    index: int
    source: str  # file path, or "<zip>:<member>"
    position: float  # mm along the slice normal
    instance_number: int | None
    sop_instance_uid: str
    dataset: Any = field(repr=False)


@dataclass
class CTSeries:
    """A checked, ordered series."""

    source: str
    series_instance_uid: str
    modality: str | None
    slices: list[CTSlice]
    normal: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    spacing: float  # median distance between neighbouring slices (mm)
    gaps: list[dict[str, Any]]
    skipped: list[str]  # files that were not DICOM
    study_instance_uid: str = ""
    patient_id: str = ""

    def __len__(self) -> int:
        return len(self.slices)

    def images(self, window: tuple[float, float] = LUNG_WINDOW) -> list[np.ndarray]:
        """Every slice as a windowed ``uint8`` image, in order."""
        return [ct_slice_to_uint8(s.dataset, window, s.source) for s in self.slices]

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "series_instance_uid": self.series_instance_uid, "modality": self.modality,
                "n_slices": len(self.slices), "slice_spacing_mm": round(self.spacing, 4),
                "pixel_spacing_mm": list(self.pixel_spacing), "gaps": self.gaps, "skipped_files": self.skipped}


def _parse(data: bytes | str, source: str) -> Any:
    try:
        return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise SeriesError(f"{source}: not a readable DICOM file ({exc})") from None


def _has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _read_folder(folder: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    found, skipped = [], []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            head = fh.read(132)
        if not _has_preamble(head):
            skipped.append(str(f))
            continue
        found.append((str(f), _parse(str(f), str(f))))
        if len(found) > MAX_SLICES:
            raise SeriesError(f"{folder}: more than {MAX_SLICES} DICOM files; give one series")
    return found, skipped


def _read_zip(path: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    found, skipped, total = [], [], 0
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > MAX_SLICES * 2:
                raise SeriesError(f"{path}: {len(members)} files in the zip; give one series (at most {MAX_SLICES} "
                                  "slices)")
            for m in members:
                total += m.file_size
                if total > MAX_ZIP_BYTES:
                    raise SeriesError(f"{path}: more than {MAX_ZIP_BYTES // 1024**2} MB uncompressed; give one series")
                data = zf.read(m)
                source = f"{path}:{m.filename}"
                if not _has_preamble(data[:132]):
                    skipped.append(source)
                    continue
                found.append((source, _parse(data, source)))
    except zipfile.BadZipFile as exc:
        raise SeriesError(f"{path}: not a readable zip file ({exc}); give a folder of DICOM slices or a zip of "
                          "them") from None
    return found, skipped


def _floats(ds: Any, tag: str, n: int, source: str) -> np.ndarray:
    value = getattr(ds, tag, None)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise SeriesError(f"{source}: {tag} is missing or malformed (need {n} numbers); slices cannot be ordered "
                          "without it")
    return arr


def order_slices(datasets: list[tuple[str, Any]], source: str) -> tuple[list[CTSlice], np.ndarray, float,
                                                                        list[dict[str, Any]]]:
    """Check geometry and sort by position along the slice normal.

    Returns:
        ``(slices, normal, median spacing, gaps)``.
    """
    orient = [_floats(ds, "ImageOrientationPatient", 6, s) for s, ds in datasets]
    ref = orient[0]
    for (s, _), o in zip(datasets, orient, strict=True):
        if np.abs(o - ref).max() > ORIENTATION_TOLERANCE:
            raise SeriesError(f"{source}: slices have different orientations ({s}: {o.round(4).tolist()} vs "
                              f"{ref.round(4).tolist()}); a series must be one stack of parallel slices")
    normal = np.cross(ref[:3], ref[3:])
    if np.linalg.norm(normal) < 0.5:
        raise SeriesError(f"{source}: ImageOrientationPatient {ref.tolist()} has parallel row and column directions")
    normal = normal / np.linalg.norm(normal)
    positions = np.array([float(_floats(ds, "ImagePositionPatient", 3, s) @ normal) for s, ds in datasets])
    order = np.argsort(positions, kind="stable")
    pos = positions[order]
    steps = np.diff(pos)
    if len(steps) and steps.min() < SPACING_TOLERANCE:
        i = int(np.argmin(steps))
        a, b = datasets[order[i]][0], datasets[order[i + 1]][0]
        raise SeriesError(f"{source}: two slices at the same position ({pos[i]:.2f} mm): {a} and {b}; duplicated "
                          "files, or two series in one folder")
    spacing = float(np.median(steps)) if len(steps) else 0.0
    gaps = []
    for i, step in enumerate(steps):
        if step > GAP_FACTOR * spacing:
            gaps.append({"after_slice": i, "before_slice": i + 1, "from_mm": round(float(pos[i]), 3),
                         "to_mm": round(float(pos[i + 1]), 3), "step_mm": round(float(step), 3),
                         "missing_slices": int(round(step / spacing)) - 1})
    slices = []
    for k, j in enumerate(order):
        s, ds = datasets[j]
        inst = getattr(ds, "InstanceNumber", None)
        slices.append(CTSlice(index=k, source=s, position=float(positions[j]),
                              instance_number=int(inst) if inst not in (None, "") else None,
                              sop_instance_uid=str(getattr(ds, "SOPInstanceUID", "")), dataset=ds))
    return slices, normal, spacing, gaps


def read_series(path: str | Path) -> CTSeries:
    """Read, check and order one series from a folder (searched recursively) or a zip of DICOM files.

    Raises:
        SeriesError: the path, a file or the series fails a check (see the module doc).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        datasets, skipped = _read_folder(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        datasets, skipped = _read_zip(path)
    elif path.exists():
        raise SeriesError(f"{path}: a series is a folder of DICOM slices or a zip of them, not a single file")
    else:
        raise SeriesError(f"{path} does not exist; give a folder of DICOM slices or a zip of them")
    if not datasets:
        raise SeriesError(f"{path}: no DICOM files found ({len(skipped)} other file(s)); a series is a folder or zip "
                          "of DICOM slices")
    uids: dict[str, int] = {}
    for _, ds in datasets:
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        uids[uid] = uids.get(uid, 0) + 1
    if "" in uids:
        raise SeriesError(f"{path}: {uids['']} file(s) have no SeriesInstanceUID; cannot tell which series they "
                          "belong to")
    if len(uids) > 1:
        listing = ", ".join(f"{u} ({n} slices)" for u, n in sorted(uids.items(), key=lambda kv: -kv[1]))
        raise SeriesError(f"{path}: {len(uids)} series are mixed here: {listing}; give one series per folder or zip")
    modalities = {dicom_modality_of(ds) for _, ds in datasets}
    if len(modalities) > 1:
        raise SeriesError(f"{path}: slices of several modalities {sorted(m or 'none' for m in modalities)}")
    modality = next(iter(modalities))
    if modality not in (None, "CT", "OT", "SC"):  # a radiograph or another modality is not a CT series
        raise ModalityError(f"{path}: DICOM Modality {modality}, not a CT series; give CT slices (Modality CT)")
    for s, ds in datasets:
        if "PixelData" not in ds:
            raise SeriesError(f"{s}: no pixel data (not an image slice)")
    shapes = {(int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for _, ds in datasets}
    if len(shapes) > 1:
        raise SeriesError(f"{path}: slices of different sizes {sorted(shapes)}; a series has one image size")
    spacings = [tuple(_floats(ds, "PixelSpacing", 2, s)) for s, ds in datasets]
    if max(np.abs(np.array(spacings) - np.array(spacings[0])).max(1)) > SPACING_TOLERANCE:
        raise SeriesError(f"{path}: slices have different PixelSpacing ({sorted(set(spacings))[:3]}); a series has "
                          "one pixel spacing")
    slices, normal, spacing, gaps = order_slices(datasets, str(path))
    first = datasets[0][1]
    return CTSeries(source=str(path), series_instance_uid=next(iter(uids)), modality=modality, slices=slices,
                    normal=tuple(float(v) for v in normal), pixel_spacing=tuple(float(v) for v in spacings[0]),
                    spacing=spacing, gaps=gaps, skipped=skipped,
                    study_instance_uid=str(getattr(first, "StudyInstanceUID", "")),
                    patient_id=str(getattr(first, "PatientID", "")))
