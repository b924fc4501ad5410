"""Pydantic models of every request parameter and response body (they are the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, PrivateAttr


class SiteFiguresInfo(BaseModel):
    """How an operating point held on one validation site (Wilson 95% intervals; None: no such image there)."""

    site: str
    n_negative: int = Field(description="non-positive validation images of the site")
    n_positive: int = Field(description="positive validation images of the site")
    specificity: float | None = None
    specificity_ci: list[float] | None = None
    sensitivity: float | None = None
    sensitivity_ci: list[float] | None = None


class OperatingPointInfo(BaseModel):
    name: str
    threshold: float | None = Field(description="threshold on the positive class's probability")
    sensitivity: float | None = Field(None, description="sensitivity this point had where it was chosen")
    specificity: float | None = Field(None, description="specificity this point had where it was chosen")
    source: str = Field(description="'validation' (chosen on the run's validation split) or 'local calibration'")
    sites: list[SiteFiguresInfo] = Field(default_factory=list, description="per validation site ([]: not recorded)")
    weakest_site: str | None = Field(None, description="the validation site with the lowest specificity")
    weakest_site_specificity: float | None = Field(None, description="that site's validation specificity")
    site_summary: str | None = Field(None, description="one sentence: the weakest site's specificity next to the "
                                     "pooled one, or why the run has no per-site figures")
    note: str | None = Field(None, description="why the point's rule fell back (None: it did what it states)")


class ModelInfo(BaseModel):
    model_id: str
    kind: str = Field(description="'model' or 'ensemble'")
    architecture: str
    classes: list[str]
    positive_class: str | None
    image_size: int
    modality: str
    backend: str
    weights_sha256: str
    code_version: str
    default_operating_point: str
    operating_points: list[OperatingPointInfo]
    temperature: float
    training_data: dict = Field(description="images per split and per label, split fingerprint, seed")
    audit_warnings: list[str] = Field(description="the data audit's warnings about the training data")
    explain_available: bool
    strip_threshold: float | None = Field(None, description="served with --strip: the STRIP entropy threshold (set "
                                          "on clean validation images); null: inputs are not screened")
    intended_use: str


class FileResult(BaseModel):
    """One uploaded file: a prediction, or the error that prevented it."""

    filename: str
    input_sha256: str | None = None
    probabilities: dict[str, float] | None = None
    decision: str | None = None
    operating_point: str | None = None
    threshold: float | None = None
    sensitivity: float | None = Field(None, description="the operating point's sensitivity on validation")
    specificity: float | None = Field(None, description="the operating point's specificity on validation")
    warnings: list[str] = Field(default_factory=list, description="image-quality warnings, '<code>: <message>'")
    overlay_png: str | None = Field(None, description="/v1/explain: the heatmap overlay, base64 PNG")
    image_png: str | None = Field(None, description="/v1/explain: the X-ray as shown under the overlay, base64 PNG")
    figure_png: str | None = Field(None, description="/v1/explain?figure=true: the figure covidscreen explain writes")
    explained_class: str | None = None
    strip_entropy: float | None = Field(None, description="--strip: STRIP entropy (bits); low = the prediction "
                                        "survives superimposition, as a backdoor trigger's does")
    strip_flag: bool | None = Field(None, description="--strip: True when the entropy is below the threshold set "
                                    "on clean validation images")
    ood_score: float | None = Field(None, description="out-of-distribution score: higher = less like the images the "
                                    "model was trained on; null when the run has no OOD model")
    in_distribution: bool | None = Field(None, description="false: unlike the images this model was validated on: do "
                                         "not rely on this result (a warning says so too)")
    error: str | None = Field(None, description="why this file got no prediction")
    status: int = Field(200, description="HTTP status this file alone would have had")
    #: a DICOM input's Study/Series/SOP Instance UIDs, for the FHIR answer's ImagingStudy reference (not in the JSON)
    _dicom_uids: tuple[str | None, str | None, str | None] | None = PrivateAttr(default=None)


class PredictResponse(BaseModel):
    request_id: str
    model_id: str
    weights_sha256: str
    results: list[FileResult]
    notice: str


class ErrorResponse(BaseModel):
    request_id: str
    error: str = Field(description="what was wrong and what is accepted")
    code: str
    results: list[FileResult] | None = None


class Health(BaseModel):
    status: str
    reasons: list[str] = Field(default_factory=list)
