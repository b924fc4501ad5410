"""`security/sanitize.py`: each defence on a tiny backdoored model, the run folder it writes, and clear errors for
unusable inputs (a one-class or too small clean set, a run without weights, an ensemble)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidscreen.errors import CheckpointError, DataError
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.inference.run import load_run
from covidscreen.models import create_model
from covidscreen.security.integrity import format_provenance, provenance
from covidscreen.security.sanitize import (
    SanitizeConfig,
    accuracy,
    attention_map,
    fine_prune,
    head_inputs,
    ibau,
    nad,
    sanitize,
)
from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

from .tiny import TRIGGER, poison, probs_fn, synthetic_images, train_tiny

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def backdoored():
    """A tiny 3-class model with a planted trigger (10% of the training set stamped and relabelled to class 0),
    clean images to sanitize with (24) and test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = synthetic_images(100, 3, seed=0)
        px, py, _ = poison(x, y, 0.1, target=0, seed=0)
        model = train_tiny(px, py, 3, seed=0, epochs=10)
        xt, yt = synthetic_images(40, 3, seed=1)
        xc, yc = synthetic_images(8, 3, seed=5)
        yield {"model": model, "x": torch.from_numpy(xc).float().div(255).unsqueeze(1),
               "y": torch.from_numpy(yc).long(), "xt": xt, "yt": yt}
    finally:
        torch.set_num_threads(threads)


def asr(model, xt, yt) -> float:
    return float((probs_fn(model)(TRIGGER.apply(xt[yt != 0])).argmax(1) == 0).mean())


def test_the_planted_backdoor_works(backdoored):
    assert asr(backdoored["model"], backdoored["xt"], backdoored["yt"]) > 0.95


def test_ibau_unlearns_the_trigger_and_keeps_clean_accuracy(backdoored):
    model = copy.deepcopy(backdoored["model"])
    _, details = ibau(model, backdoored["x"], backdoored["y"], SanitizeConfig(method="i-bau", lr=3e-2, epochs=20))
    after = asr(model, backdoored["xt"], backdoored["yt"])
    clean = float((probs_fn(model)(backdoored["xt"]).argmax(1) == backdoored["yt"]).mean())
    print(f"\nI-BAU: attack success 1.00 -> {after:.2f}, clean accuracy {clean:.2f}, {details}")
    assert after < 0.2 and clean > 0.85
    assert details["last_perturbation_norm"] == pytest.approx(3.0, abs=0.01)  # the L2 ball is respected


def test_fine_pruning_prunes_the_most_dormant_channels_and_keeps_them_pruned(backdoored):
    model = copy.deepcopy(backdoored["model"])
    x, y = backdoored["x"], backdoored["y"]
    activation = head_inputs(model, model.head, x).mean(0)
    _, details = fine_prune(model, model.head, x, y, SanitizeConfig(epochs=3, lr=1e-3))
    pruned_cols = torch.nonzero(model.head.weight.abs().sum(0) == 0)[:, 0]
    assert details["pruned"] == len(pruned_cols) > 0  # still zero after fine-tuning
    # exactly the least active channels on the clean images
    assert set(pruned_cols.tolist()) == set(torch.argsort(activation, stable=True)[:details["pruned"]].tolist())
    assert details["clean_accuracy_after_pruning"] >= details["clean_accuracy_before"] - 0.1 - 1e-6
    assert accuracy(model, x, y) >= 0.9


def test_nad_distils_the_teachers_attention(backdoored):
    model = copy.deepcopy(backdoored["model"])
    x, y = backdoored["x"], backdoored["y"]
    a = torch.rand(4, 8, 5, 5)
    assert torch.allclose(attention_map(a).norm(dim=1), torch.ones(4))  # L2-normalised per image
    layers = ["features.2", "features.5", "features.8"]
    _, details = nad(model, layers, x, y, SanitizeConfig(method="nad", epochs=3, lr=1e-3))
    assert details["layers"] == layers and details["teacher_clean_accuracy"] >= 0.9
    assert accuracy(model, x, y) >= 0.9
    with pytest.raises(Exception, match="attention weight"):
        nad(model, layers[:2], x, y, SanitizeConfig(method="nad", epochs=1))


# -- run folders -------------------------------------------------------------------------------------------------


