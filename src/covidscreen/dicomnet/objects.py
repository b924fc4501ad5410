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
from datetime import datetime
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import validate_value

from .. import __version__
from ..errors import ConfigError
from ..ood import PLAIN_WARNING
from .scoring import PointInfo, Score

log = logging.getLogger("covidscreen.dicomnet")

RESEARCH_STATEMENT = ("Research tool, not a medical device: this result was produced by covidscreen for research "
                      "and must not be used for diagnosis or treatment decisions.")
MANUFACTURER = "covidscreen"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
PRIVATE_SCHEME = "99COVIDSCREEN"  # coding scheme designators beginning with 99 are private (PS3.16 8.2)

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


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning[:64]
    return item


def _item(value_type: str, concept: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    return item


def _text(concept: Dataset, text: str) -> Dataset:
    item = _item("TEXT", concept)
    item.TextValue = text
    return item


def _ds_string(value: float) -> str:
    """A decimal string (DS) of at most 16 characters as close to ``value`` as that allows."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.3e}"


def _num(concept: Dataset, value: float, unit: Dataset) -> Dataset:
    item = _item("NUM", concept)
    measured = Dataset()
    measured.NumericValue = _ds_string(value)
    measured.FloatingPointValue = float(value)  # the exact double; NumericValue is limited to 16 characters
    measured.MeasurementUnitsCodeSequence = Sequence([unit])
    item.MeasuredValueSequence = Sequence([measured])
    return item


NO_UNITS = ("1", "UCUM", "no units")


def _class_code(name: str) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in name.upper())
    return f"P-{safe}"[:16]


def _decision_text(score: Score) -> str:
    pt = score.point
    if score.positive_class and pt.threshold is not None:
        p = score.positive_probability
        rel = ">=" if p >= pt.threshold else "<"
        return (f"{score.decision} (p({score.positive_class}) = {p:.3f} {rel} threshold {pt.threshold:.4f} of the "
                f"'{pt.name}' operating point)")
    return f"{score.decision} (most probable class)"


def _validation_text(pt: PointInfo) -> str:
    def f(v: float | None) -> str:
        return "not recorded" if v is None else f"{v:.3f}"

    return (f"operating point '{pt.name}': threshold {f(pt.threshold)}, validation sensitivity {f(pt.sensitivity)}, "
            f"validation specificity {f(pt.specificity)}")


def _rate_ci(v: float, ci: tuple[float, float] | None) -> str:
    return "n/a" if v != v else f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _site_items(pt: PointInfo, unit: Dataset) -> list[Dataset]:
    """How the operating point held on each validation site: one sentence naming the weakest site, its specificity
    as a number, and one line per site (values from :func:`~covidscreen.inference.site_figures.point_site_summary`).
    """
    summary = pt.sites
    if summary is None:
        return []
    items = [_text(_code("OP-SITES", PRIVATE_SCHEME, "Validation specificity by site"), summary.text)]
    weak = summary.weakest
    if weak is not None and weak.specificity == weak.specificity:  # not NaN
        items.append(_text(_code("OP-WEAK-SITE", PRIVATE_SCHEME, "Weakest validation site"), weak.site))
        items.append(_num(_code("OP-WEAK-SPEC", PRIVATE_SCHEME, "Validation specificity at weakest site"),
                          weak.specificity, unit))
    for f in summary.sites:
        items.append(_text(_code("OP-SITE", PRIVATE_SCHEME, "Validation figures of one site"),
                           f"{f.site}: specificity {_rate_ci(f.specificity, f.specificity_ci)} on {f.n_negative} "
                           f"non-positive images, sensitivity {_rate_ci(f.sensitivity, f.sensitivity_ci)} on "
                           f"{f.n_positive} positive images"))
    if summary.note:
        items.append(_text(_code("OP-NOTE", PRIVATE_SCHEME, "Operating point rule note"), summary.note))
    return items


def _base(src: Dataset, sop_class: str, modality: str, series_uid: str, series_number: int, description: str,
          uid_root: str | None) -> Dataset:
    ds = Dataset()
    _copy_patient_study(src, ds)
    day, clock = _now()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid(uid_root)
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


def ood_items(score: Score, unit: Dataset) -> list[Dataset]:
    """The out-of-distribution assessment as SR content items: a plain-words text and the score (none without an
    OOD model)."""
    if score.in_distribution is None:
        return []
    text = (f"Out of distribution: {PLAIN_WARNING}." if not score.in_distribution
            else "In distribution: the image resembles those the model was validated on.")
    return [_text(_code("OOD-ASSESSMENT", PRIVATE_SCHEME, "Out-of-distribution assessment"), text),
            _num(_code("OOD-SCORE", PRIVATE_SCHEME, "Out-of-distribution score"), score.ood_score, unit)]


def build_sr(src: Dataset, score: Score, model_id: str, weights_sha256: str, code_version: str,
             uid_root: str | None = None, series_uid: str | None = None) -> Dataset:
    """A Comprehensive SR of ``score`` in the study of ``src`` (the received image)."""
    ds = _base(src, ComprehensiveSRStorage, "SR", series_uid or new_uid(uid_root), SR_SERIES_NUMBER,
               "covidscreen AI result (research tool)", uid_root)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    series = Dataset()
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([_reference(src)])
    evidence = Dataset()
    evidence.StudyInstanceUID = src.StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    items = [_text(_code("121106", "DCM", "Comment"), RESEARCH_STATEMENT)]
    unit = _code(*NO_UNITS)
    if score.positive_class:
        items.append(_num(_code("COVID19-PROB", PRIVATE_SCHEME, f"Probability of {score.positive_class}"),
                          score.positive_probability, unit))
    items.append(_text(_code("DECISION", PRIVATE_SCHEME, "Decision at operating point"), _decision_text(score)))
    pt = score.point
    items.append(_text(_code("OP-NAME", PRIVATE_SCHEME, "Operating point"), _validation_text(pt)))
    for code, meaning, value in (("OP-THRESHOLD", "Operating point threshold", pt.threshold),
                                 ("OP-VAL-SENS", "Validation sensitivity at operating point", pt.sensitivity),
                                 ("OP-VAL-SPEC", "Validation specificity at operating point", pt.specificity)):
        if value is not None:
            items.append(_num(_code(code, PRIVATE_SCHEME, meaning), value, unit))
    items += _site_items(pt, unit)
    for name, p in score.probabilities.items():
        items.append(_num(_code(_class_code(name), PRIVATE_SCHEME, f"Probability of class {name}"), p, unit))
    items += [
        _text(_code("111001", "DCM", "Algorithm Name"), "covidscreen"),
        _text(_code("111003", "DCM", "Algorithm Version"), code_version),
        _text(_code("MODEL-ID", PRIVATE_SCHEME, "Model identifier"), model_id),
        _text(_code("WEIGHTS-SHA256", PRIVATE_SCHEME, "Model weights SHA-256"), weights_sha256),
    ]
    items += ood_items(score, unit)
    for w in score.warnings:
        items.append(_text(_code("WARNING", PRIVATE_SCHEME, "Image quality warning"), w))
    image = _item("IMAGE", _code("121112", "DCM", "Source of Measurement"))
    image.ReferencedSOPSequence = Sequence([_reference(src)])
    items.append(image)
    ds.ContentSequence = Sequence(items)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "covidscreen result concepts"
    scheme.CodingSchemeResponsibleOrganization = "covidscreen project"
    ds.CodingSchemeIdentificationSequence = Sequence([scheme])
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
    pt = score.point
    lines = ["RESEARCH TOOL - NOT FOR DIAGNOSIS. covidscreen Grad-CAM heatmap"
             + (f" of {score.positive_class} evidence" if score.positive_class else "")]
    if score.positive_class:
        lines.append(f"p({score.positive_class}) = {score.positive_probability:.3f}; decision: {_decision_text(score)}")
    else:
        lines.append(f"decision: {_decision_text(score)}")
    lines.append(_validation_text(pt))
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
    ds = _base(src, SecondaryCaptureImageStorage, "OT", series_uid or new_uid(uid_root), SC_SERIES_NUMBER,
               "covidscreen heatmap (research tool)", uid_root)
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
