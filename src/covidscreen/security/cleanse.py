"""Model-level backdoor scan: trigger reverse-engineering in the manner of Neural Cleanse (Wang et al. 2019).

For every ordered pair of classes (source -> target) the smallest mask ``m`` and pattern ``p`` are searched that make
the model predict the target for the source class's clean images, ``x' = (1 - m) * x + m * p``, minimising
cross-entropy + lambda * mean(m), with Neural Cleanse's schedule (lambda grows while the reversed trigger succeeds on
>= ``success`` of the images, shrinks otherwise). A backdoor is a shortcut: for its target (and, in a non-targeted
attack, for every pair it flips) a trigger of a few pixels suffices, where a clean model needs a large change.
Pairs rather than targets cover all-to-all (non-targeted) backdoors too, which map each class to another.

Decision rule. Neural Cleanse flags a target whose mask size has an anomaly index (distance to the median in units
of 1.4826 x MAD) above 2, across the targets of *one* model. That index was tuned on 43 classes. With 2 classes the
median is the midpoint of the two values and the MAD is half their distance, so both indices are exactly
1/1.4826 = 0.6745 whatever the masks: the rule can never flag. With 3 classes an index above 2 needs one value far
from two nearly equal others, which rarely happens. Here the model is instead compared with reference models
trained clean on the same data (the defender can train those): its smallest reversed trigger over all pairs, divided
by the smallest one of the references. The model is flagged when that ratio is below ``ratio_threshold``, calibrated
on the references themselves (each compared with the others, leave-one-out): the smallest leave-one-out ratio,
capped at 0.5. A flagged model thus needs a trigger at most half the size of any clean reference's, and is further
below the references than any of them is below the others. Per-pair comparisons were tried first and rejected: the
size of one pair's natural trigger varies several-fold between clean models of the same data, the smallest over all
pairs much less.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .chunks import frozen_model


@dataclass
class ReversedTrigger:
    source: int
    target: int
    mask_l1: float  # pixels covered by the mask (sum of its values); the image area when no trigger was found
    success: float  # share of the source images that the reversed trigger sends to the target
    mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pattern: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def reverse_trigger(model: nn.Module, images: torch.Tensor, target: int, steps: int = 150, batch_size: int = 16,
                    lr: float = 0.2, init_lambda: float = 1e-2, success: float = 0.95, seed: int = 0,
                    source: int = -1, desc: str | None = None) -> ReversedTrigger:
    """Smallest mask + pattern that sends ``images`` (float ``(N, 1, H, W)`` in [0, 1]) to ``target``.

    ``desc``: show a progress bar (rate and ETA) with this label; None: silent."""
    gen = torch.Generator().manual_seed(seed)
    h, w = images.shape[-2:]
    mask_param = torch.full((1, 1, h, w), -3.0, requires_grad=True)  # sigmoid(-3) = 0.05: start small
    pattern_param = (torch.rand((1, 1, h, w), generator=gen) * 2 - 1).requires_grad_(True)
    opt = torch.optim.Adam([mask_param, pattern_param], lr=lr, betas=(0.5, 0.9))
    lam = init_lambda
    best_l1, best = float(h * w), None
    target_t = torch.full((len(images),), target, dtype=torch.long)
    hits = []
    with frozen_model(model, images[:2]):
        for step in tqdm(range(steps), desc=desc, unit="step", disable=desc is None, leave=False):
            idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
            mask, pattern = torch.sigmoid(mask_param), torch.sigmoid(pattern_param)
            x = (1 - mask) * images[idx] + mask * pattern
            logits = model(x)
            loss = F.cross_entropy(logits, target_t[idx]) + lam * mask.mean() * 100
            opt.zero_grad()
            loss.backward()
            opt.step()
            hits.append(float((logits.argmax(1) == target).float().mean()))
            if (step + 1) % 10 == 0:
                rate = float(np.mean(hits))
                hits.clear()
                l1 = float(torch.sigmoid(mask_param.detach()).sum())
                if rate >= success:
                    if l1 < best_l1:
                        best_l1 = l1
                        best = (torch.sigmoid(mask_param).detach().clone(),
                                torch.sigmoid(pattern_param).detach().clone())
                    lam *= 1.5
                else:
                    lam /= 1.5
        if best is None:
            return ReversedTrigger(source, target, float(h * w), 0.0)
        with torch.no_grad():
            mask, pattern = best
            rate = float((model((1 - mask) * images + mask * pattern).argmax(1) == target).float().mean())
        return ReversedTrigger(source, target, best_l1, rate, mask[0, 0].numpy(), pattern[0, 0].numpy())


def reverse_all_pairs(model: nn.Module, images: np.ndarray, labels: np.ndarray, n_per_class: int = 24,
                      seed: int = 0, desc: str | None = None, class_names: list[str] | None = None,
                      **kwargs: Any) -> list[ReversedTrigger]:
    """:func:`reverse_trigger` for every (source, target) pair, from up to ``n_per_class`` clean images per class
    (``desc``: one progress bar per pair, labelled ``desc`` and the pair's classes)."""
    name = (lambda c: class_names[c]) if class_names else str  # noqa: E731
    rng = np.random.default_rng(seed)
    classes = sorted(int(c) for c in np.unique(labels))
    out = []
    for s in classes:
        idx = np.flatnonzero(labels == s)
        idx = rng.choice(idx, size=min(n_per_class, len(idx)), replace=False)
        x = torch.from_numpy(images[idx]).float().div(255.0).unsqueeze(1)
        for t in classes:
            if t != s:
                label = None if desc is None else f"{desc} {name(s)}->{name(t)}"
                out.append(reverse_trigger(model, x, t, seed=seed + 31 * s + t, source=s, desc=label, **kwargs))
    return out


def pair_sizes(triggers: list[ReversedTrigger]) -> dict[str, float]:
    return {f"{t.source}->{t.target}": t.mask_l1 for t in triggers}


def mad_anomaly_index(values: list[float]) -> list[float]:
    """Neural Cleanse's anomaly index of each value: |v - median| / (1.4826 * MAD) (inf where MAD is 0)."""
    v = np.asarray(values, dtype=float)
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    return [float(abs(x - med) / mad) if mad > 0 else float("inf") for x in v]


def per_target_sizes(sizes: dict[str, float]) -> dict[str, float]:
    """Smallest mask size towards each target (what Neural Cleanse's all-to-one search measures)."""
    out: dict[str, float] = {}
    for pair, l1 in sizes.items():
        t = pair.split("->")[1]
        out[t] = min(out.get(t, np.inf), l1)
    return out


def smallest(sizes: dict[str, float]) -> tuple[float, str]:
    """The smallest mask size over pairs, and its pair."""
    pair = min(sizes, key=lambda k: sizes[k])
    return float(sizes[pair]), pair


def min_ratio(sizes: dict[str, float], references: list[dict[str, float]]) -> tuple[float, str]:
    """The model's smallest mask size over pairs / the smallest over pairs and references, and the model's pair."""
    size, pair = smallest(sizes)
    ref = min(smallest(r)[0] for r in references)
    return (size / ref if ref > 0 else float("inf")), pair


def leave_one_out_ratios(references: list[dict[str, float]]) -> list[float]:
    """Each reference model's smallest ratio against the other references (none with fewer than 2 references)."""
    if len(references) < 2:
        return []
    return [min_ratio(r, references[:i] + references[i + 1:])[0] for i, r in enumerate(references)]


def calibrate_ratio_threshold(references: list[dict[str, float]], cap: float = 0.5) -> float:
    """The smallest leave-one-out ratio among the reference (clean) models, at most ``cap``."""
    if len(references) < 2:
        return cap
    return float(min(cap, *leave_one_out_ratios(references)))


@dataclass
class ModelScanResult:
    sizes: dict[str, float]
    min_ratio: float
    pair: str
    threshold: float
    flagged: bool
    mad_index: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"mask_sizes": self.sizes, "min_ratio": self.min_ratio, "pair": self.pair,
                "ratio_threshold": self.threshold, "flagged": self.flagged, "mad_anomaly_index": self.mad_index}


def judge(sizes: dict[str, float], references: list[dict[str, float]]) -> ModelScanResult:
    """Apply the reference-calibrated rule (module docstring) to one model's pair mask sizes."""
    threshold = calibrate_ratio_threshold(references)
    ratio, pair = min_ratio(sizes, references)
    targets = per_target_sizes(sizes)
    mad = dict(zip(targets, mad_anomaly_index(list(targets.values())), strict=True))
    return ModelScanResult(sizes, ratio, pair, threshold, ratio < threshold, mad)
