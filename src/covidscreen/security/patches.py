"""Model-level backdoor scan by patch search: does a small patch, anywhere, send most images to one class?

A patch backdoor (BadNets, Matsuo and Takemoto's corner square) is a compact trigger that flips many images to the
target. Neural Cleanse's free-form mask search (``cleanse.py``) cannot find it in the demonstration's 64 px
models: clean small networks also answer to *scattered* masks of the same size, and the search ends there
(docs/security.md). Here the mask is fixed to a ``side`` x ``side`` square and only its pixel values are optimised,
at every position of a grid at once (in passes of a bounded number of images, ``chunks.py``), for a few steps; the
best position's success rate on held-out clean images of the other classes is the statistic. This is the
fixed-shape special case of trigger reverse-engineering (as in TABOR's and K-Arm's compact triggers), written here on
the registry's models because the maintained toolkits (ART) take Keras models only.

Every position is optimised for every step by default: successive halving (``prune_after``, about 3x cheaper) dropped
a 97.5% trigger's position after four steps on a demonstration model, because a trigger's loss falls only once its
random start has moved (docs/security.md, issue 26).

Rule (:func:`judge_patches`): a model is flagged when some target's best patch success reaches ``min_success``
(default 0.45) and exceeds every clean reference's best by at least ``margin`` (default 0.05, about one standard
error of a rate near 0.4 on 96 images). On the demonstration's 20 clean 64 px models the scan's best patch reached
0.19-0.41, on their ten backdoors with an attack success of 79% or more (reruns with other seeds included) 0.48-0.95;
weaker ones (14-47%) stay where clean models are. The reference comparison keeps a model whose data makes small
patches effective for every model from being flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from .chunks import frozen_model, images_per_pass

HALVING = (4, 8)  # successive halving's cuts (after these steps), when asked for: prune_after=HALVING
MIN_SUCCESS = 0.45  # judge_patches: the least best-patch success that flags
MARGIN = 0.05  # judge_patches: and at least this much above every clean reference's best


@dataclass
class PatchResult:
    target: int
    success: float  # share of the held-out images sent to the target by the best patch
    position: tuple[int, int]  # its top-left (row, column) in model pixels
    side: int
    pattern: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def default_patch_side(image_size: int) -> int:
    """The patch side the scans use unless told: 5% of the input side, at least 2 px (3 px at 64 px, 11 at 224)."""
    return max(2, round(0.05 * image_size))


def _grid(h: int, w: int, side: int, stride: int) -> list[tuple[int, int]]:
    rows = sorted({*range(0, h - side + 1, stride), h - side})
    cols = sorted({*range(0, w - side + 1, stride), w - side})
    return [(r, c) for r in rows for c in cols]


def patch_search(model: nn.Module, fit_images: torch.Tensor, test_images: torch.Tensor, target: int, side: int = 3,
                 stride: int | None = None, steps: int = 12, batch_size: int = 8, lr: float = 0.3,
                 seed: int = 0, max_batch: int | None = None, prune_after: tuple[int, ...] = (), keep: float = 0.25,
                 min_keep: int = 8, desc: str | None = None) -> PatchResult:
    """The best ``side`` x ``side`` patch towards ``target`` over a grid of positions.

    Every position is optimised at once (one batch holds every position, in passes of at most ``max_batch`` images)
    for every step, and every position's pattern is measured on the held-out images. ``prune_after`` (e.g.
    :data:`HALVING`) asks for successive halving instead: after each step it lists, only the ``keep`` share of
    positions with the lowest mean loss over the steps since the last cut go on (at least ``min_keep``), and only the
    last survivors are measured: about 3x cheaper (``benchmarks/bench_model_scan.py``), but it can drop a trigger
    whose loss falls late (module docstring).

    Args:
        fit_images: float ``(N, 1, H, W)`` in [0, 1]: images of other classes the patterns are optimised on.
        test_images: the same kind, held out: the success rate is measured on them.
        stride: grid step (default ``side``: the candidate squares tile the image, so any square trigger overlaps one
            by at least a quarter).
        max_batch: most images in one forward pass (positions x images; whole positions, at least one); None:
            :func:`~covidscreen.security.chunks.images_per_pass` (256 at 64 px, 20 at 224 px), which bounds the
            memory of the gradients' activations. Each position's loss and gradient depend only on its own images,
            so the passes change the result only by the order of float sums.
        desc: show a progress bar (rate and ETA) with this label; None: silent.
    """
    if side < 1 or side > min(fit_images.shape[-2:]):
        raise ConfigError(f"patch side {side} is invalid for {tuple(fit_images.shape[-2:])} images")
    h, w = fit_images.shape[-2:]
    positions = _grid(h, w, side, stride or side)
    gen = torch.Generator().manual_seed(seed)
    n_fit = min(batch_size, len(fit_images))
    max_batch = max_batch or images_per_pass(h, w)
    per_chunk = max(1, max_batch // max(n_fit, 1))
    param = (torch.rand(len(positions), side, side, generator=gen) * 4 - 2).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    alive = torch.arange(len(positions))  # indices of the positions still optimised
    loss_sum = torch.zeros(len(positions))
    target_t = torch.full((n_fit,), target, dtype=torch.long)
    with frozen_model(model, fit_images[:2]), tqdm(total=steps, desc=desc, unit="step", disable=desc is None,
                                                    leave=False) as bar:
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(fit_images), (n_fit,), generator=gen)
            opt.zero_grad()
            for start in range(0, len(alive), per_chunk):  # gradients of each chunk accumulate in param.grad
                chunk = alive[start:start + per_chunk]
                x = _stamp(fit_images[idx], torch.sigmoid(param[chunk]), [positions[i] for i in chunk])
                per_image = F.cross_entropy(model(x), target_t.repeat(len(chunk)), reduction="none")
                per_position = per_image.reshape(len(chunk), n_fit).mean(1)
                per_position.sum().backward()  # each position gets the gradient of its own mean loss
                loss_sum[chunk] += per_position.detach()
            opt.step()
            if step in prune_after and step < steps and len(alive) > min_keep:
                n_keep = max(min_keep, int(np.ceil(keep * len(alive))))
                alive = alive[torch.argsort(loss_sum[alive], stable=True)[:n_keep]]
                loss_sum.zero_()
            bar.update(1)
            bar.set_postfix(positions=len(alive))
        best = PatchResult(target, -1.0, (0, 0), side)
        with torch.inference_mode():
            pattern = torch.sigmoid(param.detach())
            per_eval = max(1, max_batch // max(len(test_images), 1))
            for start in range(0, len(alive), per_eval):
                chunk = alive[start:start + per_eval]
                pred = model(_stamp(test_images, pattern[chunk], [positions[i] for i in chunk])).argmax(1)
                rates = (pred.reshape(len(chunk), -1) == target).float().mean(1)
                i = int(rates.argmax())
                if float(rates[i]) > best.success:
                    j = int(chunk[i])
                    best = PatchResult(target, float(rates[i]), positions[j], side, pattern[j].numpy().copy())
    return best


def _stamp(images: torch.Tensor, patterns: torch.Tensor, positions: list[tuple[int, int]]) -> torch.Tensor:
    """Every image with every position's pattern: ``(P * B, C, H, W)``, position-major."""
    side = patterns.shape[-1]
    out = images[None].repeat(len(positions), 1, 1, 1, 1)
    for i, (r, c) in enumerate(positions):
        out[i, :, :, r:r + side, c:c + side] = patterns[i][None, None]
    return out.reshape(-1, *images.shape[1:])


