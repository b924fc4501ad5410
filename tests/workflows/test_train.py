import json

import numpy as np
import pandas as pd
import pytest
import torch

from covidscreen import runtime
from covidscreen.config import resolve_train_config
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_run
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


def test_bf16_training_end_to_end_repeats_is_recorded_and_predicts_in_float32(tmp_path, monkeypatch, capsys):
    """A tiny bfloat16 run on the CPU (native or emulated): seeded reruns are identical, the log and the sidecar say
    how it trained, and its predictions (final evaluation and Predictor) are exact float32, not bfloat16."""
    root = make_image_folder(tmp_path / "d", n_per_class=12, size=40)
    # ImageNet weights, so that the network's outputs vary between images after so few steps (see below)
    kw = dict(model="efficientnet_lite0", pretrained=True, image_size=48, train_stages=2, lr=3e-3, audit=False)
    a = fit(_cfg(root, tmp_path / "a", precision="bf16", **kw), progress=False)
    b = fit(_cfg(root, tmp_path / "b", precision="bf16", **kw), progress=False)
    assert "precision: bf16 (precision bf16; CPU " in capsys.readouterr().out
    meta = json.loads((a / "model.json").read_text())
    record = meta["training_precision"]
    assert record["requested"] == "bf16" and record["resolved"] == "bf16" and record["device"] == "cpu"
    assert record["cpu_capability"] == runtime.cpu_bf16().capability
    assert record["cpu_bf16_units"] == list(runtime.cpu_bf16().units)
    assert meta["config"]["precision"] == "bf16" and load_run(a).training_precision == "bf16"
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    np.testing.assert_array_equal(pa.filter(like="prob_"), pb.filter(like="prob_"))  # seeded: the same run
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(b / "history.csv").drop(columns="seconds"))

    # the same run on a CPU without native bfloat16, precision auto: float32 training, recorded so
    monkeypatch.setattr(runtime, "cpu_bf16", lambda: runtime.CpuBf16("AVX2", ()))
    c = fit(_cfg(root, tmp_path / "c", **kw), progress=False)
    assert json.loads((c / "model.json").read_text())["training_precision"]["resolved"] == "fp32"
    assert load_run(c).training_precision == "fp32"
    pc = pd.read_csv(c / "predictions.csv")
    assert not np.allclose(pa.filter(like="prob_"), pc.filter(like="prob_"), atol=1e-4)  # bf16 really trained
    monkeypatch.undo()

    # predictions of the bf16-trained model: float32, the same as the final evaluation's, unlike bf16 autocast
    paths = [str(root / p) for p in pa["image"]]
    exact = Predictor(a, device="cpu").predict_files(paths, progress=False)
    assert exact["error"].fillna("").eq("").all()
    np.testing.assert_allclose(exact.filter(like="prob_").to_numpy(), pa.filter(like="prob_").to_numpy(), atol=1e-6)
    autocast = Predictor(a, device="cpu", mixed_precision=True)
    autocast.amp = torch.bfloat16  # what --mixed-precision gives on a CPU with native bfloat16
    mixed = autocast.predict_files(paths, progress=False)
    assert np.abs(mixed.filter(like="prob_").to_numpy() - exact.filter(like="prob_").to_numpy()).max() > 1e-5


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
