"""The per-site summary of a run's operating point: the values and the sentence every surface shows."""

from pathlib import Path

import pytest

from covidscreen.errors import DataError
from covidscreen.inference.run import NO_SITE_FIGURES, run_from_record
from covidscreen.inference.site_figures import point_site_summary

SITES = {"sites": {
    "kermany": {"n_negative": 300, "n_positive": 0, "specificity": 0.99, "specificity_ci": [0.97, 1.0],
                "sensitivity": None, "sensitivity_ci": None},
    "nih": {"n_negative": 130, "n_positive": 0, "specificity": 0.39, "specificity_ci": [0.31, 0.48],
            "sensitivity": None, "sensitivity_ci": None},
    "cohen": {"n_negative": 12, "n_positive": 60, "specificity": 0.0, "specificity_ci": [0.0, 0.24],
              "sensitivity": 0.95, "sensitivity_ci": [0.86, 0.98]}},
    "weakest_site": "nih", "note": None}


def record(**extra) -> dict:
    return {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid", "image_size": 64,
            "format_version": 2, "operating_points": {"youden": 0.15, "worst_site_specificity_0.9": 0.8,
                                                      "default": 0.8},
            "operating_point_figures": {"youden": {"sensitivity": 0.97, "specificity": 0.90}}, **extra}


def test_the_weakest_site_is_named_next_to_the_pooled_specificity(tmp_path):
    run = run_from_record(tmp_path, record(operating_point_sites={"youden": SITES, "default": SITES},
                                           default_operating_point="worst_site_specificity_0.9"), "model")
    s = point_site_summary(run, "youden")
    assert s.name == "youden" and s.threshold == 0.15 and s.weakest.site == "nih"
    assert [f.site for f in s.sites] == ["cohen", "kermany", "nih"]
    assert "specificity 0.39 [0.31, 0.48] on nih" in s.text and "pooled 0.90" in s.text
    assert "too few images to be rated: cohen 0.00 (12 images)" in s.text  # worse, too small, but not hidden
    # "default" resolves to the point it stands for (which here has no per-site record: explained, not empty)
    d = point_site_summary(run, "default")
    assert d.name == "worst_site_specificity_0.9" and d.threshold == 0.8 and d.text == NO_SITE_FIGURES


def test_a_record_without_a_named_default_takes_the_point_with_the_same_threshold(tmp_path):
    run = run_from_record(tmp_path, record(), "model")  # e.g. an ensemble of members' mean thresholds
    assert run.default_point == "worst_site_specificity_0.9"


def test_an_old_run_without_site_figures_is_explained(tmp_path):
    run = run_from_record(tmp_path, record(operating_points={"youden": 0.15, "default": 0.15}), "model")
    s = point_site_summary(run, "default")
    assert s.name == "youden" and s.sites == () and s.weakest is None
    assert "no per-site validation figures" in s.text
    with pytest.raises(DataError, match="not in this run"):
        point_site_summary(run, "nope")
    assert isinstance(run.path, Path)
