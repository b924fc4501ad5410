"""The SR and Secondary Capture builders on their own: minimal and odd inputs, UIDs, dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from covidscreen.dicomnet.objects import (
    build_secondary_capture,
    build_sr,
    caption_lines,
    check_uid_root,
)
from covidscreen.dicomnet.scoring import PointInfo, Score
from covidscreen.dicomnet.sr import PRIVATE_CODES
from covidscreen.errors import ConfigError
from tests.conftest import LIVENESS_S

from .srcheck import read_result


def minimal_source() -> Dataset:
    """Only what the node requires: no patient or study attributes at all (their Type 2 forms must be written)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def figure_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((61, 99, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def score(sens: float | None = 0.9, spec: float | None = 0.8) -> Score:
    return Score({"covid": 0.7, "normal": 0.2, "pneumonia": 0.1}, "covid", "covid",
                 PointInfo("youden", 0.41, sens, spec), figure_png(), ["view: lateral"])


def roundtrip(ds: Dataset, tmp_path, name: str) -> tuple[Dataset, list[str]]:
    path = tmp_path / name
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    errors = []
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=LIVENESS_S)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
    return pydicom.dcmread(path), errors


def test_minimal_source_gives_valid_objects_with_empty_type2_attributes(tmp_path):
    src = minimal_source()
    sr, sr_errors = roundtrip(build_sr(src, score(), "run:arch", "a" * 64, "covidscreen 0.1"), tmp_path, "sr.dcm")
    sc, sc_errors = roundtrip(build_secondary_capture(src, score(), "run:arch", "a" * 64), tmp_path, "sc.dcm")
    assert sr_errors == [] and sc_errors == []
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientName == "" and ds.PatientID == "" and ds.AccessionNumber == ""
    assert sc.Rows % 2 == 0 and sc.Columns % 2 == 0 and sc.Rows > 61  # the caption band is added below
    assert sc.pixel_array[-5, -5].tolist() == [0, 0, 0]


def test_missing_validation_figures_are_said_not_invented(tmp_path):
    got = read_result(build_sr(minimal_source(), score(None, None), "run:arch", "a" * 64, "v"), tmp_path / "sr.dcm")
    covid = got["classes"]["COVID-19"]
    assert covid["sensitivity"] is None and covid["specificity"] is None and covid["threshold"] == 0.41
    assert "validation sensitivity not recorded" in got["operating_point"]
    assert any("view: lateral" in line for line in caption_lines(score(), "m", "a" * 64))


def test_highdicom_reads_back_every_value_in_standard_codes(tmp_path):
    src = minimal_source()
    s = Score({"covid": 0.1234567890123456789, "normal": 0.6543210987654321, "pneumonia": 0.2222221122222223},
              "normal", "covid", PointInfo("youden", 0.4123456789012345, 0.875, 0.8125), None,
              ["view: ViewPosition is LL (lateral)", "small_image: tiny"])
    sr, errors = roundtrip(build_sr(src, s, "run@0123456789ab", "f" * 64, "covidscreen 1.2.3"), tmp_path, "sr.dcm")
    assert errors == []
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report (TID 1500)
    got = read_result(tmp_path / "sr.dcm")
    codes = {"COVID-19": ("840539006", "SCT"), "Normal": ("17621005", "SCT"), "Pneumonia": ("233604007", "SCT")}
    assert {k: v["code"] for k, v in got["classes"].items()} == codes
    for meaning, name in (("COVID-19", "covid"), ("Normal", "normal"), ("Pneumonia", "pneumonia")):
        c = got["classes"][meaning]
        assert c["probability"] == pytest.approx(s.probabilities[name], abs=1e-12)
        assert c["unit"] == ("1", "UCUM") and c["image"] == src.SOPInstanceUID
        assert c["present"] == (name == "normal") and c["evaluation_name"] == codes[meaning][0]
        assert c["algorithm"] == {"Algorithm Name": "covidscreen", "Algorithm Version": "covidscreen 1.2.3"}
        assert c["parameters"] == ["model id run@0123456789ab", f"weights sha256 {'f' * 64}",
                                   "operating point youden", "threshold 0.4123456789012345"]
    covid = got["classes"]["COVID-19"]
    assert covid["threshold"] == pytest.approx(0.4123456789012345, abs=1e-12)
    assert (covid["sensitivity"], covid["specificity"]) == (0.875, 0.8125)
    assert got["finding"] == ("17621005", "Normal")
    assert "not a medical device" in got["comment"]
    assert got["decision"].startswith("normal (p(covid) = 0.123 < threshold 0.4123")
    assert got["warnings"] == s.warnings
    assert got["observer"]["Observer Type"] == "Device" and got["observer"]["Device Observer Model Name"] == \
        "run@0123456789ab"
    assert got["procedure"] == "399208008"
    private = {c.value for c in PRIVATE_CODES}
    used = {item.ConceptNameCodeSequence[0].CodeValue for item in _walk(sr)
            if item.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99COVIDSCREEN"}
    assert used and used <= private  # every private code is one of the listed ones


def _walk(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_uid_root():
    assert check_uid_root("1.2.826.0.1.3680043.10.543.") == "1.2.826.0.1.3680043.10.543"
    assert check_uid_root(None) is None
    for bad in ("1.02.3", "abc", "1." * 30):
        with pytest.raises(ConfigError, match="UID root"):
            check_uid_root(bad)
    sr = build_sr(minimal_source(), score(), "m", "a" * 64, "v", uid_root="1.2.3")
    assert sr.SOPInstanceUID.startswith("1.2.3.") and sr.SeriesInstanceUID.startswith("1.2.3.")


def test_secondary_capture_needs_a_figure():
    s = score()
    s.figure_png = None
    with pytest.raises(ValueError, match="no heatmap"):
        build_secondary_capture(minimal_source(), s, "m", "a" * 64)


def test_the_sr_carries_each_sites_validation_figures_and_names_the_weakest(tmp_path):
    from covidscreen.inference.run import run_from_record
    from covidscreen.inference.site_figures import point_site_summary

    sites = {"sites": {"nih": {"n_negative": 130, "n_positive": 0, "specificity": 0.39, "specificity_ci": [0.31, 0.48]},
                       "cohen": {"n_negative": 25, "n_positive": 60, "specificity": 0.6, "specificity_ci": [0.41, 0.77],
                                 "sensitivity": 0.95, "sensitivity_ci": [0.86, 0.98]}},
             "weakest_site": "nih", "note": "worst_site_specificity_0.9: site(s) x cannot reach specificity 0.9"}
    run = run_from_record(tmp_path, {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid",
                                     "image_size": 64, "operating_points": {"youden": 0.41, "default": 0.41},
                                     "operating_point_sites": {"youden": sites}}, "model")
    s = score()
    s.point = PointInfo("youden", 0.41, 0.9, 0.8, point_site_summary(run, "youden"))
    sr, errors = roundtrip(build_sr(minimal_source(), s, "run:arch", "a" * 64, "covidscreen 0.1"), tmp_path, "s.dcm")
    assert errors == []
    content = {}
    for item in _walk(sr):
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        value = item.TextValue if item.ValueType == "TEXT" else (
            float(item.MeasuredValueSequence[0].NumericValue) if item.ValueType == "NUM" else None)
        content.setdefault(meaning, []).append(value)
    assert "specificity 0.39 [0.31, 0.48] on nih" in content["Validation specificity by site"][0]
    assert content["Weakest validation site"] == ["nih"]
    assert content["Validation specificity at weakest site"] == [pytest.approx(0.39)]
    lines = content["Validation figures of one site"]
    assert len(lines) == 2 and lines[0].startswith("cohen: specificity 0.600 [0.410, 0.770] on 25")
    assert "cannot reach" in content["Operating point rule note"][0]


def test_out_of_distribution_is_said_in_plain_words(tmp_path):
    from dataclasses import replace

    from covidscreen.ood import PLAIN_WARNING

    flagged = replace(score(), ood_score=123.4, in_distribution=False)
    sr, errors = roundtrip(build_sr(minimal_source(), flagged, "m", "a" * 64, "v"), tmp_path, "sr.dcm")
    assert errors == []
    items = {it.ConceptNameCodeSequence[0].CodeValue: it for it in _walk(sr)}
    assert PLAIN_WARNING in items["OOD-ASSESSMENT"].TextValue
    assert float(items["OOD-SCORE"].MeasuredValueSequence[0].NumericValue) == 123.4
    assert any(PLAIN_WARNING in line for line in caption_lines(flagged, "m", "a" * 64))
    inside = build_sr(minimal_source(), replace(score(), ood_score=1.0, in_distribution=True), "m", "a" * 64, "v")
    text = next(it.TextValue for it in _walk(inside)
                if it.ConceptNameCodeSequence[0].CodeValue == "OOD-ASSESSMENT")
    assert text.startswith("In distribution")
    plain = build_sr(minimal_source(), score(), "m", "a" * 64, "v")  # a run without an OOD model: no item
    assert "OOD-ASSESSMENT" not in [it.ConceptNameCodeSequence[0].CodeValue for it in _walk(plain)]


def test_result_uids_are_derived_from_input_model_and_operating_point():
    src = minimal_source()
    a, b = build_sr(src, score(), "m", "a" * 64, "v"), build_sr(src, score(), "m", "a" * 64, "v")
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID.startswith("2.25.") and len(a.SOPInstanceUID) <= 64
    other_model = build_sr(src, score(), "m2", "a" * 64, "v")
    other_point = score()
    other_point.point = PointInfo("sensitivity_0.95", 0.12, None, None)
    other_image = build_sr(minimal_source(), score(), "m", "a" * 64, "v")
    uids = {x.SOPInstanceUID for x in (a, other_model, build_sr(src, other_point, "m", "a" * 64, "v"), other_image)}
    assert len(uids) == 4
    sc = build_secondary_capture(src, score(), "m", "a" * 64)
    assert sc.SOPInstanceUID not in uids and sc.SeriesInstanceUID != a.SeriesInstanceUID
    rooted = build_sr(src, score(), "m", "a" * 64, "v", uid_root="1.2.826.0.1.3680043.10.543")
    assert rooted.SOPInstanceUID == build_sr(src, score(), "m", "a" * 64, "v",
                                             uid_root="1.2.826.0.1.3680043.10.543").SOPInstanceUID
    assert rooted.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.543.") and len(rooted.SOPInstanceUID) <= 64
