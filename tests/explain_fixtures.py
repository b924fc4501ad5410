"""Small models and synthetic images for the explanation tests.

- ``tiny_model``: a 3-conv CNN wrapped as a ScreeningModel (own registry spec, Grad-CAM on its last conv block).
- ``trained_corner`` / ``trained_centre``: that CNN trained for a few seconds (deterministically) on synthetic 64 px
  images whose only class signal is a bright marker in the top-left corner, or a blob in the centre.
- ``planted_model``: a model whose Grad-CAM map cannot depend on its weights (the map is the image itself).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from covidscreen.models.registry import ModelSpec, ScreeningModel

SIZE = 64
MARKER = 8  # side of the corner marker in pixels (inside the default 1/8 border band of a 64 px image)


def tiny_backbone(num_classes: int) -> nn.Module:
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        ),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(16, num_classes),
    ))


TINY_SPEC = ModelSpec(name="tiny_cnn", build=tiny_backbone, input_size=SIZE, head="fc", gradcam_layer="features.7",
                      stages=(("features.0",), ("features.3",), ("features.6",)))


def make_tiny(num_classes: int = 2, seed: int = 0) -> ScreeningModel:
    torch.manual_seed(seed)
    return ScreeningModel(TINY_SPEC, tiny_backbone(num_classes), num_classes).eval()


def synthetic_images(n: int, signal: str | None, seed: int) -> np.ndarray:
    """``(n, 64, 64)`` uint8 smooth-noise backgrounds; ``signal`` adds a corner marker or a centre blob."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (n, SIZE // 8, SIZE // 8))
    background = np.kron(noise, np.ones((8, 8)))  # blocky texture, then light smoothing
    background = (background + np.roll(background, 4, 1) + np.roll(background, 4, 2)) / 3
    imgs = np.clip(110 + 25 * background + rng.normal(0, 6, (n, SIZE, SIZE)), 0, 200)
    if signal == "corner":
        imgs[:, :MARKER, :MARKER] = 255
    elif signal == "centre":
        c = SIZE // 2
        imgs[:, c - 5:c + 5, c - 5:c + 5] = 255
    return imgs.astype(np.uint8)


def train_tiny(signal: str, steps: int = 60, seed: int = 0) -> tuple[ScreeningModel, float]:
    """Train the tiny CNN to tell images with ``signal`` (class 1) from plain ones (class 0): a few seconds.

    One thread: tiny convolutions gain nothing from more, and on a shared, busy CPU OpenMP threads that wait for
    each other make training many times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny(signal, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_tiny(signal: str, steps: int, seed: int) -> tuple[ScreeningModel, float]:
    model = make_tiny(2, seed)
    x = np.concatenate([synthetic_images(128, None, seed + 1), synthetic_images(128, signal, seed + 2)])
    y = np.array([0] * 128 + [1] * 128)
    xt = torch.from_numpy(x).float().div(255).unsqueeze(1)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = np.concatenate([synthetic_images(32, None, seed + 3), synthetic_images(32, signal, seed + 4)])
    with torch.no_grad():
        pred = model(torch.from_numpy(test).float().div(255).unsqueeze(1)).argmax(1).numpy()
    return model, float(np.mean(pred == np.array([0] * 32 + [1] * 32)))


@pytest.fixture(scope="session")
def trained_corner() -> ScreeningModel:
    model, acc = train_tiny("corner")
    assert acc >= 0.95, f"the tiny CNN did not learn the corner marker (accuracy {acc})"
    return model


@pytest.fixture(scope="session")
def trained_centre() -> ScreeningModel:
    model, acc = train_tiny("centre")
    assert acc >= 0.95, f"the tiny CNN did not learn the centre blob (accuracy {acc})"
    return model


class _ChannelMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)


class _PlantedNet(nn.Module):
    """Activations are the downsampled image; the head uses |weights|, so every Grad-CAM weight is positive and
    the map is relu(image) whatever the weights are: exactly what the randomisation test must catch."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.AvgPool2d(4), _ChannelMean())
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return a.mean((2, 3)) @ self.fc.weight.abs().t() + self.fc.bias


PLANTED_SPEC = ModelSpec(name="planted", build=_PlantedNet, input_size=SIZE, head="fc", gradcam_layer="features",
                         stages=(("features",),))


