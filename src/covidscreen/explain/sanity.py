"""Sanity checks of heatmaps: do they depend on what the model learned, and do they point at what it uses?

- :func:`randomisation_test`: the model-parameter randomisation test of Adebayo et al. (2018, "Sanity checks for
  saliency maps"). The head, then the head and the last stage, then the last two stages, ... are re-initialised
  (cascading, from the top) and the maps of the randomised model are compared with the trained model's by Spearman
  rank correlation. A map that survives randomisation (high correlation) shows the image, not the model: it must not
  be read as evidence of what the model learned.
- :func:`road_faithfulness`: ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution
  methods"), as implemented in ``pytorch_grad_cam.metrics.road``: pixels are removed by noisy linear imputation,
  most relevant first (MoRF) and least relevant first (LeRF), at several percentiles; the score is
  ``(mean LeRF change - mean MoRF change) / 2`` of the target class's probability. Higher is more faithful: removing
  what the map calls important should hurt the prediction more than removing what it calls unimportant. Around 0
  the map is no better than an arbitrary one.

Geometry: both checks work on the model's ``(S, S)`` input and its map, before the map is placed back into the
original image (``inputs.py``). ROAD must perturb what the model actually sees; and for a run that crops its inputs,
the placed map is 0 outside the crop whatever the weights, so its rank correlations would be inflated by ties.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import spearmanr
from torch import nn

from ..runtime import to_input
from .cam import CLASS_AGNOSTIC, Explainer, ExplainError, _as_models, _tensor
from .figures import METHOD_NAMES

#: Maps whose mean rank correlation with the trained model's stays at or above this after randomising the top
#: layers (at any level of the cascade) are flagged as not depending on the model's weights.
RANDOMISATION_THRESHOLD = 0.5
ROAD_PERCENTILES = (20, 50, 80)  # the paper uses 10..90; three keep it at 6 sparse solves per image


def top_layer_paths(model: nn.Module, n_stages: int) -> list[str]:
    """Dotted paths (in ``model.backbone``) of the head and the last ``n_stages`` registry stages."""
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "backbone"):
        raise ExplainError(f"{type(model).__name__} is not a ScreeningModel: its top layers are unknown")
    stages = list(spec.stages)
    if n_stages > len(stages):
        raise ExplainError(f"{spec.name} has {len(stages)} registry stages; cannot randomise {n_stages}")
    paths = [spec.head]
    for group in reversed(stages[len(stages) - n_stages:] if n_stages else []):
        paths += list(group)
    return paths


def _strip_hooks(model: nn.Module) -> None:
    # a deep copy taken while an explainer is open would carry that explainer's hooks along
    for m in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            getattr(m, name, {}).clear()


def randomise_top_layers(model: nn.Module, n_stages: int = 0, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose head and last ``n_stages`` stages are re-initialised (the original is untouched).

    Layers get their own PyTorch initialisation (``reset_parameters``); BatchNorm running statistics are reset
    too. Parameters of modules without ``reset_parameters`` are drawn from N(0, 0.02).
    """
    rand = copy.deepcopy(model)
    _strip_hooks(rand)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for path in top_layer_paths(rand, n_stages):
            for m in rand.backbone.get_submodule(path).modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
                else:
                    for p in m.parameters(recurse=False):
                        with torch.no_grad():
                            p.normal_(0.0, 0.02)
    return rand


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of a trained model's map ``a`` with another map ``b``.

    NaN when ``a`` is constant (an empty map has no ranking to preserve); 0 when only ``b`` is constant.
    """
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0:
        return math.nan
    if np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_test(model: nn.Module | Sequence[nn.Module], images: np.ndarray, targets: Sequence[int],
                       method: str = "gradcam", classes: Sequence[str] | None = None, image_size: int | None = None,
                       levels: Sequence[int] = (0, 1, 2), seed: int = 0, original: np.ndarray | None = None,
                       threshold: float = RANDOMISATION_THRESHOLD) -> dict:
    """Cascading model-randomisation test on a batch of images.

    Args:
        model: a trained ScreeningModel, or the members of an ensemble (each member is randomised alike).
        images: ``(B, S, S)`` uint8 model inputs.
        targets: class index per image (the same class is explained before and after randomisation).
        method: CAM method.
        classes, image_size: as for :class:`Explainer`.
        levels: number of stages randomised besides the head, per level (levels beyond the model's are skipped).
        seed: seed of the re-initialisation.
        original: the trained model's maps of ``images`` if already computed.
        threshold: mean rank correlation at or above which a level fails: the maps survived re-initialising those
            layers, so they do not show what those layers learned.

    Returns:
        ``{"method", "levels": [{"randomised", "layers", "spearman": [...], "mean"}], "max_mean", "threshold",
        "passed"}``; ``passed`` is False when some level's mean correlation reaches the threshold.
    """
    models = _as_models(model)
    images = np.asarray(images)
    targets = [int(t) for t in targets]
    if original is None:
        with Explainer(models, method, classes, image_size) as ex:
            original, _, _ = ex.maps(images, targets)
    n_stages = min(len(getattr(getattr(m, "spec", None), "stages", ()) or ()) for m in models)
    out_levels = []
    for k in [k for k in levels if k <= n_stages]:
        rand = [randomise_top_layers(m, k, seed=seed + k) for m in models]
        with Explainer(rand, method, classes, image_size) as ex:
            maps, _, _ = ex.maps(images, targets)
        del rand
        rhos = [rank_correlation(a, b) for a, b in zip(original, maps, strict=True)]
        finite = [r for r in rhos if math.isfinite(r)]
        label = {0: "the head", 1: "the head and the last stage"}.get(k, f"the head and the last {k} stages")
        out_levels.append({"randomised": label, "layers": top_layer_paths(models[0], k), "spearman": rhos,
                           "mean": float(np.mean(finite)) if finite else math.nan})
    if not out_levels:
        raise ExplainError(f"no randomisation level of {list(levels)} applies to this model")
    means = [lv["mean"] for lv in out_levels if math.isfinite(lv["mean"])]
    worst = max(means) if means else math.nan
    return {"method": method, "levels": out_levels, "max_mean": worst, "threshold": threshold,
            "passed": bool(math.isfinite(worst) and worst < threshold)}


def per_image_checks(randomisation: dict | None, road: np.ndarray | None, n: int) -> list[dict]:
    """Split batch results into one ``checks`` dict per image.

    ``randomisation`` per image: Spearman per level (``spearman``), level names (``randomised``), the highest
    (``max``) and ``passed``: False only when the map survives *every* level (all at or above the threshold), the
    signature of a map that ignores the weights; one image's correlation at one level is too noisy to judge (the
    batch verdict of :func:`randomisation_test` uses the mean over images per level). None when the map was empty.
    """
    out: list[dict] = [{} for _ in range(n)]
    if randomisation:
        levels = randomisation["levels"]
        for i in range(n):
            rhos = [lv["spearman"][i] for lv in levels]
            finite = [r for r in rhos if math.isfinite(r)]
            worst = max(finite) if finite else math.nan
            survives = bool(finite) and min(finite) >= randomisation["threshold"]
            out[i]["randomisation"] = {"spearman": rhos, "randomised": [lv["randomised"] for lv in levels],
                                       "max": worst, "passed": (not survives) if finite else None}
    if road is not None:
        for i, v in enumerate(road):
            out[i]["road"] = float(v)
    return out


class _EnsembleLogProbs(nn.Module):
    """Log of the members' mean probabilities: softmax of it is the ensemble's probability."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), 1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


