"""``covidscreen predict RUN FOLDER --output preds.csv [--resume]``: streamed into the CSV, resumable."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from covidscreen.cli import app


def test_predict_streams_into_csv_and_resumes(tiny_run, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (50, 50)).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    first = CliRunner().invoke(app, ["predict", str(tiny_run), str(folder), "--output", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "7 file(s) scored, 1 unreadable, 0 already in" in first.output
    table = pd.read_csv(out)
    assert len(table) == 7 and table["prob_covid"].isna().sum() == 1  # the bad file: empty probabilities
    again = CliRunner().invoke(app, ["predict", str(tiny_run), str(folder), "--output", str(out), "--resume"])
    assert again.exit_code == 0 and "0 file(s) scored, 0 unreadable, 7 already in" in again.output
    assert pd.read_csv(out).equals(table)
    bad = CliRunner().invoke(app, ["predict", str(tiny_run), str(folder), "--resume"])
    assert "needs a CSV --output" in str(bad.exception)
