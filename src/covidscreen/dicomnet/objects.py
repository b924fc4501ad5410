"""The results as standard DICOM objects, filed into the input's study.

- :func:`build_sr`: a Comprehensive SR (COVID-19 probability and each class's, the decision at the operating point,
  that point's threshold and validation sensitivity/specificity, the model id and weights sha256, the research-tool
  statement, a reference to the image it is about).
- :func:`build_secondary_capture`: a Secondary Capture (RGB) of the Grad-CAM figure with a caption burnt into the
  pixels (probability, decision, operating point, model, research-tool statement).

Both copy the Patient, General Study and Patient Study modules of the input (what a PACS files them by) and nothing
else: series, equipment, content and SOP attributes are the node's own, with new Series and SOP Instance UIDs made
from an organisation root (``uid_root``) or pydicom's UID generator. Type 2 attributes of the copied modules that
the input lacks are written empty, as the IODs require.
"""

from __future__ import annotations

import copy
import io
import logging
import uuid
import warnings
from datetime import datetime
from functools import lru_cache

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import validate_value

from .. import __version__
from ..errors import ConfigError
from ..ood import PLAIN_WARNING
from .scoring import Score
from .sr import COVID19, PRIVATE_SCHEME, ModelIdentity, comprehensive_sr, decision_text, measurement_report
from .sr import validation_text as _validation_text

log = logging.getLogger("covidscreen.dicomnet")

MANUFACTURER = "covidscreen"
SR_SERIES_NUMBER, SC_SERIES_NUMBER, SEG_SERIES_NUMBER = 9901, 9902, 9903

# Patient, General Study and Patient Study modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2): copied from the input.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientBirthTime", "PatientSex", "QualityControlSubject",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription", "ResponsiblePerson",
    "ResponsibleOrganization", "EthnicGroup",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingService", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "PatientSizeCodeSequence", "Occupation", "AdditionalPatientHistory", "PatientSexNeutered", "SmokingStatus",
    "PregnancyStatus", "AdmissionID", "ServiceEpisodeID",
)
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


def check_uid_root(root: str | None) -> str | None:
    """An organisation UID root: digits and dots, no leading zeros, short enough to leave room for a suffix."""
    if root is None or root == "":
        return None
    root = root.rstrip(".")
    parts = root.split(".")
    if len(root) > 40 or not all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts):
        raise ConfigError(f"UID root {root!r} is invalid: expected an organisation root of digits and dots (e.g. "
                          "1.2.826.0.1.3680043.10.543), at most 40 characters, no leading zeros")
    return root


def new_uid(root: str | None) -> str:
    """A new UID under the organisation root, or pydicom's generator."""
    return generate_uid(prefix=f"{root}." if root else None)


#: the namespace of covidscreen's name-based (version 5) UUIDs
RESULT_UUID_NAMESPACE = uuid.UUID("3c0c2a4e-6f1b-5d2e-9a57-6b1f0c7d2e11")


def result_uid(source_sop_uid: str, model_id: str, operating_point: str, kind: str, root: str | None) -> str:
    """The UID of one result object (``kind``: ``sr``, ``sr-series``, ``sc``, ...) of one input, made from the input's
    SOP Instance UID, the model and the operating point: scoring the same image again (after a crash, a resend by the
    PACS) gives the same UIDs, so the PACS replaces or ignores the copy instead of filing a second result.

    Without a root: ``2.25.<UUID as an integer>`` (PS3.5 B.2) of a name-based UUID (RFC 4122 version 5) of these
    values; under an organisation root: pydicom's generator with these values as its entropy sources (a SHA-512 of
    them, ``<root>.<digits>``, 64 characters at most). (pydicom's generator ignores its entropy sources without a
    prefix, hence the UUID.)
    """
    sources = ["covidscreen-result-v1", str(source_sop_uid), str(model_id), str(operating_point), kind]
    if root:
        return generate_uid(prefix=f"{root}.", entropy_srcs=sources)
    return f"2.25.{uuid.uuid5(RESULT_UUID_NAMESPACE, chr(31).join(sources)).int}"