def road_faithfulness(model: nn.Module | Sequence[nn.Module], images: np.ndarray, maps: np.ndarray,
                      targets: Sequence[int], percentiles: Sequence[int] = ROAD_PERCENTILES,
                      seed: int = 0) -> np.ndarray:
    """ROAD combined score per image (change of the target class's probability; higher = more faithful).

    Args:
        model: the explained model (or ensemble members).
        images: ``(B, S, S)`` uint8 model inputs.
        maps: ``(B, S, S)`` heatmaps of those inputs.
        targets: explained class per image.
        percentiles: shares of pixels (in %) removed; each costs one sparse solve per image and direction.
        seed: seed of the imputation noise.
    """
    models = _as_models(model)
    net = models[0] if len(models) == 1 else _EnsembleLogProbs(models)
    images, maps = np.asarray(images), np.asarray(maps, dtype=np.float32)
    if maps.shape != images.shape:
        raise ExplainError(f"maps {maps.shape} and images {images.shape} differ in shape")
    device = next(models[0].parameters()).device
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        x = to_input(_tensor(images), device).contiguous()
        # Grad-CAM maps are 0 on large areas (ReLU). The library removes pixels by comparing with a percentile, so
        # with ties "remove the top 80 %" can remove everything or nothing; a tiny seeded jitter orders tied pixels
        # randomly, as ROAD intends for pixels of equal attribution.
        jitter = np.random.default_rng(seed).random(maps.shape, dtype=np.float32) * 1e-4
        maps = (maps + jitter) / (1 + 1e-4)
        wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
        morf, lerf = [], []
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            # the library's imputer calls np.argwhere on torch tensors (a NumPy 2 deprecation, harmless here)
            warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
            torch.manual_seed(seed)
            for p in percentiles:
                # scores after imputation only: ROADCombined's baseline forward cancels in (LeRF - MoRF) / 2
                for order, out in ((RemoveMostRelevantFirst, morf), (RemoveLeastRelevantFirst, lerf)):
                    metric = PerturbationConfidenceMetric(order(p, NoisyLinearImputer()))
                    out.append(metric(x, maps, wanted, net, return_diff=False))
        scores = (np.mean(lerf, axis=0) - np.mean(morf, axis=0)) / 2
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return np.asarray(scores, dtype=np.float64).reshape(len(images))


