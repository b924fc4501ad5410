"""Streaming batch scoring into a CSV: same rows as predict_files, resumable after an interruption."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidscreen.errors import DataError
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.stream import predict_to_csv
from tests.serving.runs import make_run


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor(make_run(tmp_path_factory.mktemp("run") / "run"), device="cpu")


@pytest.fixture
def archive(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "archive"
    for i in range(23):
        sub = root / f"day{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (70, 60)).astype(np.uint8)).save(sub / f"{i:03d}.png")
    (root / "day0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def test_rows_match_predict_files(predictor, archive, tmp_path):
    out = tmp_path / "preds.csv"
    summary = predict_to_csv(predictor, [archive], out, batch_size=4, progress=False)
    assert (summary.written, summary.skipped, summary.unreadable) == (24, 0, 1)
    streamed = pd.read_csv(out, keep_default_na=False)
    expected = predictor.predict_files([archive], batch_size=4, progress=False)
    assert list(streamed.columns) == predictor.columns
    assert streamed["path"].tolist() == expected["path"].tolist()
    ok = expected["error"] == ""
    assert np.allclose(streamed.loc[ok, "prob_covid"].astype(float), expected.loc[ok, "prob_covid"])
    assert streamed["prediction"].tolist() == expected["prediction"].tolist()
    assert "broken.png" in streamed.loc[~ok, "error"].iloc[0]


def test_resume_skips_scored_files_and_rescores_a_cut_row(predictor, archive, tmp_path):
    out = tmp_path / "preds.csv"
    predict_to_csv(predictor, [archive], out, batch_size=4, progress=False)
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:11]) + lines[11][:15])  # killed while writing row 11
    summary = predict_to_csv(predictor, [archive], out, resume=True, batch_size=4, progress=False)
    assert (summary.skipped, summary.written) == (10, 14)
    resumed = pd.read_csv(out, keep_default_na=False)
    assert sorted(resumed["path"]) == sorted(pd.read_csv(pd.io.common.StringIO(full))["path"])
    assert resumed["path"].is_unique
    again = predict_to_csv(predictor, [archive], out, resume=True, progress=False)
    assert (again.written, again.skipped) == (0, 24)


def test_resume_refuses_another_runs_file(predictor, archive, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("path,prob_a,prob_b,prediction,error\nx.png,0.1,0.9,b,\n")
    with pytest.raises(DataError, match="columns"):
        predict_to_csv(predictor, [archive], out, resume=True, progress=False)
