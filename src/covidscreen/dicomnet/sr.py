"""The result as a TID 1500 Measurement Report (highdicom): what it says, in standard codes where they exist.

Why TID 1500: it is the template that DICOM, the IHE AI Results profile (AIR), highdicom and the viewers that show AI
results (OHIF among them) use for an algorithm's findings on images. A classification is one measurement group (TID
1501) per class: the finding type (SNOMED CT), the probability as a measurement (DCM 122157 "Probability", UCUM
``1``), the decision at the operating point as a qualitative evaluation (finding: present / absent), the algorithm
that made it (TID 4019: name, version, parameters = model id, weights sha256, operating point), and the image it is
about. The observer is the device (TID 1004), not a person. TID 1500's "Qualitative Evaluations" container holds what
has no measurement form: the decided finding (DCM 121071 "Finding"), the research-tool statement (DCM 121106
"Comment"), the decision's reason and the operating point's validation figures as text, image-quality warnings.

:func:`measurement_report` is the one place that decides the content, fed by the prediction (:class:`Score`) and the
model's identity (:class:`ModelIdentity`); a new item (e.g. a per-site figure, an out-of-distribution flag) is added
there. :data:`PRIVATE_CODES` lists every concept that has no standard code (docs/pacs.md shows the table).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr import RelationshipTypeValues as Rel
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ..ood import PLAIN_WARNING
from .scoring import Score

RESEARCH_STATEMENT = ("Research tool, not a medical device: this result was produced by covidscreen for research "
                      "and must not be used for diagnosis or treatment decisions.")
PRIVATE_SCHEME = "99COVIDSCREEN"  # coding scheme designators beginning with 99 are private (PS3.16 8.2)

# -- standard codes ----------------------------------------------------------------------------------------------
COVID19 = Code("840539006", "SCT", "COVID-19")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NORMAL = Code("17621005", "SCT", "Normal")
#: the finding type of each class a covidscreen run may have (its other classes get a private code)
CLASS_CODES = {"covid": COVID19, "covid19": COVID19, "covid-19": COVID19, "pneumonia": PNEUMONIA, "normal": NORMAL}
PRESENT, ABSENT = Code("52101004", "SCT", "Present"), Code("272519000", "SCT", "Absent")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
LUNG = Code("39607008", "SCT", "Lung")
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
DEVICE = Code("121007", "DCM", "Device")

# -- private codes: only where no standard code exists ----------------------------------------------------------
DECISION = Code("DECISION", PRIVATE_SCHEME, "Decision at operating point")
OPERATING_POINT = Code("OP-NAME", PRIVATE_SCHEME, "Operating point")
THRESHOLD = Code("OP-THRESHOLD", PRIVATE_SCHEME, "Operating point threshold")
VAL_SENSITIVITY = Code("OP-VAL-SENS", PRIVATE_SCHEME, "Validation sensitivity at operating point")
VAL_SPECIFICITY = Code("OP-VAL-SPEC", PRIVATE_SCHEME, "Validation specificity at operating point")
WARNING = Code("WARNING", PRIVATE_SCHEME, "Image quality warning")
# how the operating point held on each validation site (inference/site_figures.py)
SITES = Code("OP-SITES", PRIVATE_SCHEME, "Validation specificity by site")
WEAK_SITE = Code("OP-WEAK-SITE", PRIVATE_SCHEME, "Weakest validation site")
WEAK_SPEC = Code("OP-WEAK-SPEC", PRIVATE_SCHEME, "Validation specificity at weakest site")
SITE = Code("OP-SITE", PRIVATE_SCHEME, "Validation figures of one site")
RULE_NOTE = Code("OP-NOTE", PRIVATE_SCHEME, "Operating point rule note")
# whether the image is like those the model was validated on (covidscreen.ood)
OOD_ASSESSMENT = Code("OOD-ASSESSMENT", PRIVATE_SCHEME, "Out-of-distribution assessment")
OOD_SCORE = Code("OOD-SCORE", PRIVATE_SCHEME, "Out-of-distribution score")
PRIVATE_CODES = (DECISION, OPERATING_POINT, THRESHOLD, VAL_SENSITIVITY, VAL_SPECIFICITY, WARNING, SITES, WEAK_SITE,
                 WEAK_SPEC, SITE, RULE_NOTE, OOD_ASSESSMENT, OOD_SCORE)


@dataclass(frozen=True)
class ModelIdentity:
    """What the SR says about the algorithm: ``model_id`` (``Run.model_id``), the weights' sha256, covidscreen's
    version, and the device observer UID (derived from the model id: one device per model)."""

    model_id: str
    weights_sha256: str
    code_version: str
    device_uid: str


def class_code(name: str) -> Code:
    """The finding type of a class: SNOMED CT for COVID-19, pneumonia and normal, else a private code."""
    code = CLASS_CODES.get(name.lower())
    if code is not None:
        return code
    safe = "".join(c if c.isalnum() else "-" for c in name.upper())
    return Code(f"CLASS-{safe}"[:16], PRIVATE_SCHEME, f"covidscreen class {name}"[:64])


def decision_text(score: Score) -> str:
    pt = score.point
    if score.positive_class and pt.threshold is not None:
        p = score.positive_probability
        rel = ">=" if p >= pt.threshold else "<"
        return (f"{score.decision} (p({score.positive_class}) = {p:.3f} {rel} threshold {pt.threshold:.4f} of the "
                f"'{pt.name}' operating point)")
    return f"{score.decision} (most probable class)"


def validation_text(score: Score) -> str:
    pt = score.point

    def f(v: float | None) -> str:
        return "not recorded" if v is None else f"{v:.3f}"

    return (f"operating point '{pt.name}': threshold {f(pt.threshold)}, validation sensitivity {f(pt.sensitivity)}, "
            f"validation specificity {f(pt.specificity)}")


def _rate_ci(v: float, ci: tuple[float, float] | None) -> str:
    return "n/a" if v != v else f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def site_items(score: Score) -> list:
    """How the operating point held on each validation site: one sentence naming the weakest site, its specificity
    as a number, one line per site and the rule's note (values from
    :func:`~covidscreen.inference.site_figures.point_site_summary`); none where the run records no per-site figures.
    """
    summary = score.point.sites
    if summary is None:
        return []
    items = [TextContentItem(SITES, summary.text, relationship_type=Rel.CONTAINS)]
    weak = summary.weakest
    if weak is not None and weak.specificity == weak.specificity:  # not NaN
        items += [TextContentItem(WEAK_SITE, weak.site, relationship_type=Rel.CONTAINS),
                  NumContentItem(WEAK_SPEC, float(weak.specificity), NO_UNITS, relationship_type=Rel.CONTAINS)]
    items += [TextContentItem(SITE, f"{f.site}: specificity {_rate_ci(f.specificity, f.specificity_ci)} on "
                              f"{f.n_negative} non-positive images, sensitivity "
                              f"{_rate_ci(f.sensitivity, f.sensitivity_ci)} on {f.n_positive} positive images",
                              relationship_type=Rel.CONTAINS) for f in summary.sites]
    if summary.note:
        items.append(TextContentItem(RULE_NOTE, summary.note, relationship_type=Rel.CONTAINS))
    return items


def ood_items(score: Score) -> list:
    """The out-of-distribution assessment in plain words and the score (none without an OOD model)."""
    if score.in_distribution is None:
        return []
    text = (f"Out of distribution: {PLAIN_WARNING}." if not score.in_distribution
            else "In distribution: the image resembles those the model was validated on.")
    items = [TextContentItem(OOD_ASSESSMENT, text, relationship_type=Rel.CONTAINS)]
    if score.ood_score is not None and score.ood_score == score.ood_score:  # a NaN score (blank image) has no value
        items.append(NumContentItem(OOD_SCORE, float(score.ood_score), NO_UNITS, relationship_type=Rel.CONTAINS))
    return items


def algorithm(score: Score, model: ModelIdentity) -> AlgorithmIdentification:
    """TID 4019: covidscreen, its version, and the parameters that fix the result: model, weights, operating point."""
    params = [f"model id {model.model_id}", f"weights sha256 {model.weights_sha256}",
              f"operating point {score.point.name}"]
    if score.point.threshold is not None:
        params.append(f"threshold {score.point.threshold!r}")
    return AlgorithmIdentification(name="covidscreen", version=model.code_version, parameters=params)


def measurement_report(src: Dataset, score: Score, model: ModelIdentity, tracking_uid) -> MeasurementReport:
    """The content of the result SR for ``score`` of the image ``src``.

    Args:
        tracking_uid: ``tracking_uid(name)``: the (deterministic) tracking UID of the measurement group ``name``.
    """
    algo = algorithm(score, model)
    source = SourceImageForMeasurementGroup(str(src.SOPClassUID), str(src.SOPInstanceUID))
    pt = score.point
    groups = []
    for name, p in score.probabilities.items():
        finding = class_code(name)
        measurements = [Measurement(PROBABILITY, float(p), NO_UNITS, algorithm_id=algo)]
        if name == score.positive_class:  # the operating point is a threshold on this class's probability
            measurements += [Measurement(code, float(v), NO_UNITS) for code, v in (
                (THRESHOLD, pt.threshold), (VAL_SENSITIVITY, pt.sensitivity), (VAL_SPECIFICITY, pt.specificity))
                if v is not None]
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=tracking_uid(name), identifier=f"covidscreen {name}"),
            finding_type=finding, algorithm_id=algo, finding_sites=[FindingSite(LUNG)] if finding != NORMAL else None,
            measurements=measurements,
            qualitative_evaluations=[QualitativeEvaluation(finding, PRESENT if score.decision == name else ABSENT)],
            source_images=[source]))
    device = ObserverContext(DEVICE, DeviceObserverIdentifyingAttributes(
        uid=model.device_uid, name="covidscreen", manufacturer_name="covidscreen", model_name=model.model_id[:64]))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device),
                               procedure_reported=PLAIN_CHEST_XRAY, imaging_measurements=groups)
    evaluations = ContainerContentItem(QUALITATIVE_EVALUATIONS, relationship_type=Rel.CONTAINS)
    items = [CodeContentItem(FINDING, class_code(score.decision), relationship_type=Rel.CONTAINS),
             TextContentItem(COMMENT, RESEARCH_STATEMENT, relationship_type=Rel.CONTAINS),
             TextContentItem(DECISION, decision_text(score), relationship_type=Rel.CONTAINS),
             TextContentItem(OPERATING_POINT, validation_text(score), relationship_type=Rel.CONTAINS)]
    items += site_items(score) + ood_items(score)
    items += [TextContentItem(WARNING, w, relationship_type=Rel.CONTAINS) for w in score.warnings]
    evaluations.ContentSequence = ContentSequence(items)
    report[0].ContentSequence.append(evaluations)
    return report


def comprehensive_sr(src: Dataset, report: MeasurementReport, series_uid: str, sop_uid: str,
                     series_number: int) -> Dataset:
    """The SR document (Comprehensive SR) holding ``report``, with ``src`` as its evidence."""
    with warnings.catch_warnings():  # highdicom warns about the input's patient name form; the SR copies it as is
        warnings.simplefilter("ignore", UserWarning)
        return hd.sr.ComprehensiveSR(evidence=[src], content=report[0], series_instance_uid=series_uid,
                                     series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
                                     manufacturer="covidscreen", is_complete=True, is_final=False,
                                     is_verified=False)
