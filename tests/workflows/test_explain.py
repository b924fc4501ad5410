"""Tests of covidscreen.workflows.explain and the ``covidscreen explain`` command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.errors import CovidscreenError
from covidscreen.explain import ExplainError
from covidscreen.workflows.explain import explain_files
from tests.conftest import LIVENESS_S
from tests.explain_fixtures import synthetic_images

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _folder(tmp_path, n=3, broken=False):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, img in enumerate(synthetic_images(n, "corner", 20)):
        Image.fromarray(img).resize((50 + 10 * i, 60)).save(folder / ("sub" if i == 0 else ".") / f"x{i}.png")
    Image.fromarray(synthetic_images(1, None, 21)[0]).save(folder / "sub" / "x1.png")  # same stem as ./x1.png
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_folder_gets_pngs_csv_json_and_contact_sheet(tiny_run, tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    table = explain_files(tiny_run, [folder], out, target="covid", checks=2, progress=False)
    assert len(table) == 4 and (table["error"] == "").all()
    assert sorted(table["png"]) == ["x0.png", "x1-2.png", "x1.png", "x2.png"]  # repeated stems stay apart
    for name in table["png"]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 600
    assert (table["target"] == "covid").all()
    probs = table[["prob_covid", "prob_normal"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert table["randomisation_max_spearman"].notna().sum() <= 2
    summary = json.loads((out / "explain.json").read_text())
    assert summary["n_files"] == 4 and summary["method"] == "gradcam" and summary["target"] == "covid"
    sheet = (out / "index.html").read_text()
    assert all(f"href='{n}'" in sheet for n in table["png"])
    assert pd.read_csv(out / "explanations.csv")["path"].tolist() == table["path"].tolist()
    # the out-of-distribution score of every explained image, as predict gives it
    assert table["ood_score"].notna().all() and set(table["in_distribution"]) <= {True, False}


def test_probabilities_match_predict(tiny_run, tmp_path):
    from covidscreen.inference.predictor import Predictor

    folder = _folder(tmp_path)
    table = explain_files(tiny_run, [folder], tmp_path / "out", checks=0, progress=False)
    pred = Predictor(tiny_run, device="cpu").predict_files([folder], progress=False)
    np.testing.assert_allclose(table["prob_covid"], pred["prob_covid"], atol=1e-5)
    assert (table["target"] == table["predicted"]).all()  # default: explain the most probable class


def test_unreadable_file_is_reported_after_the_others_are_written(tiny_run, tmp_path):
    folder = _folder(tmp_path, broken=True)
    out = tmp_path / "out"
    expected = r"1 of 5 file\(s\) could not be read .*broken.jpg: not a readable image"
    with pytest.raises(CovidscreenError, match=expected):
        explain_files(tiny_run, [folder], out, checks=0, progress=False)
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert (table["error"] != "").sum() == 1
    assert len(list(out.glob("*.png"))) == 4
    assert "broken.jpg" in (out / "index.html").read_text()


def test_bad_method_and_class_fail_before_any_work(tiny_run, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, None, 0)[0]).save(img)
    with pytest.raises(ExplainError, match=re.escape("unknown explanation method 'gradcam+'")):
        explain_files(tiny_run, [img], tmp_path / "o1", method="gradcam+", progress=False)
    with pytest.raises(ExplainError, match="class 'pneumonia' is not a class of this model; classes: covid, normal"):
        explain_files(tiny_run, [img], tmp_path / "o2", target="pneumonia", progress=False)
    assert not (tmp_path / "o2").exists()
    with pytest.raises(CovidscreenError, match="does not exist"):
        explain_files(tiny_run, [tmp_path / "missing.png"], tmp_path / "o3", progress=False)


@pytest.mark.skipif(not (SHARED / "dicom").is_dir(), reason="needs ../shared/data/dicom")
def test_dicom_files_are_explained_in_their_own_geometry(tiny_run, tmp_path):
    table = explain_files(tiny_run, [SHARED / "dicom"], tmp_path / "out", method="gradcam++", checks=1,
                          progress=False)
    assert (table["error"] == "").all() and len(table) >= 2
    assert (tmp_path / "out" / "index.html").is_file()


def test_cli_explain(tiny_run, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, "corner", 0)[0]).save(img)
    result = CliRunner().invoke(app, ["explain", str(tiny_run), str(img), "--output", str(tmp_path / "o"),
                                      "--class", "covid", "--method", "eigencam", "--checks", "0"])
    assert result.exit_code == 0, result.output
    assert "1 image(s) explained" in result.output
    assert (tmp_path / "o" / "a.png").is_file() and not (tmp_path / "o" / "index.html").exists()


def test_cli_bad_input_is_one_line_and_exit_code_2(tiny_run, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, None, 0)[0]).save(img)
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run([sys.executable, "-m", "covidscreen", "explain", str(tiny_run), str(img), "--output",
                           str(tmp_path / "o"), "--class", "pneumonia"], capture_output=True, text=True,
                          env={"PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
                               "PATH": "/usr/bin:/bin"}, timeout=LIVENESS_S)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: class 'pneumonia' is not a class of this model")


def test_a_mask_function_replaces_the_central_box(tiny_run, tmp_path):
    folder = _folder(tmp_path)

    def left_half(image):  # a stand-in for a lung segmentation model
        mask = np.zeros(image.shape, bool)
        mask[:, : image.shape[1] // 2] = True
        return mask

    table = explain_files(tiny_run, [folder], tmp_path / "out", checks=0, mask_fn=left_half, progress=False)
    np.testing.assert_allclose(table["border_area"], 0.5, atol=0.02)  # outside the mask: the right half
    assert json.loads((tmp_path / "out" / "explain.json").read_text())["region"] == "chest mask"


def test_a_cropping_run_is_explained_in_the_original_images_geometry(crop_run, fake_lungs, tmp_path):
    """A run trained on lung crops after a border crop: every heatmap is placed back on the 60 x 72 original where
    the model's input came from, the border band (cropped away) gets nothing, and the pages say why."""
    from covidscreen.workflows.explain import VIEW_COLUMNS
    from tests.explain_fixtures import CROP_VIEW

    data = Path(json.loads((crop_run / "model.json").read_text())["data_dir"])
    files = sorted(data.glob("covid_*.png"))[:3] + sorted(data.glob("normal_*.png"))[:3]
    out = tmp_path / "out"
    table = explain_files(crop_run, files, out, checks=2, progress=False)
    assert (table["error"] == "").all() and all((out / name).is_file() for name in table["png"])
    assert [tuple(r) for r in table[list(VIEW_COLUMNS)].to_numpy()] == [(60, 72, *CROP_VIEW)] * len(files)
    finite = table["border_fraction"].dropna()
    assert len(finite) >= 1 and (finite == 0).all()  # the model cannot look at what it never saw
    assert (table["border_area"] == 0).all()  # nor could a map spread evenly over its view
    summary = json.loads((out / "explain.json").read_text())
    assert "border crop of 0.05" in summary["crop"] and summary["border_visible"] is False
    assert "randomisation" in summary["sanity"]  # sanity checks run on the model inputs as before
    assert "The model cannot see the border: it was cropped away" in (out / "index.html").read_text()
    written = pd.read_csv(out / "explanations.csv")
    assert written["view_top"].tolist() == [CROP_VIEW[0]] * len(files)


