"""End to end on a tiny poisoned run folder (issue 26): poisoned data through the normal trainer, ``sanitize`` lowers
the attack success and keeps the clean accuracy, the model scan's patch search flags the poisoned model, and the
training-set scan's trigger transplant flags its stamped training images.

The data are synthetic 32 px gratings (``tiny.synthetic_images`` with heavier noise, 300 per class), written as an
ordinary data folder: on the shared X-rays a model this small and this quickly trained is too weak for a defence's
effect to be told from its damage (clean accuracy 0.5-0.7 at 32 px), and a backdoor is not learned before the
validation AUC selects an early epoch. With 630 training images, 2 epochs give a clean model of about 0.9 accuracy
and, with 20% of each class stamped (a 6 px checkerboard in the top-left corner) and relabelled to ``normal``, a
backdoor that sends about 95% of the other classes' test images to ``normal``. The sanitizing budget is the issue's:
5% of the training set (31 validation images of the clean run).

The model scan is called with patches of the trigger's side (6 px): at the scan's default side (5% of the input,
2 px at 32 px) the patch search cannot cover this trigger (3 and 4 px patches reached 0.38 and 0.67 on this model
with the search of the ninth session; docs/security.md).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
from covidscreen.security.backdoor import (
    Attack,
    BackdoorExperiment,
    attack_success,
    load_test_images,
    run_experiment,
    write_clean_set,
)
from covidscreen.security.backdoor import test_figures as clean_figures
from covidscreen.security.patches import judge_patches
from covidscreen.security.sanitize import SanitizeConfig, sanitize
from covidscreen.security.scan import model_patch_success, scan_data
from covidscreen.security.trigger import Trigger

from .tiny import synthetic_images

pytestmark = pytest.mark.slow  # trains a clean and a poisoned run (about a minute of CPU in all)

CLASSES = ["covid", "normal", "pneumonia"]
TARGET = "normal"
TRIGGER = {"size": 90, "value": 250, "corner": "top_left", "reference_size": 480, "pattern": "checkerboard"}
PATCH_SIDE = 6  # the trigger's side at 32 px


def grating_folder(root, n_per_class: int = 300, noise: float = 40.0, seed: int = 0):
    """A data folder (``metadata.csv`` + 32 px PNGs) of noisy gratings whose orientation is the class; every image is
    its own patient."""
    x, y = synthetic_images(n_per_class, len(CLASSES), seed=seed)
    rng = np.random.default_rng(seed + 100)
    x = np.clip(x + rng.normal(0, noise, x.shape), 0, 200).astype(np.uint8)
    root.mkdir(parents=True)
    rows = []
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        name = f"{CLASSES[c]}_{i:04d}.png"
        Image.fromarray(img).save(root / name)
        rows.append({"image": name, "label": CLASSES[c], "patient_id": f"p{i}", "site": "s1", "view": "PA"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The clean run and the poisoned run, trained by ``covidscreen security backdoor``'s workflow, on one thread
    (float sums differ with the thread count, and so do the models: with two threads the attack success after
    sanitizing was 0.33 instead of 0.11)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train(tmp_path_factory.mktemp("sanitize_e2e"))
    finally:
        torch.set_num_threads(threads)


def _train(root):
    """A clean run and one poisoned 20% towards ``normal`` (``root/exp/clean_s0``, ``root/exp/targeted_20``)."""
    exp = BackdoorExperiment(
        train={"data": str(grating_folder(root / "data")), "model": "mobilenet_v2_035", "image_size": 32,
               "epochs": 2, "batch_size": 16, "lr": 3e-3, "samples_per_epoch": None, "train_stages": None,
               "patience": 2, "bootstrap": 0, "audit": False, "augment": False, "seed": 0,
               # float32 on every CPU: the figures below were measured so, and on a CPU with AMX `auto` trains in
               # bfloat16, which gave a clean model with a 6 px patch flipping 92% of its images
               "precision": "fp32",
               # gratings of one class look alike, but no image is a copy of another
               "ood_detector": "none", "group_near_duplicates": False,
               "cache_dir": str(root / "cache")},
        trigger=TRIGGER, clean_seeds=[0],
        attacks=[Attack("targeted_20", fraction=0.2, target=TARGET)])
    out = root / "exp"
    run_experiment(exp, out, log=lambda _msg: None)
    return out


def measure(run, clean_run) -> dict[str, float]:
    """Attack success towards the target on the clean run's test images (true class not the target) and the clean
    test accuracy, at the run's own operating point (as ``predict`` decides)."""
    predictor = Predictor(run, device="cpu")
    images, y = load_test_images(clean_run, predictor)
    return {"asr": attack_success(predictor, images, y, Trigger(**TRIGGER), TARGET)["attack_success_rate"],
            "accuracy": clean_figures(predictor, images, y)["accuracy"]}


