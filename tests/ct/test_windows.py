"""The optional mediastinal channel: DICOM CT slices through the lung and the mediastinal window as input channels.

Hand-computed values: lung window (level -600, width 1500) maps -1350..150 HU onto 0..255 (0.17 per HU); the
mediastinal window (level 40, width 400) maps -160..240 HU (0.6375 per HU). Channels are lung, mediastinal, lung.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidscreen.config import PreprocessConfig, resolve_train_config
from covidscreen.ct.score import score_series
from covidscreen.data.decode import decode_dicom_channels, read_ct_channels, read_image, resize_square
from covidscreen.data.preprocess import load_preprocessed, preprocess_with_geometry
from covidscreen.errors import ConfigError, ImageDecodeError
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from tests.ct.conftest import make_ct_folder, tiny_fit
from tests.ct.synthetic_ct import ct_dataset, phantom_hu, radiograph_dataset, write, write_series

TWO = PreprocessConfig(ct_channels="lung+mediastinal")
# HU of the test strip and its grey level in each window, computed by hand (see the module doc)
STRIP_HU = [-1000, -800, -300, -160, -60, 100, 140, 240]
LUNG_U8 = [60, 94, 178, 202, 219, 246, 253, 255]  # e.g. -800: 550 * 0.17 = 93.5 -> 94 (float32: 93.50001)
MEDIASTINAL_U8 = [0, 0, 0, 0, 64, 166, 191, 255]  # e.g. 100: 260 * 0.6375 = 165.75 -> 166


def strip_slice(tmp_path: Path, level_width: tuple[float, float] | None = (40.0, 400.0)) -> Path:
    hu = np.repeat(np.array(STRIP_HU, np.float32)[None, :], 8, axis=0)  # 8 x 8, one HU value per column
    return write(ct_dataset(hu, window=level_width), tmp_path / "strip.dcm")


def test_read_ct_channels_by_hand(tmp_path):
    path = strip_slice(tmp_path)
    lung, mediastinal, lung_again = read_ct_channels(path, TWO.ct_windows)
    np.testing.assert_array_equal(lung[0], LUNG_U8)
    np.testing.assert_array_equal(mediastinal[0], MEDIASTINAL_U8)
    np.testing.assert_array_equal(lung_again, lung)
    # the lung channel is exactly the one-channel decode of the slice
    np.testing.assert_array_equal(lung, read_image(path))
    # a configured window: level 50, width 300 maps -100..200 HU (0.85 per HU): 100 HU -> 170, -60 -> 34
    custom = PreprocessConfig(ct_channels="lung+mediastinal", ct_mediastinal_window=(50, 300))
    np.testing.assert_array_equal(read_ct_channels(path, custom.ct_windows)[1][0], [0, 0, 0, 0, 34, 170, 204, 255])


def test_without_hounsfield_units_is_refused(tmp_path):
    png = tmp_path / "slice.png"
    Image.fromarray(np.full((16, 16), 120, np.uint8)).save(png)
    with pytest.raises(ImageDecodeError, match="PNG/JPEG .*no Hounsfield units.*40/400"):
        read_ct_channels(png, TWO.ct_windows)
    with pytest.raises(ImageDecodeError, match="no Hounsfield units"):
        load_preprocessed(png, 16, TWO)
    cr = write(radiograph_dataset(16), tmp_path / "cr.dcm")
    with pytest.raises(ImageDecodeError, match="Modality CR holds no Hounsfield units"):
        read_ct_channels(cr, TWO.ct_windows)
    # a one-channel decode handed to a run that reads windows: refused, not replicated into fake channels
    with pytest.raises(ImageDecodeError, match="reads 3 CT windows"):
        preprocess_with_geometry(np.zeros((16, 16), np.uint8), 16, TWO)


def test_preprocessing_is_the_same_per_channel(tmp_path):
    path = write(ct_dataset(phantom_hu(40, opacity=True)), tmp_path / "ph.dcm")
    cfg = PreprocessConfig(ct_channels="lung+mediastinal", border_crop=0.1)
    out = load_preprocessed(path, 24, cfg)
    assert out.shape == (3, 24, 24) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], load_preprocessed(path, 24, PreprocessConfig(border_crop=0.1)))
    np.testing.assert_array_equal(out[2], out[0])
    mediastinal = read_ct_channels(path, cfg.ct_windows)[1][4:36, 4:36]  # 10% of 40 px off every side
    np.testing.assert_array_equal(out[1], resize_square(mediastinal, 24))
    # an in-memory dataset (service, DICOM node) gives the same input as the file
    from_memory = decode_dicom_channels(ct_dataset(phantom_hu(40, opacity=True)), windows=cfg.ct_windows)
    np.testing.assert_array_equal(preprocess_with_geometry(from_memory, 24, cfg)[0], out)


def test_config_validation_and_sidecar_round_trip():
    assert PreprocessConfig().ct_windows is None and PreprocessConfig().channels == 1
    assert TWO.ct_windows == ((-600.0, 1500.0), (40.0, 400.0), (-600.0, 1500.0)) and TWO.channels == 3
    assert not TWO.is_identity and "ct=-600/1500,40/400,-600/1500" in TWO.key()
    assert PreprocessConfig(intensity="histeq").key() == PreprocessConfig(intensity="histeq").key()
    assert "ct=" not in PreprocessConfig(intensity="histeq").key()  # one-channel caches keep their keys
    custom = PreprocessConfig(ct_channels="lung+mediastinal", ct_mediastinal_window=[50, 300])
    assert PreprocessConfig.from_dict(custom.to_dict()) == custom
    assert custom.to_dict()["ct_mediastinal_window"] == [50.0, 300.0]
    for bad, match in [(dict(ct_channels="bone"), "ct_channels 'bone'"),
                       (dict(ct_mediastinal_window=(40, 0)), "width > 0"),
                       (dict(ct_mediastinal_window=(40, 400, 1)), "ct_mediastinal_window"),
                       (dict(ct_channels="lung+mediastinal", roi="lungs-crop", segmentation_model="x"), "roi")]:
        with pytest.raises(ConfigError, match=match):
            PreprocessConfig(**bad).validate()
    with pytest.raises(ConfigError, match="ct_mediastinal_window"):
        PreprocessConfig(ct_mediastinal_window="wide")
    cfg = resolve_train_config(None, ct_channels="lung+mediastinal", ct_mediastinal_window=[50, 350])
    assert cfg.preprocess.ct_windows[1] == (50.0, 350.0)


def make_dicom_ct_folder(root: Path, n_per_class: int = 8) -> Path:
    """DICOM CT slices of two labels (covid: a ground-glass patch), two slices per patient."""
    rows = []
    for label in ("covid", "non_covid"):
        for i in range(n_per_class):
            noise = np.random.default_rng(i).normal(0, 30, (40, 40)).astype(np.float32)
            ds = ct_dataset(phantom_hu(40, opacity=label == "covid") + noise, z=2.5 * i)
            name = f"images/{label}_{i}.dcm"
            write(ds, root / name)
            rows.append({"image": name, "label": label, "patient_id": f"{label}_{i // 2}", "view": "axial"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def two_window_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ct2win")
    return tiny_fit(make_dicom_ct_folder(base / "data"), base / "run", ct_channels="lung+mediastinal",
                    ct_mediastinal_window=[50, 350], audit=True)  # the audit reads the lung-window channel


def test_two_window_run_records_and_uses_its_windows(two_window_run, tmp_path):
    run = load_run(two_window_run)
    assert run.modality == "ct" and (two_window_run / "audit.json").is_file()
    assert run.preprocess.ct_channels == "lung+mediastinal"
    assert run.preprocess.ct_windows == ((-600.0, 1500.0), (50.0, 350.0), (-600.0, 1500.0))
    predictor = Predictor(two_window_run, device="cpu")
    dcm = write(ct_dataset(phantom_hu(40, opacity=True)), tmp_path / "a.dcm")
    png = tmp_path / "b.png"
    Image.fromarray(read_image(dcm)).save(png)
    out = predictor.predict_files([dcm, png], progress=False).set_index("path")
    assert out.loc[str(dcm), "error"] in ("", None) or pd.isna(out.loc[str(dcm), "error"])
    assert 0 <= out.loc[str(dcm), "prob_covid"] <= 1
    assert "no Hounsfield units" in out.loc[str(png), "error"] and pd.isna(out.loc[str(png), "prob_covid"])
    # the same probability as scoring the prepared (3, 32, 32) input by hand
    x = load_preprocessed(dcm, 32, run.preprocess)[None]
    assert predictor.predict_arrays(x)[0, 0] == pytest.approx(out.loc[str(dcm), "prob_covid"], abs=1e-6)


def test_two_window_run_scores_series_with_its_own_windows(two_window_run, tmp_path):
    folder, _, _ = write_series(tmp_path / "s", n=5, opacity_slices=(2,), size=40)
    predictor = Predictor(two_window_run, device="cpu")
    result = score_series(predictor, folder)
    assert result["windows"] == [{"level": -600.0, "width": 1500.0}, {"level": 50.0, "width": 350.0},
                                 {"level": -600.0, "width": 1500.0}]
    assert len(result["slices"]) == 5
    with pytest.raises(ConfigError, match="leave --window out"):
        score_series(predictor, folder, window=(-500.0, 1400.0))


def test_training_on_png_slices_with_two_windows_is_refused(tmp_path):
    data = make_ct_folder(tmp_path / "data", n_per_class=4)
    with pytest.raises(ConfigError, match="needs DICOM CT slices.*8 of 8 images are not DICOM"):
        tiny_fit(data, tmp_path / "run", ct_channels="lung+mediastinal")


def test_two_window_run_exports_to_onnx(two_window_run, tmp_path):
    from covidscreen.inference.onnx import export_onnx

    export_onnx(two_window_run)
    dcm = write(ct_dataset(phantom_hu(40, opacity=True)), tmp_path / "a.dcm")
    torch_p = Predictor(two_window_run, device="cpu").predict_files([dcm], progress=False)
    onnx_p = Predictor(two_window_run, backend="onnx").predict_files([dcm], progress=False)
    assert onnx_p["prob_covid"].iloc[0] == pytest.approx(torch_p["prob_covid"].iloc[0], abs=1e-4)


def test_two_window_run_over_http(two_window_run, tmp_path):
    from fastapi.testclient import TestClient

    from covidscreen.serving import ServeConfig, create_app

    dcm = write(ct_dataset(phantom_hu(40, opacity=True)), tmp_path / "a.dcm").read_bytes()
    png = tmp_path / "b.png"
    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(png)
    app = create_app(ServeConfig(run_dir=two_window_run, db=str(tmp_path / "log.sqlite"), backend="torch"))
    with TestClient(app) as client:
        r = client.post("/v1/predict", files=[("files", ("a.dcm", dcm, "application/octet-stream")),
                                              ("files", ("b.png", png.read_bytes(), "application/octet-stream"))])
    assert r.status_code == 200
    scored, refused = r.json()["results"]
    assert scored["status"] == 200 and 0 <= scored["probabilities"]["covid"] <= 1
    assert refused["status"] == 422 and "no Hounsfield units" in refused["error"] and "50/350" in refused["error"]
