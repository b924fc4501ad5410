"""`security/sanitize.py`: each defence on a tiny backdoored model, the run folder it writes, and clear errors for
unusable inputs (a one-class or too small clean set, a run without weights, an ensemble)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidscreen.cli.recipes import parse_sets
from covidscreen.errors import CheckpointError, ConfigError, DataError
from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.inference.run import load_run
from covidscreen.models import create_model
from covidscreen.security import sanitize as sanitize_module
from covidscreen.security.integrity import format_provenance, provenance
from covidscreen.security.patches import HALVING, PatchResult
from covidscreen.security.sanitize import (
    NeuronMasks,
    SanitizeConfig,
    SanitizeResult,
    accuracy,
    anp,
    attention_map,
    batchnorm_layers,
    fine_prune,
    finetune,
    found_patches,
    head_inputs,
    ibau,
    nad,
    only_trainable,
    optimise_neuron_masks,
    patch_copies,
    prune_neurons,
    sanitize,
    sanitize_config,
    stamp_patch,
    trainable_names,
    unlearn,
    weight_distance,
)
from tests.test_cli import assert_clean_error, run_cli, run_cli_in_process

from .tiny import TRIGGER, TinyNet, backdoored_tiny, poison, probs_fn, synthetic_images, train_tiny

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def backdoored():
    """A tiny 3-class model with a planted trigger (10% of the training set stamped and relabelled to class 0),
    clean images to sanitize with (24) and test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = backdoored_tiny(3)  # the one test_detectors tests, trained once per process (tiny.py)
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


def test_unlearn_stamps_the_found_patch_with_the_true_labels_and_unlearns_the_trigger(backdoored):
    model = copy.deepcopy(backdoored["model"])
    x, y = backdoored["x"], backdoored["y"]
    # 8 px patches (16 positions at 32 px: seconds of CPU), two rounds of search and fine-tuning, then the last search
    cfg = SanitizeConfig(method="unlearn", unlearn_lr=1e-2, unlearn_rounds=2, unlearn_epochs=10, unlearn_steps=6)
    _, details = unlearn(model, x, y, cfg, side=8, classes=["0", "1", "2"])
    after = asr(model, backdoored["xt"], backdoored["yt"])
    clean = float((probs_fn(model)(backdoored["xt"]).argmax(1) == backdoored["yt"]).mean())
    print(f"\nunlearn: attack success 1.00 -> {after:.2f}, clean accuracy {clean:.2f}, "
          f"{[(r['best_target'], r['best_success'], r['best_position']) for r in details['rounds']]}")
    # measured: 0.06 and 1.00 (the defaults: every position searched, distillation 0.9). One round: 0.34 (at 32 px
    # an 8 px patch flips this tiny model wherever it sits, and the first search's best is not over the trigger);
    # plain fine-tuning as long, at 1e-2: 1.00
    assert after < 0.3 and clean > 0.9
    first, *_, last = details["rounds"]
    assert first["success_per_target"]["0"] == 1.0 and first["stamped"] and last["stamped"] == []
    assert details["rounds_run"] == 2 and details["stopped"] == "round limit" and details["side"] == 8
    assert details["final_best_success"] == last["best_success"]
    # the cross-fitted estimate: both rounds replayed without each of 5 folds of the 24 clean images
    crossfit = details["cross_fit"]
    assert crossfit["folds"] == 5 and crossfit["images"] == 24 and crossfit["refit"] is None
    assert 0 <= crossfit["changed"] <= 24 and crossfit["changed_share"] == crossfit["changed"] / 24
    low, high = crossfit["changed_share_ci"]
    assert low <= crossfit["changed_share"] <= high and crossfit["loss_to_source"] > 0


