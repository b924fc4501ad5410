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
    _ds_string,
    build_secondary_capture,
    build_sr,
    caption_lines,
    check_uid_root,
)
from covidscreen.dicomnet.scoring import PointInfo, Score
from covidscreen.errors import ConfigError


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
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
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


def test_missing_validation_figures_are_said_not_invented():
    sr = build_sr(minimal_source(), score(None, None), "run:arch", "a" * 64, "v")
    codes = [it.ConceptNameCodeSequence[0].CodeValue for it in sr.ContentSequence]
    assert "OP-VAL-SENS" not in codes and "OP-VAL-SPEC" not in codes
    text = next(it.TextValue for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "OP-NAME")
    assert "validation sensitivity not recorded" in text
    assert any("view: lateral" in line for line in caption_lines(score(), "m", "a" * 64))


def test_uid_root_and_decimal_strings():
    assert check_uid_root("1.2.826.0.1.3680043.10.543.") == "1.2.826.0.1.3680043.10.543"
    assert check_uid_root(None) is None
    for bad in ("1.02.3", "abc", "1." * 30):
        with pytest.raises(ConfigError, match="UID root"):
            check_uid_root(bad)
    for v in (0.123456789012345678, 1e-9, 0.5, 1.0, 0.999999999999):
        text = _ds_string(v)
        assert len(text) <= 16 and abs(float(text) - v) < 1e-9
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
    for item in sr.ContentSequence:
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
    items = {it.ConceptNameCodeSequence[0].CodeValue: it for it in sr.ContentSequence}
    assert PLAIN_WARNING in items["OOD-ASSESSMENT"].TextValue
    assert float(items["OOD-SCORE"].MeasuredValueSequence[0].NumericValue) == 123.4
    assert any(PLAIN_WARNING in line for line in caption_lines(flagged, "m", "a" * 64))
    inside = build_sr(minimal_source(), replace(score(), ood_score=1.0, in_distribution=True), "m", "a" * 64, "v")
    text = next(it.TextValue for it in inside.ContentSequence
                if it.ConceptNameCodeSequence[0].CodeValue == "OOD-ASSESSMENT")
    assert text.startswith("In distribution")
    plain = build_sr(minimal_source(), score(), "m", "a" * 64, "v")  # a run without an OOD model: no item
    assert "OOD-ASSESSMENT" not in [it.ConceptNameCodeSequence[0].CodeValue for it in plain.ContentSequence]
