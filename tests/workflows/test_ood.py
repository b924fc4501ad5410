"""`workflows/ood.py` `ood_fit_job`: what `covidscreen ood fit` prints, and its refusals (the fit itself:
tests/ood/test_model.py)."""

from pathlib import Path

import pytest

from covidscreen.errors import DataError
from covidscreen.inference.run import OODRecord
from covidscreen.workflows.ood import OODFitOutcome, ood_fit_job


def test_the_summary_names_the_file_detector_threshold_and_flag_rate():
    rec = OODRecord(file="ood.safetensors", sha256="0" * 64, detector="knn", threshold=12.3456, flag_rate=0.05,
                    n_fit=100, n_val=40, val_flag_rate=0.05)
    assert OODFitOutcome(Path("run"), rec).summary() == (f"wrote {Path('run') / 'ood.safetensors'} (knn, threshold "
                                                         "12.35, flags 5.0% of 40 validation images)")


def test_the_job_refuses_an_unknown_detector_and_a_missing_data_folder(tiny_run, tmp_path):
    with pytest.raises(DataError, match="--detector 'odin' is unknown"):
        ood_fit_job(tiny_run, detector="odin", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        ood_fit_job(tiny_run, data=tmp_path / "nowhere", progress=False)