def _images(root, n_per_class, classes, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for c, label in enumerate(classes):
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 60 + 60 * c, (40, 40), dtype=np.uint8)).save(root / f"{label}{i}.png")
            rows.append({"image": f"{label}{i}.png", "label": label, "patient_id": f"{label}{i}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanitize")
    run = root / "run"
    save_checkpoint(run, create_model("mobilenet_v2_035", pretrained=False, num_classes=3),
                    {"classes": CLASSES, "image_size": 32, "positive_class": "covid", "threshold": 0.5,
                     "split_fingerprint": "abc", "seed": 0, "split_counts": {"train": 600, "val": 100, "test": 100}})
    pd.DataFrame([{"image": "a.png", "path": "/nowhere/a.png", "label": "covid", "split": "val", "group": "a",
                   "site": "s"}]
                 ).to_csv(run / "split.csv", index=False)
    return run


def test_sanitize_writes_a_normal_run_folder_that_records_its_origin(run_dir, tmp_path):
    clean = _images(tmp_path / "clean", 12, CLASSES)
    out = tmp_path / "new"
    proc = run_cli("sanitize", str(run_dir), "--data", str(clean), "--output", str(out), "--method", "finetune",
                   "--epochs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sanitized (finetune) with 30 clean image(s)" in proc.stdout  # 5% of 600: a stratified 30 of 36
    run = load_run(out)
    assert run.sanitized["method"] == "finetune" and run.sanitized["clean_images"] == 30
    assert run.sanitized["source_weights_sha256"] == load_run(run_dir).weights_sha256 != run.weights_sha256
    assert run.load_model() is not None  # the new weights verify against the new sidecar's sha256
    assert (out / "split.csv").is_file() and json.loads((out / "sanitize.json").read_text())["method"] == "finetune"
    assert "sanitized: finetune on 30 clean image(s)" in format_provenance(provenance(out))
    # verify and predict have their subprocess tests (security/test_cli_security.py, test_end_to_end.py)
    verified = run_cli_in_process("verify", str(out))
    assert verified.returncode == 0 and "sanitized: finetune" in verified.stdout
    from covidscreen.reporting.model_card import model_card
    assert "**Sanitized**" in model_card(out)
    predicted = run_cli_in_process("predict", str(out), str(clean / "covid0.png"))
    assert predicted.returncode == 0, predicted.stderr
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "--output", str(out)),
                       "exists and is not empty")


def test_sanitize_rejects_unusable_inputs(run_dir, tmp_path):
    # in process (the command's subprocess run is the test above): each a one-line error, exit 2
    one_class = _images(tmp_path / "one", 20, ["covid"])
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(one_class), "-o",
                                          str(tmp_path / "a")), "only class covid.*every class of the model")
    too_small = _images(tmp_path / "small", 3, CLASSES)
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(too_small), "-o",
                                          str(tmp_path / "b")), "too small.*at least 5 per class")
    other = _images(tmp_path / "other", 6, ["covid", "cat"])
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(other), "-o", str(tmp_path / "c")),
                       "cat are not classes of the model")
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(too_small), "-o", str(tmp_path / "d"),
                                          "--budget", "100"), "exceeds 5% of the run's training set")
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(too_small), "-o", str(tmp_path / "e"),
                                          "--method", "magic"), "unknown; use one of fine-pruning, nad, i-bau")

    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "model.json").write_text((run_dir / "model.json").read_text())
    assert_clean_error(run_cli_in_process("sanitize", str(no_weights), "--data", str(too_small), "-o",
                                          str(tmp_path / "f")), "no weights")
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(json.dumps({"members": [{"path": str(run_dir)}], "classes": CLASSES,
                                                        "image_size": 32}))
    assert_clean_error(run_cli_in_process("sanitize", str(ensemble), "--data", str(too_small), "-o",
                                          str(tmp_path / "g")), "is an ensemble: sanitize each member")
    with pytest.raises(DataError, match="new folder"):
        sanitize(run_dir, too_small, run_dir)
    with pytest.raises(CheckpointError):
        sanitize(tmp_path / "missing", too_small, tmp_path / "h")


def test_the_summary_gives_the_accuracies_and_the_next_steps(tmp_path):
    from covidscreen.security.sanitize import SanitizeResult

    result = SanitizeResult(tmp_path / "new", {"method": "nad", "clean_images": 12, "clean_accuracy_before": 0.5,
                                               "clean_accuracy_after": 0.75})
    first, second = result.summary().splitlines()
    assert first == ("sanitized (nad) with 12 clean image(s): clean-set accuracy 0.500 -> 0.750; new run "
                     f"{tmp_path / 'new'}")
    assert second.startswith(f"next: scan it ('covidscreen scan {tmp_path / 'new'} --reference ...')")