def test_unlearn_rounds_stop_at_the_bound_and_stamp_copies_that_keep_their_labels(monkeypatch):
    x = torch.zeros(10, 1, 8, 8)
    y = torch.tensor([0, 1] * 5)
    pattern = np.full((2, 2), 0.75, dtype=np.float32)
    script = [[(1, 0.9, (2, 4)), (0, 0.5, (0, 0))], [(1, 0.6, (2, 4)), (0, 0.1, (0, 0))], [(0, 0.2, (6, 6))]]
    searches, tuned = [], []

    def fake_found(model, x_, y_, side, steps, seed, halving):
        searches.append(seed)
        assert halving is False  # every position searched for every step, unless told (unlearn_halving)
        return [PatchResult(t, s, pos, side, pattern) for t, s, pos in script[len(searches) - 1]]

    monkeypatch.setattr(sanitize_module, "found_patches", fake_found)
    monkeypatch.setattr(sanitize_module, "finetune",
                        lambda m, xs, ys, c, unaugmented=None, **k: tuned.append((xs, ys, c, unaugmented)))
    cfg = SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_rounds=5, unlearn_stop=0.3, unlearn_share=0.4,
                         unlearn_patches=2,
                         unlearn_epochs=3, unlearn_random=0.0, unlearn_lr=5e-4)
    _, details = unlearn(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)), x, y, cfg, side=2)
    assert len(searches) == 3 and len(tuned) == 2  # stopped when the best patch fell below 0.3
    assert details["stopped"] == "bound" and details["final_best_success"] == 0.2 and details["rounds_run"] == 2
    # round 0: both patches reach the bound, each stamped on 2 of the 4 chosen copies (40% of 10)
    assert [s["position"] for s in details["rounds"][0]["stamped"]] == [[2, 4], [0, 0]]
    assert [s["position"] for s in details["rounds"][1]["stamped"]] == [[2, 4]]  # 0.1 is below the bound
    xs, ys, c, mask = tuned[0]
    assert len(xs) == 14 and c.epochs == 3 and c.lr == 5e-4  # unlearning's own epochs and learning rate
    assert torch.equal(xs[:10], x) and torch.equal(ys[:10], y)  # every clean image, then the copies
    copies = xs[10:]
    assert torch.all(copies[:2, :, 2:4, 4:6] == 0.75) and torch.all(copies[2:, :, 0:2, 0:2] == 0.75)
    assert float(copies.sum()) == 0.75 * 4 * 4  # nothing else stamped
    stamped_labels = ys[10:]
    assert set(stamped_labels.tolist()) <= {0, 1} and len(stamped_labels) == 4  # the chosen images' own labels
    assert torch.equal(stamp_patch(x[:1], PatchResult(0, 1.0, (6, 6), 2, pattern))[0, 0, 6:, 6:],
                       torch.full((2, 2), 0.75))
    # the copies' patches are stamped again after augmentation: exactly the found patches, nothing of the clean
    # images
    assert not mask[:10].any() and int(mask[10:12, :, 2:4, 4:6].sum()) == 8 and int(mask[12:, :, 0:2, 0:2].sum()) == 8
    assert int(mask.sum()) == 16 and torch.equal(xs[mask], torch.full((16,), 0.75))
    assert [s["random_copies"] for s in details["rounds"][0]["stamped"]] == [0, 0]
    assert details["exact"] is True and details["random_share"] == 0.0


