"""Small synthetic CT slices and series written with pydicom: correct tags, plausible Hounsfield units.

A slice is a body ellipse of soft tissue (40 HU) in air (-1000 HU) with two lungs (-800 HU); ``opacity`` adds a
ground-glass patch (-300 HU) in the right lung. Stored values are ``HU + 1024`` (unsigned 16 bit) with
RescaleIntercept -1024 and RescaleSlope 1, as most scanners write them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AIR, LUNG, SOFT, GGO = -1000, -800, 40, -300
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def phantom_hu(size: int = 64, lungs: bool = True, opacity: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    hu = np.full((size, size), AIR, dtype=np.float32)
    hu[((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.35) ** 2 <= 1] = SOFT
    if lungs:
        for cx in (0.3, 0.7):
            hu[((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.25) ** 2 <= 1] = LUNG
    if opacity:
        hu[((xx - 0.3) / 0.07) ** 2 + ((yy - 0.5) / 0.1) ** 2 <= 1] = GGO
    return hu


def ct_dataset(hu: np.ndarray, z: float = 0.0, series_uid: str | None = None, instance: int = 1,
               orientation: tuple[float, ...] = AXIAL, pixel_spacing: tuple[float, float] = (0.7, 0.7),
               modality: str = "CT", slope: float = 1.0, intercept: float = -1024.0,
               window: tuple[float, float] | None = (40.0, 400.0), study_uid: str = "1.2.3.4") -> Dataset:
    """A CT Image Storage dataset for one slice whose position is ``z`` mm along the slice normal."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "SYNTH001", "Synthetic^Phantom"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.InstanceNumber = instance
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in (np.array([-100.0, -100.0, 0.0]) + z * normal)]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 2.5
    stored = np.round((hu - intercept) / slope).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:  # the scanner's stored (mediastinal) window: CT decoding must ignore it
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, n: int = 8, spacing: float = 2.5, missing: tuple[int, ...] = (),
                 orientation: tuple[float, ...] = AXIAL, opacity_slices: tuple[int, ...] = (),
                 no_lung_slices: tuple[int, ...] = (), series_uid: str | None = None, modality: str = "CT",
                 shuffle_seed: int | None = 0, size: int = 64) -> tuple[Path, str, list[Path]]:
    """Slices 0..n-1 at ``k * spacing`` mm (those in ``missing`` left out), written under shuffled file names.

    Returns:
        ``(folder, SeriesInstanceUID, files in slice order)``.
    """
    uid = series_uid or generate_uid()
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    files: dict[int, Path] = {}
    for name_idx, k in enumerate(order):
        if k in missing:
            continue
        hu = phantom_hu(size, lungs=k not in no_lung_slices, opacity=k in opacity_slices)
        ds = ct_dataset(hu, z=k * spacing, series_uid=uid, instance=int(k) + 1, orientation=orientation,
                        modality=modality)
        files[int(k)] = write(ds, folder / f"IM{name_idx:04d}.dcm")
    return folder, uid, [files[k] for k in sorted(files)]


def radiograph_dataset(size: int = 64, modality: str = "CR") -> Dataset:
    """A chest radiograph (CR/DX) DICOM dataset."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.Modality = modality
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SYNTHCXR", generate_uid(), generate_uid()
    img = (np.linspace(0, 4095, size * size).reshape(size, size)).astype(np.uint16)
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.tobytes()
    return ds