def scan_targets(model: nn.Module, images: np.ndarray, labels: np.ndarray, side: int = 3, n_fit: int = 12,
                 n_test: int = 96, seed: int = 0, desc: str | None = None,
                 class_names: list[str] | None = None, **kwargs: Any) -> list[PatchResult]:
    """:func:`patch_search` towards every class, from uint8 ``(N, H, W)`` clean images of the other classes.

    ``desc``: show one progress bar per target class, labelled ``desc`` and the class (``class_names``)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in sorted(int(c) for c in np.unique(labels[labels >= 0])):
        idx = rng.permutation(np.flatnonzero((labels != t) & (labels >= 0)))
        fit, test = idx[:n_fit], idx[n_fit:n_fit + n_test]
        if len(test) == 0:
            test = fit
        as_x = lambda i: torch.from_numpy(images[i]).float().div(255.0).unsqueeze(1)  # noqa: E731
        label = None if desc is None else f"{desc} -> {class_names[t] if class_names else t}"
        out.append(patch_search(model, as_x(fit), as_x(test), t, side=side, seed=seed + t, desc=label, **kwargs))
    return out


@dataclass
class PatchVerdict:
    best: dict[str, float]  # target -> best patch success
    references: list[dict[str, float]]
    target: str
    success: float
    reference_max: float
    flagged: bool
    min_success: float
    margin: float

    def as_dict(self) -> dict[str, Any]:
        return {"patch_success": self.best, "patch_target": self.target, "patch_best": self.success,
                "patch_reference_max": self.reference_max, "patch_flagged": self.flagged,
                "patch_min_success": self.min_success, "patch_margin": self.margin}


def judge_patches(best: dict[str, float], references: list[dict[str, float]], min_success: float = MIN_SUCCESS,
                  margin: float = MARGIN) -> PatchVerdict:
    """Flag when some target's best patch success is >= ``min_success`` and >= every reference's + ``margin``."""
    target = max(best, key=lambda k: best[k])
    ref_max = max((max(r.values()) for r in references if r), default=0.0)
    success = best[target]
    return PatchVerdict(best, references, target, success, ref_max,
                        success >= min_success and success >= ref_max + margin, min_success, margin)
