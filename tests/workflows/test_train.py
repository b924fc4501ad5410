import json

import numpy as np
import pandas as pd
import pytest
import torch

from covidscreen.config import resolve_train_config
from covidscreen.models import create_model
from covidscreen.training.finetune import set_trainable_stages
from covidscreen.training.loop import cosine_with_warmup
from covidscreen.training.losses import inverse_frequency_weights
from covidscreen.workflows.fit import fit
from tests.conftest import make_image_folder


def _cfg(root, out, **kw):
    base = dict(data=str(root), output=str(out), model="mobilenet_v2_035", pretrained=False, image_size=32,
                epochs=2, batch_size=4, samples_per_epoch=None, split=[0.5, 0.25, 0.25], train_stages=None)
    base.update(kw)
    return resolve_train_config(None, **base)


def test_corrupt_image_is_skipped_and_counted_and_seeded_runs_repeat(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=12, size=40)
    (root / "images" / "covid_3.png").write_bytes(b"corrupt")
    a = fit(_cfg(root, tmp_path / "a"), progress=False)
    b = fit(_cfg(root, tmp_path / "b"), progress=False)
    skipped = pd.read_csv(a / "skipped.csv")
    assert len(skipped) == 1 and "covid_3.png" in skipped["path"].iloc[0]
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["skipped_files"] == 1
    assert ma["covid_vs_rest"]["roc_auc"] == mb["covid_vs_rest"]["roc_auc"]
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    np.testing.assert_allclose(pa["prob_covid"], pb["prob_covid"], atol=1e-6)
    ha = pd.read_csv(a / "history.csv")
    assert list(ha.columns[:5]) == ["epoch", "train_loss", "val_loss", "val_auc", "val_accuracy"]
    assert json.loads((a / "model.json").read_text())["split_fingerprint"] == \
        json.loads((b / "model.json").read_text())["split_fingerprint"]


def test_learnable_signal_is_learned(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=16, size=40)
    # ImageNet weights: with pretrained BatchNorm statistics a few steps suffice (random BN needs far more)
    run = fit(_cfg(root, tmp_path / "r", model="efficientnet_lite0", pretrained=True, image_size=48, epochs=3,
                   train_stages=2, lr=3e-3), progress=False)
    assert json.loads((run / "metrics.json").read_text())["val"]["covid_vs_rest"]["roc_auc"] > 0.9


def test_frozen_stages_do_not_change():
    model = create_model("resnet18", pretrained=False, num_classes=3)
    trained = set_trainable_stages(model, 1)
    assert trained == ["layer4", "head"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = model(torch.rand(2, 1, 64, 64)).sum()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == (n.startswith("backbone.layer4") or n.startswith("backbone.fc")), n
    with pytest.raises(Exception, match="stages"):
        set_trainable_stages(model, 99)


def test_class_weights_balance_the_classes():
    w = inverse_frequency_weights(np.array([0] * 90 + [1] * 10), 3)
    assert w[0] * 90 == pytest.approx(w[1] * 10) and w[2] == 0
    assert (w[:2] * torch.tensor([90.0, 10.0])).sum() / 100 == pytest.approx(1.0)


def test_cosine_with_warmup_shape():
    f = cosine_with_warmup(100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) < f(20) and f(99) == pytest.approx(0.01, abs=0.01)


def test_a_failed_setup_removes_the_run_folder_it_made_and_keeps_one_that_existed(tmp_path):
    from covidscreen.workflows.train import new_run_folder

    made = tmp_path / "runs" / "model-20261128"
    with pytest.raises(ValueError), new_run_folder(made):
        (made / "split.csv").write_text("written before the failure\n")
        raise ValueError("bad weights")
    assert not (tmp_path / "runs").exists()  # the folder and the runs/ parent this call made

    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's\n")
    with pytest.raises(ValueError), new_run_folder(existing):
        raise ValueError("bad data")
    assert (existing / "notes.txt").read_text() == "the user's\n"

    other = tmp_path / "runs" / "other-run"  # a run that another process started in runs/ meanwhile survives
    with pytest.raises(ValueError), new_run_folder(made):
        other.mkdir()
        (other / "model.safetensors").write_bytes(b"weights")
        raise ValueError("bad data")
    assert not made.exists() and (other / "model.safetensors").read_bytes() == b"weights"

    with new_run_folder(made):  # a setup that succeeds keeps its folder
        pass
    assert made.is_dir()


def test_the_final_evaluation_reuses_the_kept_epochs_validation_predictions(tmp_path, monkeypatch):
    """Model selection already predicted the validation split with the kept weights, in exact float32: finishing
    the run predicts only the test split, and the reused numbers are bit for bit what predicting again gives."""
    from covidscreen.config import TrainConfig
    from covidscreen.workflows import train
    from covidscreen.workflows.fit import fit
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n_per_class=16, size=40)
    calls, checks = [], []
    real_predict, real_final = train.predict_probs, train.final_probs

    def predict_probs(model, images, rows, *args, **kwargs):
        calls.append((kwargs.get("desc"), len(rows)))
        return real_predict(model, images, rows, *args, **kwargs)

    def final_probs(model, data, eval_mask, device, batch_size, val_probs, progress):
        start = len(calls)
        reused = real_final(model, data, eval_mask, device, batch_size, val_probs, progress)
        final_calls = calls[start:]
        fresh = real_final(model, data, eval_mask, device, batch_size, None, progress)
        checks.append((val_probs is not None, final_calls, int(eval_mask.sum()), np.array_equal(reused, fresh)))
        return reused

    monkeypatch.setattr(train, "predict_probs", predict_probs)
    monkeypatch.setattr(train, "final_probs", final_probs)
    cfg = TrainConfig(data=str(data), output=str(tmp_path / "run"), model="squeezenet1_1", pretrained=False,
                      image_size=32, epochs=2, batch_size=8, samples_per_epoch=None, bootstrap=50, device="cpu",
                      cache_dir=str(tmp_path / "cache"), audit=False, site_probe=False)
    run_dir = fit(cfg, progress=False)
    split = pd.read_csv(run_dir / "split.csv")
    n_val, n_test = int((split["split"] == "val").sum()), int((split["split"] == "test").sum())
    (reused_given, final_calls, n_eval, identical), = checks
    assert reused_given and n_eval == n_val + n_test and n_val > 0
    assert final_calls == [("predict test", n_test)]  # no second forward pass over validation
    assert identical
    history = pd.read_csv(run_dir / "history.csv")
    assert [c for c in calls if c[0] == "validate"] == [("validate", n_val)] * len(history)