@pytest.fixture()
def planted_model() -> ScreeningModel:
    torch.manual_seed(0)
    return ScreeningModel(PLANTED_SPEC, _PlantedNet(2), 2).eval()


def hook_count(model: nn.Module) -> int:
    """Hooks of any kind registered on any module of ``model``."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return sum(len(getattr(m, n, {})) for m in model.modules() for n in names)


def write_synthetic_folder(root, per_class: int = 24, seed: int = 0):
    """A data folder (metadata.csv + PNGs, 60 x 72 px) where every covid image comes from site 'a' and carries a
    corner marker, and normals come from site 'b': confounded on purpose, like the shared data."""
    import pandas as pd
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, signal, site, s in (("covid", "corner", "a", seed), ("normal", None, "b", seed + 1)):
        for i, img in enumerate(synthetic_images(per_class, signal, s)):
            name = f"{label}_{i:02d}.png"
            Image.fromarray(img).resize((72, 60)).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"{site}:{label}{i}", "site": site})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A complete run folder (checkpoint, predictions, report) of a registry model trained briefly at 64 px."""
    from covidscreen.config import TrainConfig
    from covidscreen.workflows.fit import fit

    base = tmp_path_factory.mktemp("explain_run")
    data = write_synthetic_folder(base / "data")
    cfg = TrainConfig(data=str(data), output=str(base / "run"), model="mobilenet_v2_035", pretrained=False,
                      image_size=SIZE, epochs=1, samples_per_epoch=None, batch_size=8, train_stages=None,
                      split=(0.5, 0.25, 0.25), cache_dir=str(base / "cache"), device="cpu", augment=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


def quarter_box_segmenter(images):
    """A stand-in lung segmenter: the 'lungs' are the central box of rows h//4..3h//4 and columns w//4..3w//4 of
    whatever image it is given (a known box, so tests can tell where the model's input came from)."""
    out = []
    for img in images:
        h, w = img.shape
        m = np.zeros((h, w), bool)
        m[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
        out.append(m)
    return out


#: The box of the 60 x 72 synthetic images that ``crop_run``'s model sees: the 5 % border crop removes 3 rows and
#: 4 columns on each side (54 x 64 left), the stand-in lungs are rows 13..40 and columns 16..48 of that, no margin.
CROP_VIEW = (16, 43, 20, 52)


@pytest.fixture()
def fake_lungs(monkeypatch):
    """Explanations of ``crop_run`` load the stand-in segmenter instead of the run's (untrained) copy."""
    from covidscreen.explain import inputs

    monkeypatch.setattr(inputs, "load_segmenter_for", lambda pp, base_dir=None: quarter_box_segmenter)


@pytest.fixture(scope="session")
def crop_run(tmp_path_factory):
    """A complete run folder trained at 64 px on lung-cropped inputs after a 5 % border crop (``CROP_VIEW``).

    Training needs a segmenter checkpoint on disk (its sha256 goes into the cache key and the sidecar, its files are
    copied into the run), so an untrained one is saved; the masks themselves come from
    :func:`quarter_box_segmenter`. Explaining this run needs the ``fake_lungs`` fixture.
    """
    from covidscreen.config import PreprocessConfig, TrainConfig
    from covidscreen.explain import inputs
    from covidscreen.segmentation.checkpoint import save_segmenter
    from covidscreen.segmentation.model import LungSegNet
    from covidscreen.workflows import train as trainer
    from covidscreen.workflows.fit import fit

    base = tmp_path_factory.mktemp("explain_crop_run")
    data = write_synthetic_folder(base / "data")
    torch.manual_seed(0)
    save_segmenter(base / "seg", LungSegNet("mobilenet_v2_035", pretrained=False, image_size=64), {})
    cfg = TrainConfig(data=str(data), output=str(base / "run"), model="mobilenet_v2_035", pretrained=False,
                      image_size=SIZE, epochs=1, samples_per_epoch=None, batch_size=8, train_stages=None,
                      split=(0.5, 0.25, 0.25), cache_dir=str(base / "cache"), device="cpu", augment=False,
                      preprocess=PreprocessConfig(roi="lungs-crop", roi_margin=0.0, border_crop=0.05,
                                                  segmentation_model=str(base / "seg")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer, "load_run_segmenter", lambda pp, device="cpu": quarter_box_segmenter)
            mp.setattr(inputs, "load_segmenter_for", lambda pp, base_dir=None: quarter_box_segmenter)  # its report
            return fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