def test_sanitize_removes_the_backdoor_of_a_poisoned_run_and_the_patch_scan_flags_it(experiment, tmp_path):
    torch.set_num_threads(1)  # as the fixture (conftest restores the count after the test)
    clean, poisoned = experiment / "clean_s0", experiment / "targeted_20"
    before, clean_model = measure(poisoned, clean), measure(clean, clean)
    # the backdoor works: the trigger sends most images to the target, and not those of the clean model
    assert before["asr"] >= 0.8 and clean_model["asr"] <= 0.1, (before, clean_model)

    # the defender's clean data: 5% of the training set's size, from the clean run's validation split
    clean_set = write_clean_set(clean, tmp_path / "clean_set")
    result = sanitize(poisoned, clean_set, tmp_path / "sanitized", SanitizeConfig(method="fine-pruning", lr=3e-4))
    assert 15 <= result.record["clean_images"] <= 0.05 * load_run(poisoned).split_counts["train"]
    after = measure(tmp_path / "sanitized", clean)
    print(f"\nattack success {before['asr']:.2f} -> {after['asr']:.2f}, clean test accuracy {before['accuracy']:.2f} "
          f"-> {after['accuracy']:.2f} (clean model: {clean_model['asr']:.2f}, {clean_model['accuracy']:.2f}); "
          f"{result.record['details']}")
    assert after["asr"] <= 0.5 and after["asr"] <= before["asr"] - 0.4
    assert after["accuracy"] >= before["accuracy"] - 0.05

    # the model scan's patch search: the poisoned model is flagged against the clean one, towards the target
    patches = {name: model_patch_success(run, side=PATCH_SIDE) for name, run in
               (("clean", clean), ("poisoned", poisoned), ("sanitized", tmp_path / "sanitized"))}
    print({name: {k: round(v, 2) for k, v in p.items()} for name, p in patches.items()})
    verdict = judge_patches(patches["poisoned"], [patches["clean"]])
    assert verdict.flagged and verdict.target == TARGET
    assert max(patches["clean"].values()) <= 0.5  # no patch of this size flips most of a clean model's images
    # scanned again, a searched patch still sends many of the sanitized model's images to the target (0.75 with the
    # ninth session's search; the planted trigger: 0.11), far above the clean model: fine-pruning weakened the
    # backdoor's path more than it removed it (not asserted beyond "lower than before": the figure moves with the
    # thread count, 0.50 with two threads)
    assert patches["sanitized"][TARGET] < patches["poisoned"][TARGET]
    record = json.loads((tmp_path / "sanitized" / "sanitize.json").read_text())
    assert record["source_weights_sha256"] == load_run(poisoned).weights_sha256


def test_the_trigger_transplant_finds_the_stamped_training_images_and_spares_a_clean_set(experiment):
    """The training-set scan's trigger transplant on the poisoned run's training folder: every stamped image (also
    those of the target class, which kept their label) among the flags, at most 5% of the clean images (the issue's
    goal); the clean run on its clean training set: at most 5% flagged."""
    torch.set_num_threads(1)
    poisoned, data = experiment / "targeted_20", experiment / "data" / "targeted_20"
    table = scan_data(poisoned, data, expected_fraction=0.2, patch_side=PATCH_SIDE, record=False)
    stamped = table["path"].isin(set(pd.read_csv(data / "poisoned.csv")["path"])).to_numpy()
    flags = table["transplant_flag"].to_numpy()
    print(f"\ntransplant: {flags[stamped].mean():.2f} of {stamped.sum()} stamped flagged, "
          f"{flags[~stamped].mean():.3f} of {(~stamped).sum()} clean")
    assert stamped.sum() >= 100 and flags[stamped].mean() >= 0.95 and flags[~stamped].mean() <= 0.05
    assert table["transplant_flag"].head(int(stamped.sum())).all()  # the most suspicious first
    clean = scan_data(experiment / "clean_s0", experiment.parent / "data", patch_side=PATCH_SIDE, record=False)
    print(f"clean run on clean data: {clean['transplant_flag'].mean():.3f} flagged")
    assert clean["transplant_flag"].mean() <= 0.05
