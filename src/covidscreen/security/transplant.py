"""Training-set scan by transplanting the suspected trigger region: SentiNet's test, placed by the patch search.

SentiNet (Chou et al. 2020) finds the region of an input that drives the model's answer and pastes it onto held-out
clean images: a trigger takes most of them over, an ordinary region almost none. Its published versions live inside
research toolboxes (BackdoorBench, Beatrix) built around their own training scripts and locate the region with
Grad-CAM and selective search; here the region comes from the model scan instead: the position of the best patch
towards each class (``patches.py``, cached with the scan). For every training image, its pixels at that position are
pasted onto clean validation images of the other classes (the *hosts*), and its score is the share of hosts they
send to that class (the patch search's own measure, so the two compare). The pasted region is the best patch widened
by one patch side on every side (``scan.TRANSPLANT_PAD``): the search's grid tiles the image, so its best patch can
sit beside a trigger that overlaps it rather than on it (on a 3-class demonstration model, trained with another
seed: best patch at (0, 3), trigger at (0, 0), and none of the stamped images found at the patch alone). An image
stamped with the trigger sends about as many hosts as the trigger's attack success, *whatever its label*, so this
finds the stamped images that kept their true label too (a targeted poison stamps images of the target class as
well), which no statistic of one label's features can; an image whose pixels there are ordinary anatomy sends few.

Flag (:func:`transplant_flags`): an image's score towards some class reaches ``ratio`` (default 0.5) of the best
patch's own success there, for the classes whose best patch reaches the model scan's bound (``patches.MIN_SUCCESS``,
0.45): where the search found no trigger-like patch there is nothing to transplant, and a low bar (half of a weak
patch) is within what ordinary anatomy does (on a fine-tuned demonstration model whose best patch reached 0.15, half
of its training images). The rule needs no expected poisoned fraction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .chunks import images_per_pass
from .patches import MIN_SUCCESS


@torch.inference_mode()
def transplant_scores(model: nn.Module, images: np.ndarray, hosts: np.ndarray, position: tuple[int, int] | list[int],
                      side: int, target: int | None = None, pad: int = 0, desc: str | None = None) -> np.ndarray:
    """Share of ``hosts`` each image's ``side`` x ``side`` square at ``position`` (widened by ``pad`` pixels on every
    side, within the image), pasted on them, sends to ``target`` (of the hosts not answered ``target`` before: the
    patch search's measure, ``patches.py``), or, when ``target`` is None, whose answer it changes.

    Args:
        images: uint8 ``(N, H, W)``: the images scored (a training set).
        hosts: uint8 ``(M, H, W)``: clean images the regions are pasted on.
        position: top-left (row, column) of the square in model pixels.
        desc: show a progress bar (rate and ETA) with this label; None: silent.

    Returns: float ``(N,)`` in [0, 1] (zeros when every host is answered ``target`` already).
    """
    if images.ndim != 3 or hosts.ndim != 3 or images.shape[1:] != hosts.shape[1:]:
        raise ValueError(f"images {images.shape} and hosts {hosts.shape} must be (N, H, W) of one size")
    h, w = images.shape[1:]
    r, c = (int(v) for v in position)
    if side < 1 or not (0 <= r <= h - side and 0 <= c <= w - side) or pad < 0:
        raise ValueError(f"a {side} px square at {(r, c)} (widened by {pad} px) does not fit {h} x {w} images")
    r0, c0, r1, c1 = max(0, r - pad), max(0, c - pad), min(h, r + side + pad), min(w, c + side + pad)
    model.eval()
    host_x = torch.from_numpy(np.ascontiguousarray(hosts)).float().div(255.0).unsqueeze(1)
    per_pass = images_per_pass(h, w)
    base = torch.cat([model(host_x[i:i + per_pass]).argmax(1) for i in range(0, len(host_x), per_pass)])
    if target is not None:  # only hosts the region could send there
        host_x, base = host_x[base != target], base[base != target]
    scores = np.zeros(len(images), dtype=np.float64)
    if len(host_x) == 0:
        return scores
    per_chunk = max(1, per_pass // len(host_x))
    with tqdm(total=len(images), desc=desc, unit="img", disable=desc is None, leave=False) as bar:
        for start in range(0, len(images), per_chunk):
            region = torch.from_numpy(np.ascontiguousarray(images[start:start + per_chunk, r0:r1, c0:c1]))
            x = host_x[None].repeat(len(region), 1, 1, 1, 1)  # (images, hosts, 1, H, W)
            x[:, :, 0, r0:r1, c0:c1] = region.float().div(255.0)[:, None]
            pred = model(x.reshape(-1, 1, h, w)).argmax(1).reshape(len(region), len(host_x))
            hit = pred != base[None] if target is None else pred == target
            scores[start:start + len(region)] = hit.double().mean(1).numpy()
            bar.update(len(region))
    return scores


def transplant_flags(scores: dict[str, np.ndarray], patch_success: dict[str, float], ratio: float = 0.5,
                     min_success: float = MIN_SUCCESS) -> tuple[np.ndarray, np.ndarray]:
    """Flag the images whose score towards some class is at least ``ratio`` x that class's best patch success, for
    the classes whose best patch reaches ``min_success`` (the model scan's bound: elsewhere the search found nothing
    a trigger would do, and half of a weak patch's success is within what ordinary pixels do). Returns the flags and
    each image's largest score relative to its class's patch success (the ranking, over every class)."""
    relative = np.zeros_like(next(iter(scores.values())))
    flags = np.zeros(len(relative), dtype=bool)
    for cls, s in scores.items():
        best = max(float(patch_success[cls]), 1e-9)
        if best >= min_success:
            flags |= s >= ratio * best
        relative = np.maximum(relative, s / best)
    return flags, relative