class _Headed(torch.nn.Module):
    """A registry-like model: ``backbone`` with a linear ``head`` (what :func:`linear_head` finds)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential()
        self.backbone.add_module("flat", torch.nn.Flatten())
        self.backbone.add_module("head", torch.nn.Linear(64, 3))
        self.spec = type("Spec", (), {"head": "head"})()

    def forward(self, x):
        return self.backbone(x)


def test_cross_fit_sees_the_drift_that_the_rounds_cause_on_images_they_did_not_see_and_refit_takes_it_back(
        monkeypatch):
    torch.manual_seed(0)
    original = _Headed()
    x, y = torch.rand(30, 1, 8, 8), torch.tensor([0, 1, 2] * 10)
    source = torch.softmax(original(x), 1).detach()
    drift = torch.tensor([0.0, 1.5, 0.0])  # every fine-tuning pushes the answers towards class 1
    replays = []

    def drifting_step(model, xs, ys, used, cfg, r, src, gen):
        replays.append((len(xs), r, src is not None and len(src) == len(xs)))
        with torch.no_grad():
            model.backbone.head.bias += drift
        return [0]

    monkeypatch.setattr(sanitize_module, "unlearn_step", drifting_step)
    model = copy.deepcopy(original)
    drifting_step(model, x, y, None, None, 0, None, None)  # the unlearned model: drifted the same way
    replays.clear()
    patch = PatchResult(1, 0.9, (0, 0), 2, np.zeros((2, 2), np.float32))
    cfg = SanitizeConfig(method="unlearn", unlearn_crossfit=3, unlearn_refit=True)
    record = sanitize_module.cross_fit(model, original, x, y, [(0, [patch])], cfg, source, CLASSES)
    # each fold's rounds replayed on the other two folds (stratified: 4 + 3 + 3 images of each class)
    assert replays == [(18, 0, True), (21, 0, True), (21, 0, True)]
    # held out, every replica answers class 1 where the source answered otherwise: the estimate sees it
    assert record["changed"] > 0 and record["refit"]["changed_after"] < record["changed"]
    bias = torch.tensor([record["refit"]["bias"][c] for c in CLASSES])
    assert torch.allclose(bias, -(drift - drift.mean()), atol=0.05)  # the drift taken back (up to a common shift)
    assert torch.allclose(model(x), original(x) + drift + bias, atol=1e-5)  # added to the head's bias
    after = torch.softmax(model(x), 1)
    assert torch.allclose(after, source, atol=0.02)
    assert record["refit"]["loss_to_source_after"] < record["loss_to_source"] and record["folds"] == 3
    for bad, message in [({"unlearn_crossfit": 1}, "unlearn_crossfit \\(1\\) must be 0 \\(off\\) or at least 2"),
                         ({"unlearn_crossfit": 0, "unlearn_refit": True}, "unlearn_refit fits its bias")]:
        with pytest.raises(ConfigError, match=message):
            SanitizeConfig(method="unlearn", **bad).validate()


def test_unlearn_leaves_a_model_alone_unless_the_first_search_reaches_the_start_bound(monkeypatch):
    x, y = torch.zeros(10, 1, 8, 8), torch.tensor([0, 1] * 5)
    pattern = np.full((2, 2), 0.75, dtype=np.float32)
    found = {"first": 0.40}
    tuned, searches = [], []

    def fake_found(model, x_, y_, side, steps, seed, halving):
        searches.append(seed)
        success = found["first"] if len(searches) == 1 else 0.35  # later searches: above unlearn_stop (0.3)
        return [PatchResult(1, success, (2, 4), side, pattern), PatchResult(0, 0.1, (0, 0), side, pattern)]

    monkeypatch.setattr(sanitize_module, "found_patches", fake_found)
    monkeypatch.setattr(sanitize_module, "finetune", lambda m, xs, ys, c, unaugmented=None, **k: tuned.append(len(xs)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    # 0.40: above unlearn_stop (0.3), below unlearn_start (0.45, the default): no round, the model as it was
    _, details = unlearn(model, x, y, SanitizeConfig(method="unlearn", unlearn_crossfit=0), side=2)
    assert tuned == [] and len(searches) == 1 and details["rounds_run"] == 0 and details["start"] == 0.45
    assert details["stopped"].startswith("start bound") and details["rounds"][0]["stamped"] == []
    summary = SanitizeResult(Path("out"), {"method": "unlearn", "clean_images": 10, "details": details}).summary()
    assert "found no patch trigger" in summary and "40%" in summary and "45%" in summary and "unchanged" in summary
    # the same first search with a lower start bound: a round, and the later rounds judged at unlearn_stop (0.35 is
    # above it: the round limit ends them)
    searches.clear()
    _, details = unlearn(model, x, y, SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_start=0.35,
                                                  unlearn_rounds=2), side=2)
    assert len(tuned) == 2 and details["rounds_run"] == 2 and details["stopped"] == "round limit"
    # a first search at the start bound itself counts (>=)
    found["first"], tuned[:] = 0.45, []
    searches.clear()
    _, details = unlearn(model, x, y, SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_rounds=1), side=2)
    assert len(tuned) == 1 and details["rounds_run"] == 1


def test_finetune_distills_the_soft_targets_and_unlearn_gives_copies_the_answers_on_their_unstamped_images(
        monkeypatch):
    # grey images whose teacher answers by brightness (what survives finetune's shifts and 10% brightness changes),
    # and labels unrelated to it
    levels = torch.linspace(0.05, 0.95, 24)
    x = levels[:, None, None, None].expand(24, 1, 8, 8).clone()
    y = torch.tensor([0, 1] * 12)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        teacher[1].weight.copy_(torch.stack([-torch.ones(64), torch.ones(64)]) * 0.5)
        teacher[1].bias.copy_(torch.tensor([16.0, -16.0]))  # class 1 above mid-grey, confidently
    soft = torch.softmax(teacher(x), 1).detach()
    cfg = SanitizeConfig(method="unlearn", unlearn_crossfit=0, epochs=60, lr=3e-2, batch_size=8)
    # distillation alone (weight 1): the student learns the teacher's answers, not the labels
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    finetune(student, x, y, cfg, soft_targets=soft, distill=1.0)
    with torch.no_grad():
        agree = float((student(x).argmax(1) == soft.argmax(1)).float().mean())
    assert agree >= 0.9 and not torch.equal(soft.argmax(1), y)
    # weight 0: the soft targets change nothing, to the last bit
    torch.manual_seed(1)
    a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    b = copy.deepcopy(a)
    finetune(a, x, y, cfg, soft_targets=soft, distill=0.0)
    finetune(b, x, y, cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    # unlearn: the clean images get the source's answers on them, each copy the answer on its image unstamped
    pattern = np.full((2, 2), 1.0, dtype=np.float32)
    script = iter([[PatchResult(1, 0.9, (2, 4), 2, pattern)], [PatchResult(1, 0.1, (2, 4), 2, pattern)]])
    monkeypatch.setattr(sanitize_module, "found_patches", lambda *a, **k: next(script))
    seen = []
    monkeypatch.setattr(sanitize_module, "finetune", lambda m, xs, ys, c, soft_targets=None, distill=0.0, **k:
                        seen.append((xs, soft_targets, distill)))
    _, details = unlearn(teacher, x, y, SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_distill=0.7,
                                                       unlearn_random=0.0),
                         side=2)
    (xs, targets, weight), = seen
    assert weight == 0.7 and details["distill"] == 0.7 and len(targets) == len(xs) == 48
    assert torch.allclose(targets[:24], soft, atol=1e-6)
    for copy_, target in zip(xs[24:], targets[24:], strict=True):  # find each copy's source image
        source = [i for i in range(24) if torch.equal(copy_[:, :2], x[i, :, :2])]
        assert len(source) == 1 and torch.allclose(target, soft[source[0]], atol=1e-6)
    with pytest.raises(ConfigError, match="unlearn_distill"):
        SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_distill=1.5).validate()


def test_unlearn_freezes_the_first_layers_with_what_comes_before_the_first_free_one(monkeypatch):
    levels = torch.linspace(0.05, 0.95, 20)
    x = levels[:, None, None, None].expand(20, 1, 8, 8).clone()
    y = torch.tensor([0, 1] * 10)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 2, 1),
                                torch.nn.Flatten(), torch.nn.Linear(72, 2))
    everything = {n for n, _ in model.named_parameters()}
    assert trainable_names(model, 0.0) == trainable_names(model, 0.3) == everything  # floor(0.9) = 0 layers
    # a third of 3 layers: the first convolution and the BatchNorm after it (before the first free layer)
    assert trainable_names(model, 0.34) == {"2.weight", "2.bias", "4.weight", "4.bias"}
    assert trainable_names(model, 0.9) == {"4.weight", "4.bias"}
    with only_trainable(model, {"4.weight"}):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["4.weight"]
    assert all(p.requires_grad for p in model.parameters())  # restored
    pattern = np.full((2, 2), 1.0, dtype=np.float32)
    script = iter([[PatchResult(1, 0.9, (0, 0), 2, pattern)], [PatchResult(1, 0.1, (0, 0), 2, pattern)]])
    monkeypatch.setattr(sanitize_module, "found_patches", lambda *a, **k: next(script))
    before = copy.deepcopy(model)
    cfg = SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_freeze=0.34, unlearn_lr=1e-2)
    _, details = unlearn(model, x, y, cfg, side=2)
    changed = {n for (n, p), q in zip(model.named_parameters(), before.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert changed == {"2.weight", "2.bias", "4.weight", "4.bias"}
    assert details["freeze"] == 0.34 and details["trained_weights"] == 4 + 2 + 144 + 2
    # the record: how far the weights moved from the source's (their Euclidean distance)
    moved = torch.cat([(p - a).detach().flatten()
                       for p, a in zip(model.parameters(), before.parameters(), strict=True)])
    assert details["weight_change"] == pytest.approx(float(moved.norm()), rel=1e-5) and details["weight_change"] > 0
    assert weight_distance(before, copy.deepcopy(before)) == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="unlearn_freeze"):
            SanitizeConfig(method="unlearn", unlearn_freeze=bad).validate()


def test_unlearn_freeze_on_the_demonstrations_network_leaves_its_last_blocks_free():
    # docs/security.md's settings: 0.75 leaves features.14-18 and the head of MobileNetV2's 53 weight layers, 0.85
    # features.16-18 and the head
    model = create_model("mobilenet_v2_035", pretrained=False, num_classes=3)
    for share, first in ((0.75, 14), (0.85, 16)):
        free = trainable_names(model, share)
        blocks = {int(n.split(".")[2]) for n in free if n.startswith("backbone.features.")}
        assert blocks == set(range(first, 19)) and "backbone.classifier.1.weight" in free
        whole = {n for n, _ in model.named_parameters() if n.startswith(f"backbone.features.{first}.")}
        assert whole <= free  # the first free block whole, with its BatchNorm scales


def test_found_patches_search_every_position_for_every_step_unless_halving_is_asked(monkeypatch):
    calls = []

    def fake_search(model, fit, test, target, **kwargs):
        calls.append((target, len(fit), len(test), kwargs))
        return PatchResult(target, 0.1 * (target + 1), (0, 0), kwargs["side"], np.zeros((2, 2), np.float32))

    monkeypatch.setattr(sanitize_module, "patch_search", fake_search)
    x, y = torch.zeros(30, 1, 8, 8), torch.tensor([0, 1, 2] * 10)
    found = found_patches(None, x, y, side=2, steps=5, seed=3)
    assert [p.target for p in found] == [2, 1, 0]  # the most successful first
    # each class: fit on half of the 20 images of the other classes (at most 12), measured on the other half
    assert [(t, f, n) for t, f, n, _ in calls] == [(0, 10, 10), (1, 10, 10), (2, 10, 10)]
    assert all(k["prune_after"] == () and k["steps"] == 5 and k["seed"] == 3 + t for t, _, _, k in calls)
    calls.clear()
    found_patches(None, x, y, side=2, steps=5, seed=3, halving=True)
    assert all(k["prune_after"] == HALVING for *_, k in calls)  # successive halving's cuts


def test_unlearn_copies_with_random_contents_and_before_augmentation_only(monkeypatch):
    x, y = torch.full((10, 1, 8, 8), 0.5), torch.tensor([0, 1] * 5)
    pattern = np.full((2, 2), 0.75, dtype=np.float32)
    script = iter([[(1, 0.9, (2, 4))], [(1, 0.1, (2, 4))]])
    monkeypatch.setattr(sanitize_module, "found_patches",
                        lambda *a, **k: [PatchResult(t, s, pos, 2, pattern) for t, s, pos in next(script)])
    tuned = []
    monkeypatch.setattr(sanitize_module, "finetune",
                        lambda m, xs, ys, c, unaugmented=None, **k: tuned.append((xs, unaugmented)))
    cfg = SanitizeConfig(method="unlearn", unlearn_crossfit=0, unlearn_share=0.8, unlearn_random=0.5,
                         unlearn_exact=False)
    _, details = unlearn(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)), x, y, cfg, side=2)
    (xs, mask), = tuned
    assert mask is None  # stamped before the augmentation only: the first measurements' setting
    copies = xs[10:]
    assert len(copies) == 8 and details["rounds"][0]["stamped"][0]["random_copies"] == 4
    patches = copies[:, 0, 2:4, 4:6]
    assert torch.all(patches[4:] == 0.75)  # the found pattern on the last 4 copies
    assert not torch.any(patches[:4] == 0.75) and patches[:4].min() >= 0 and patches[:4].max() <= 1
    assert torch.any((patches[:4] == 0) | (patches[:4] == 1)) and torch.any((patches[:4] > 0) & (patches[:4] < 1))
    outside = copies.clone()
    outside[:, :, 2:4, 4:6] = 0.5
    assert torch.all(outside == 0.5)  # nothing stamped elsewhere


def test_patch_copies_and_finetune_write_the_patch_over_the_augmented_images():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=gen) * 0.5 + 0.25
    patch = PatchResult(0, 1.0, (0, 0), 3, np.ones((3, 3), dtype=np.float32))
    copies, mask, n_random = patch_copies(x, patch, 0.0, gen)
    assert n_random == 0 and torch.all(copies[:, :, :3, :3] == 1) and torch.equal(copies[:, :, 3:], x[:, :, 3:])
    assert torch.equal(mask, copies != x)  # the mask is exactly the stamped pixels
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(256, 2)

        def forward(self, inputs):
            seen.append(inputs.detach().clone())
            return self.fc(inputs.flatten(1))

    labels = torch.tensor([0, 1] * 3)
    finetune(Recorder(), copies, labels, SanitizeConfig(epochs=3, batch_size=6), unaugmented=mask)
    # the augmentation shifts and rescales every batch, yet the patch reaches the model exactly where it was found
    assert all(torch.all(b[:, :, :3, :3] == 1) for b in seen)
    assert any(not torch.allclose(b[:, :, 5:, 5:], x[:, :, 5:, 5:]) for b in seen)  # the rest was augmented
    seen.clear()
    finetune(Recorder(), copies, labels, SanitizeConfig(epochs=3, batch_size=6))
    assert not all(torch.all(b[:, :, :3, :3] == 1) for b in seen)  # without the mask it moves or dims


def test_defence_settings_are_read_as_yaml_and_type_checked_onto_the_defaults():
    cfg = sanitize_config("unlearn", parse_sets(["unlearn_random=0", "unlearn-exact=false", "unlearn_rounds=3",
                                                 "budget=null", "unlearn_side=4", "nad_betas=[1, 2, 3]"]))
    assert (cfg.method, cfg.unlearn_random, cfg.unlearn_exact, cfg.unlearn_rounds, cfg.budget, cfg.unlearn_side,
            cfg.nad_betas) == ("unlearn", 0.0, False, 3, None, 4, (1.0, 2.0, 3.0))
    assert sanitize_config("nad") == SanitizeConfig(method="nad")
    for bad, message in [("nope=1", "unknown key 'nope'"), ("unlearn_random", "expected KEY=VALUE"),
                         ("unlearn_exact=maybe", "'unlearn_exact' has value 'maybe' of the wrong type"),
                         ("unlearn_rounds=2.5", "'unlearn_rounds' has value 2.5 of the wrong type"),
                         ("method=nad", "give the defence with --method"),
                         ("unlearn_random=1.5", "unlearn_random"), ("unlearn_lr=0", "unlearn_lr")]:
        with pytest.raises(ConfigError, match=message):
            sanitize_config("unlearn", parse_sets([bad]))


def test_unlearn_settings_are_checked():
    for bad, message in [({"unlearn_stop": 0.0}, "unlearn_stop"), ({"unlearn_share": 1.5}, "unlearn_share"),
                         ({"unlearn_rounds": 0}, "unlearn_rounds"), ({"unlearn_side": 0}, "at least 1 pixel"),
                         ({"unlearn_patches": 0}, "unlearn_patches"),
                         ({"unlearn_start": 0.2}, "unlearn_start \\(0.2\\) must be a share in \\[unlearn_stop, 1\\]"),
                         ({"unlearn_start": 1.5}, "unlearn_start")]:
        with pytest.raises(ConfigError, match=message):
            SanitizeConfig(method="unlearn", **bad).validate()


@pytest.fixture(scope="module")
def backdoored_bn(backdoored):
    """The same backdoor planted in the tiny model with a BatchNorm after each convolution (ANP's neurons)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = synthetic_images(100, 3, seed=0)
        px, py, _ = poison(x, y, 0.1, target=0, seed=0)
        yield train_tiny(px, py, 3, seed=0, epochs=10, batchnorm=True)
    finally:
        torch.set_num_threads(threads)


def test_anp_masks_and_perturbs_every_batchnorm_neuron_and_leaves_the_layers_as_they_were(backdoored_bn):
    model = copy.deepcopy(backdoored_bn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 32, 32)
    masks = NeuronMasks(model, eps=0.4)
    assert [name for name, _ in masks.layers] == ["features.0.1", "features.3.1", "features.6.1"]
    bn = model.features[0][1]
    inner = model.features[0][0](x)
    with torch.no_grad():
        masks.masks[0][3] = 0.5
        masks.scale_noise[0].fill_(0.25)
        masks.shift_noise[0].fill_(-0.1)
    w, b = state["features.0.1.weight"], state["features.0.1.bias"]
    expected = {False: (w * masks.masks[0], b), True: (w * (masks.masks[0] + 0.25), b * 0.9)}
    for perturbed, (scale, shift) in expected.items():  # y = (m + delta) * gamma * x_hat + (1 + xi) * beta
        masks.perturbed = perturbed
        want = torch.nn.functional.batch_norm(inner, bn.running_mean, bn.running_var, scale.detach(), shift.detach(),
                                              False, 0.0, bn.eps)
        assert torch.allclose(bn(inner), want, atol=1e-6)
    # a signed step of size eps on the perturbations raises the loss, and stays within [-eps, eps]
    y = torch.zeros(4, dtype=torch.long)
    masks.randomize(torch.Generator().manual_seed(0))
    masks.perturbed = True
    loss = torch.nn.functional.cross_entropy(model(x), y)
    masks.ascend(loss)
    with torch.no_grad():
        assert float(torch.nn.functional.cross_entropy(model(x), y)) > float(loss)
    assert all(float(n.detach().abs().max()) <= 0.4 + 1e-6 for n in (*masks.scale_noise, *masks.shift_noise))
    masks.close()
    assert model.state_dict().keys() == state.keys()  # no parametrization left
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(CheckpointError, match="no BatchNorm layer"):
        NeuronMasks(TinyNet(3), eps=0.4)


def test_anp_prunes_the_neurons_with_the_smallest_masks_and_nothing_else(backdoored_bn, backdoored):
    model = copy.deepcopy(backdoored_bn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = backdoored["x"], backdoored["y"]
    cfg = SanitizeConfig(method="anp", anp_iterations=60, anp_threshold=0.9)
    layers, values = optimise_neuron_masks(model, x, y, cfg)
    assert len(values) == 16 + 32 + 32 and float(values.min()) >= 0 and float(values.max()) <= 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # the masks do not touch the model
    assert all(p.requires_grad for p in model.parameters())
    details = prune_neurons(model, layers, values, x, y, cfg)
    assert 0 < details["pruned"] <= details["below_threshold"] == int((values < 0.9).sum())
    zeroed = torch.cat([(m.weight == 0) & (state[f"{name}.weight"] != 0) for name, m in layers])
    assert int(zeroed.sum()) == details["pruned"]
    assert set(torch.nonzero(zeroed)[:, 0].tolist()) == set(torch.argsort(values, stable=True)[:details["pruned"]]
                                                            .tolist())  # the smallest masks
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {f"{name}.weight" for name in details["pruned_per_layer"]}  # the pruned scales only
    assert details["clean_accuracy_after_pruning"] >= details["clean_accuracy_before"] - 0.1 - 1e-6
    # through the defence's entry point, with the paper's threshold
    model = copy.deepcopy(backdoored_bn)
    _, details = anp(model, x, y, SanitizeConfig(method="anp", anp_iterations=60))
    after = asr(model, backdoored["xt"], backdoored["yt"])
    print(f"\nANP (60 iterations): {details}; attack success 1.00 -> {after:.2f}")
    assert details["iterations"] == 60 and details["pruned"] <= details["below_threshold"]
    assert accuracy(model, x, y) >= details["clean_accuracy_before"] - 0.1 - 1e-6


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


def test_sanitize_unlearn_from_the_command_records_every_round(run_dir, tmp_path):
    # in process (the command's subprocess run: the test above)
    clean = _images(tmp_path / "clean", 10, CLASSES)
    out = tmp_path / "unlearned"
    proc = run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "-o", str(out), "--method", "unlearn",
                              "--rounds", "1", "--patch-side", "16", "--epochs", "1", "--set", "unlearn_random=0.25")
    assert proc.returncode == 0, proc.stderr
    assert "sanitized (unlearn) with 30 clean image(s)" in proc.stdout
    assert f"covidscreen calibrate {out} --data DIR" in proc.stdout  # its operating points are the source's
    record = json.loads((out / "sanitize.json").read_text())
    assert record == load_run(out).sanitized  # the sidecar holds the same record
    details = record["details"]
    assert details["side"] == 16 and 1 <= len(details["rounds"]) <= 2 and details["rounds_run"] <= 1
    assert set(details["rounds"][0]["success_per_target"]) == set(CLASSES)
    assert record["settings"]["unlearn_epochs"] == 1 and record["settings"]["epochs"] == 20
    assert record["settings"]["unlearn_random"] == 0.25 and details["random_share"] == 0.25  # --set reaches it
    if details["rounds_run"]:  # the rounds are replayed on 5 folds: the summary says how many answers moved
        assert details["cross_fit"]["folds"] == 5 and "cross-fitted in 5 folds" in proc.stdout
    else:
        assert details["cross_fit"] is None and "cross-fitted" not in proc.stdout
    from covidscreen.reporting.model_card import _moved, model_card
    assert ("cross-fitted in 5 folds" in model_card(out)) == bool(details["rounds_run"])  # the card says it too
    assert _moved({"changed_share": 0.1, "changed_share_ci": [0.04, 0.22], "changed": 4, "images": 42,
                   "folds": 5}) == (" Estimated share of clean images it answers otherwise than the source: 10% "
                                    "(95% CI 4%-22%; 4 of 42 clean images, cross-fitted in 5 folds).")
    assert _moved(None) == "" and _moved({"folds": 5}) == ""
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "-o", str(tmp_path / "x"),
                                          "--method", "unlearn", "--patch-side", "40"),
                       "patch side \\(40 px\\) is larger than the model's input \\(32 px\\)")
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "-o", str(tmp_path / "y"),
                                          "--method", "unlearn", "--rounds", "0"), "unlearn_rounds.*must be >= 1")
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "-o", str(tmp_path / "z"),
                                          "--method", "unlearn", "--set", "unlearn_freeze=1.5"),
                       "unlearn_freeze \\(1.5\\) must be a share in \\[0, 1\\)")
    assert not (tmp_path / "z").exists()
    assert_clean_error(run_cli_in_process("sanitize", str(run_dir), "--data", str(clean), "-o", str(tmp_path / "z"),
                                          "--method", "unlearn", "--seed", "1", "--set", "seed=2"),
                       "--set seed: already given by its own option")


def test_anp_writes_a_run_folder_whose_weights_load_like_the_source(run_dir, tmp_path):
    clean = _images(tmp_path / "clean", 10, CLASSES)
    result = sanitize(run_dir, clean, tmp_path / "anp", SanitizeConfig(method="anp", anp_iterations=2))
    assert result.record["method"] == "anp" and result.record["details"]["neurons"] > 1000
    source, cleaned = load_run(run_dir).load_model(), load_run(tmp_path / "anp").load_model()
    assert source.state_dict().keys() == cleaned.state_dict().keys()  # no parametrization saved
    zeroed = sum(int((m.weight == 0).sum()) for _, m in batchnorm_layers(cleaned))
    assert zeroed == sum(int((m.weight == 0).sum()) for _, m in batchnorm_layers(source)) + result.record[
        "details"]["pruned"]  # what was pruned is what the saved weights hold


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
                                          "--method", "magic"), "unknown; use one of fine-pruning, nad, i-bau, anp")

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