def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _valid(elem) -> bool:
    if elem.VR == "SQ" or elem.value is None or elem.value == "":
        return True
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    try:
        for v in values:
            validate_value(elem.VR, v, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _copy_patient_study(src: Dataset, dst: Dataset) -> None:
    if "SpecificCharacterSet" in src:  # the patient's name is encoded in it
        dst.SpecificCharacterSet = copy.deepcopy(src.SpecificCharacterSet)
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in src:
            elem = src[kw]
            if _valid(elem):
                dst[kw] = copy.deepcopy(elem)
            else:
                # a value the input got wrong (e.g. Patient's Age "62" instead of "062Y") would make the result
                # invalid too: left out (Type 2: written empty); the PACS still has it on the input
                log.warning("input's %s is not a valid %s value; not copied into the results", kw, elem.VR)
    for kw in TYPE2_KEYWORDS:
        if kw not in dst:
            setattr(dst, kw, None)


def _base(src: Dataset, sop_class: str, modality: str, series_uid: str, series_number: int, description: str,
          sop_uid: str) -> Dataset:
    ds = Dataset()
    _copy_patient_study(src, ds)
    day, clock = _now()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, clock
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = day, clock
    ds.ContentDate, ds.ContentTime = day, clock
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "covidscreen DICOM node"
    ds.SoftwareVersions = __version__
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"COVIDSCREEN_{__version__}"[:16]
    return ds


def _reference(src: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return ref


def build_sr(src: Dataset, score: Score, model_id: str, weights_sha256: str, code_version: str,
             uid_root: str | None = None, series_uid: str | None = None) -> Dataset:
    """The result SR of ``score`` in the study of ``src`` (the scored image): a Comprehensive SR holding a TID 1500
    Measurement Report (:func:`~covidscreen.dicomnet.sr.measurement_report` decides its content)."""
    key = (src.SOPInstanceUID, model_id, score.point.name)
    model = ModelIdentity(model_id, weights_sha256, code_version, result_uid("", model_id, "", "device", uid_root))
    report = measurement_report(src, score, model, lambda name: result_uid(*key, f"tracking-{name}", uid_root))
    evidence = Dataset()  # what highdicom reads of the input: its UIDs, patient and study by covidscreen's rules
    _copy_patient_study(src, evidence)
    for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        setattr(evidence, kw, getattr(src, kw))
    ds = comprehensive_sr(evidence, report, series_uid or result_uid(*key, "sr-series", uid_root),
                          result_uid(*key, "sr", uid_root), SR_SERIES_NUMBER)
    # the patient and study modules by covidscreen's rules (what highdicom copied is replaced): values the input got
    # wrong for their VR are left out, Type 2 attributes it lacks are written empty
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in ds:
            delattr(ds, kw)
    _copy_patient_study(src, ds)
    day, clock = _now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, clock
    ds.SeriesDescription = "covidscreen AI result (research tool)"
    ds.SeriesDate, ds.SeriesTime = day, clock
    ds.ManufacturerModelName = "covidscreen DICOM node"
    ds.SoftwareVersions = __version__
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "covidscreen result concepts"
    scheme.CodingSchemeResponsibleOrganization = "covidscreen project"
    ds.CodingSchemeIdentificationSequence = Sequence([scheme])
    ds.file_meta.ImplementationVersionName = f"COVIDSCREEN_{__version__}"[:16]
    return ds


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from matplotlib import font_manager  # matplotlib ships DejaVu Sans: the same font as the figure

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def caption_lines(score: Score, model_id: str, weights_sha256: str) -> list[str]:
    """The caption burnt into the Secondary Capture."""
    lines = ["RESEARCH TOOL - NOT FOR DIAGNOSIS. covidscreen Grad-CAM heatmap"
             + (f" of {score.positive_class} evidence" if score.positive_class else "")]
    if score.positive_class:
        lines.append(f"p({score.positive_class}) = {score.positive_probability:.3f}; decision: {decision_text(score)}")
    else:
        lines.append(f"decision: {decision_text(score)}")
    lines.append(_validation_text(score))
    if score.in_distribution is False:
        lines.append(f"WARNING: {PLAIN_WARNING}")
    lines.append(f"model {model_id}, weights sha256 {weights_sha256[:16]}...")
    lines += [f"warning: {w}" for w in score.warnings]
    return lines


def captioned_figure(png: bytes, lines: list[str]) -> np.ndarray:
    """The figure with a black caption band of ``lines`` below it, as an RGB ``uint8`` array."""
    with Image.open(io.BytesIO(png)) as im:
        figure = im.convert("RGB")
    font = _font(16)
    line_h = 22
    band = line_h * len(lines) + 16
    out = Image.new("RGB", (figure.width, figure.height + band), "black")
    out.paste(figure, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((10, figure.height + 8 + i * line_h), line, fill=(255, 255, 255), font=font)
    arr = np.asarray(out, dtype=np.uint8)
    # even rows and columns: some viewers and codecs mishandle odd-sized RGB frames
    return np.ascontiguousarray(arr[: arr.shape[0] // 2 * 2, : arr.shape[1] // 2 * 2])


def build_secondary_capture(src: Dataset, score: Score, model_id: str, weights_sha256: str,
                            uid_root: str | None = None, series_uid: str | None = None) -> Dataset:
    """A Secondary Capture of the captioned heatmap figure in the study of ``src``.

    Raises:
        ValueError: ``score`` has no figure (heatmaps were turned off).
    """
    if score.figure_png is None:
        raise ValueError("this score has no heatmap figure (the scorer was created with heatmap=False)")
    pixels = captioned_figure(score.figure_png, caption_lines(score, model_id, weights_sha256))
    key = (src.SOPInstanceUID, model_id, score.point.name)
    ds = _base(src, SecondaryCaptureImageStorage, "OT", series_uid or result_uid(*key, "sc-series", uid_root),
               SC_SERIES_NUMBER, "covidscreen heatmap (research tool)", result_uid(*key, "sc", uid_root))
    # the heatmap shows the chest: saying so also tells validators that Laterality (2C, paired parts) is not needed
    ds.BodyPartExamined = "CHEST"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = None
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = (f"Grad-CAM heatmap of the referenced image by covidscreen {__version__}, model "
                                f"{model_id}")[:1024]
    source = _reference(src)
    ds.SourceImageSequence = Sequence([source])
    if str(getattr(src, "LossyImageCompression", "")) == "01":  # once lossy, always flagged (PS3.3 C.7.6.1.1.5)
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" in src:
            ds.LossyImageCompressionMethod = copy.deepcopy(src.LossyImageCompressionMethod)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def build_heatmap_segmentation(src: Dataset, score: Score, model_id: str, code_version: str,
                               uid_root: str | None = None) -> Dataset:
    """The Grad-CAM map as a DICOM Segmentation (highdicom) on the pixel grid of ``src``: an overlay that viewers
    (OHIF and others) draw over the original, beside the burnt-in Secondary Capture that every viewer shows.

    A FRACTIONAL segmentation of one segment whose values (0-255 for 0-1) are the map's; its label says that they
    are Grad-CAM evidence for the positive class, not a probability. (A Parametric Map would carry the floats, but
    highdicom 0.28 cannot build one on an image without a frame of reference, which is what a CR or DX image is.)

    Raises:
        ValueError: ``score`` has no heatmap (heatmaps were turned off).
    """
    if score.heatmap is None:
        raise ValueError("this score has no heatmap (the scorer was created with heatmap=False)")
    heat = np.clip(np.asarray(score.heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != (int(src.Rows), int(src.Columns)):
        raise ValueError(f"the heatmap is {heat.shape[1]} x {heat.shape[0]}, the image {src.Columns} x {src.Rows}")
    key = (src.SOPInstanceUID, model_id, score.point.name)
    target = score.positive_class or score.decision
    finding = COVID19 if score.positive_class and target.lower().startswith("covid") else None
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"Grad-CAM evidence for {target} (not a probability)"[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=finding or codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="covidscreen", version=code_version, family=codes.DCM.ArtificialIntelligence,
            parameters={"model id": model_id, "operating point": score.point.name, "method": "Grad-CAM"}))
    source = Dataset()  # what highdicom reads of the input: its image geometry, UIDs, patient and study
    _copy_patient_study(src, source)
    for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Rows", "Columns",
               "Modality", "PixelSpacing", "ImagerPixelSpacing", "PatientOrientation", "FrameOfReferenceUID",
               "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated"):
        if kw in src:
            setattr(source, kw, copy.deepcopy(src[kw].value))
    spacing = getattr(src, "PixelSpacing", None) or getattr(src, "ImagerPixelSpacing", None)
    measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing], slice_thickness=None) \
        if spacing else None
    with warnings.catch_warnings():  # highdicom warns about the input's patient name form; it is copied as is
        warnings.simplefilter("ignore", UserWarning)
        ds = hd.seg.Segmentation(
            source_images=[source], pixel_array=heat, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[segment], series_instance_uid=result_uid(*key, "seg-series", uid_root),
            series_number=SEG_SERIES_NUMBER, sop_instance_uid=result_uid(*key, "seg", uid_root), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name="covidscreen DICOM node", software_versions=__version__,
            device_serial_number=model_id[:64], fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255, pixel_measures=measures,
            series_description="covidscreen heatmap overlay (research tool)")
    for kw in PATIENT_STUDY_KEYWORDS:  # covidscreen's rules for the copied modules, as in the other results
        if kw in ds:
            delattr(ds, kw)
    _copy_patient_study(src, ds)
    if "FrameOfReferenceUID" not in src:  # 2C: needed where there is no patient geometry
        ds.PatientOrientation = copy.deepcopy(src.PatientOrientation) if "PatientOrientation" in src else None
    ds.BodyPartExamined = "CHEST"
    ds.ContentDescription = "Research tool, not a medical device: Grad-CAM evidence, not a diagnosis"[:64]
    return ds