def sanity_summary(randomisation: dict | None, road: np.ndarray | None) -> dict:
    """JSON-ready summary of the batch sanity checks."""
    out: dict = {}
    if randomisation:
        out["randomisation"] = {k: randomisation[k] for k in ("max_mean", "threshold", "passed")}
        out["randomisation"]["levels"] = [{k: lv[k] for k in ("randomised", "layers", "mean")}
                                          for lv in randomisation["levels"]]
        out["randomisation"]["n_images"] = len(randomisation["levels"][0]["spearman"])
    if road is not None and len(road):
        out["road"] = {"mean": float(np.mean(road)), "n_images": int(len(road)),
                       "meaning": "(LeRF - MoRF)/2 change of the explained class's probability; higher = more "
                                  "faithful, about 0 = no better than an arbitrary map"}
    return out


def sanity_notes(summary: dict, method: str) -> list[str]:
    """Plain-language sentences about the sanity checks, for HTML pages."""
    notes = []
    rnd = summary.get("randomisation")
    if rnd:
        levels = "; ".join(f"{lv['randomised']}: {fmt_value(lv['mean'])}" for lv in rnd["levels"])
        if rnd["passed"]:
            verdict = "the maps change when the model's weights are destroyed, as they should"
        else:
            verdict = ("WARNING: the maps hardly change when the model's weights are destroyed, so they show "
                       "the image rather than what the model learned; do not read them as evidence")
        notes.append(f"Model-randomisation test (Adebayo et al. 2018) on {rnd['n_images']} image(s): mean Spearman "
                     f"rank correlation with the trained model's maps after re-initialising {levels}. Flagged when "
                     f"any level reaches {rnd['threshold']}: {verdict}.")
        if method in CLASS_AGNOSTIC:
            notes.append(f"{METHOD_NAMES[method]} ignores the classifier head, so re-initialising the head alone "
                         "cannot change its maps.")
    if "road" in summary:
        notes.append(f"ROAD faithfulness (Rong et al. 2022) on {summary['road']['n_images']} image(s): mean "
                     f"{summary['road']['mean']:.3f} ({summary['road']['meaning']}).")
    return notes


def fmt_value(v: float) -> str:
    """Two decimals, or n/a for None and NaN."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
