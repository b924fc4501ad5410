"""Model-level backdoor detection by the maximum-margin statistic (MM-BD, Wang et al. 2023), for few classes.

A backdoor makes its target class answer a trigger with an abnormally large margin: the largest logit margin
``z_k(x) - max_{j != k} z_j(x)`` that any input ``x`` in the image domain can reach is much larger for a backdoor's
target than for a clean class. MM-BD estimates that maximum per class by gradient ascent on the input from random
starts (no clean data is needed) and, with many classes, compares the largest one with a null distribution
fitted to the other classes' statistics (a Gamma law, p-value below 0.05: backdoor).

With 2 or 3 classes there are too few other classes to fit a null. Here the null comes from clean reference models
of the same task instead (the defender trains them; at least :data:`MIN_REFERENCES`): the model's statistic (its
largest per-class maximum margin) is compared with a Gamma law fitted to the references' statistics (MM-BD's null
family), and flagged when its upper-tail p-value is below ``alpha`` (MM-BD's 0.05). Each reference is also judged
against the others (leave-one-out), which measures the false-alarm rate on clean models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from .chunks import frozen_model, images_per_pass

MIN_REFERENCES = 5


def max_margins(model: nn.Module, shape: tuple[int, int], num_classes: int, starts: int = 8, steps: int = 300,
                lr: float = 0.05, seed: int = 0, desc: str | None = None) -> np.ndarray:
    """The largest logit margin each class reaches over inputs in ``[0, 1]`` (float ``(num_classes,)``).

    Every class and every random start is optimised together (``num_classes * starts`` images of ``shape``, in
    passes of at most :func:`~covidscreen.security.chunks.images_per_pass` images: each image's margin depends only
    on itself, so the passes change nothing but the memory); the input is parameterised through a sigmoid so that it
    stays an image. ``desc``: progress bar label."""
    gen = torch.Generator().manual_seed(seed)
    h, w = shape
    per_pass = images_per_pass(h, w)
    param = (torch.randn(num_classes * starts, 1, h, w, generator=gen) * 0.5).requires_grad_(True)
    cls = torch.arange(num_classes).repeat_interleave(starts)
    opt = torch.optim.Adam([param], lr=lr)
    best = torch.full((num_classes * starts,), -float("inf"))
    with frozen_model(model, torch.sigmoid(param[:2].detach())):
        for _ in tqdm(range(steps), desc=desc, unit="step", disable=desc is None, leave=False):
            opt.zero_grad()
            for start in range(0, len(param), per_pass):  # the passes' gradients fill their own rows of param.grad
                part = slice(start, start + per_pass)
                logits = model(torch.sigmoid(param[part]))
                own = logits.gather(1, cls[part, None])[:, 0]
                others = logits.scatter(1, cls[part, None], -float("inf")).amax(1)
                margin = own - others
                best[part] = torch.maximum(best[part], margin.detach())
                (-margin.sum()).backward()
            opt.step()
    return best.reshape(num_classes, starts).amax(1).numpy().astype(float)


def gamma_p_value(value: float, references: list[float]) -> float:
    """Upper-tail p-value of ``value`` under a Gamma law fitted (location 0) to ``references``."""

    ref = np.asarray(references, dtype=float)
    if len(ref) < 2 or np.any(ref <= 0):
        raise ValueError("the Gamma null needs at least 2 positive reference statistics")
    shape, loc, scale = stats.gamma.fit(ref, floc=0)
    return float(stats.gamma.sf(value, shape, loc=loc, scale=scale))


@dataclass
class MMBDVerdict:
    margins: dict[str, float]  # class -> largest margin reached
    statistic: float  # the largest over classes
    target: str  # its class
    references: list[float]  # the references' statistics
    p_value: float | None  # None: fewer than MIN_REFERENCES references, not judged
    alpha: float
    flagged: bool
    reference_p_values: list[float]  # each reference against the others (leave-one-out)

    def as_dict(self) -> dict[str, Any]:
        return {"mmbd_margins": self.margins, "mmbd_statistic": self.statistic, "mmbd_target": self.target,
                "mmbd_reference_statistics": self.references, "mmbd_p_value": self.p_value,
                "mmbd_alpha": self.alpha, "mmbd_flagged": self.flagged,
                "mmbd_reference_loo_p_values": self.reference_p_values}


def judge_mmbd(margins: dict[str, float], references: list[dict[str, float]], alpha: float = 0.05) -> MMBDVerdict:
    """MM-BD's test with the null fitted to clean reference models (module docstring)."""
    target = max(margins, key=lambda k: margins[k])
    stat = float(margins[target])
    refs = [float(max(r.values())) for r in references if r]
    if len(refs) < MIN_REFERENCES:
        return MMBDVerdict(margins, stat, target, refs, None, alpha, False, [])
    p = gamma_p_value(stat, refs)
    loo = [gamma_p_value(v, refs[:i] + refs[i + 1:]) for i, v in enumerate(refs)]
    return MMBDVerdict(margins, stat, target, refs, p, alpha, p < alpha, loo)