def test_heatmaps_of_a_cropping_run_have_the_original_size_and_are_empty_outside_the_view(crop_run, fake_lungs):
    from covidscreen.reporting.heatmaps import heatmap_provider
    from tests.explain_fixtures import CROP_VIEW

    data = Path(json.loads((crop_run / "model.json").read_text())["data_dir"])
    fn = heatmap_provider(crop_run, target=None)
    top, bottom, left, right = CROP_VIEW
    peaks = []
    for path in sorted(data.glob("*.png"))[::8]:
        heat = fn(path)
        assert heat.shape == (60, 72) and np.isfinite(heat).all()
        outside = np.ones(heat.shape, bool)
        outside[top:bottom, left:right] = False
        assert heat[outside].max() == 0
        peaks.append(heat[~outside].max())
    assert max(peaks) > 0


def test_explain_job_says_where_to_look_for_heatmaps_or_feature_maps(tiny_run, tmp_path):
    from covidscreen.workflows.explain import explain_job

    one = tmp_path / "a.png"
    Image.fromarray(synthetic_images(1, "corner", 0)[0]).save(one)
    line = explain_job(tiny_run, [str(one)], tmp_path / "o", method="eigencam", checks=0, device="cpu",
                       progress=False)
    assert line == f"1 image(s) explained: {tmp_path / 'o' / 'a.png'}"  # one image: no contact sheet
    line = explain_job(tiny_run, [str(_folder(tmp_path, n=2))], tmp_path / "s", method="eigencam", checks=0,
                       device="cpu", progress=False)
    assert line == f"3 image(s) explained: {tmp_path / 's' / 'index.html'}"  # several: the contact sheet
    line = explain_job(tiny_run, [str(one)], tmp_path / "f", device="cpu", feature_maps="features.4")
    assert line == f"1 feature-map grid(s) of features.4: {tmp_path / 'f'}"
    assert (tmp_path / "f" / "a_features.4.png").is_file()
