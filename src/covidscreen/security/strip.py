"""STRIP (Gao et al. 2019): screen single inputs for a backdoor trigger at prediction time.

An input is superimposed on ``n_perturb`` clean images; a clean input's predictions then vary (high entropy), while
an input carrying a trigger keeps the trigger's class whatever it is mixed with (low entropy). The entropy threshold
is the ``frr`` quantile of clean validation images' entropies (default 1%: one clean image in a hundred is flagged).

Two superimpositions: ``add`` follows the authors' code (``cv2.addWeighted(x, 1, clean, 1, 0)``: the images are
added and saturate at 255, which keeps a bright trigger intact); ``blend`` averages them, as the Adversarial
Robustness Toolbox does (``0.5 x + 0.5 clean``), which halves a trigger but keeps the images' contrast. Which one
separates better depends on the images; both are reported in docs/security.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

ProbsFn = Callable[[np.ndarray], np.ndarray]  # uint8 (B, H, W) -> probabilities (B, C)


MODES = ("add", "blend")


def superimpose(image: np.ndarray, pool: np.ndarray, mode: str = "add") -> np.ndarray:
    """``image`` (H, W) superimposed on each of ``pool`` (N, H, W): uint8 (N, H, W)."""
    if mode == "add":
        return np.minimum(image[None].astype(np.uint16) + pool.astype(np.uint16), 255).astype(np.uint8)
    if mode == "blend":
        return ((image[None].astype(np.uint16) + pool.astype(np.uint16) + 1) // 2).astype(np.uint8)
    raise ConfigError(f"STRIP superimposition {mode!r} is unknown; use one of {', '.join(MODES)}")


STATISTICS = ("entropy", "mean_entropy")


def strip_entropy(probs_fn: ProbsFn, images: np.ndarray, pool: np.ndarray, n_perturb: int = 32, seed: int = 0,
                  exclude_self: bool = False, mode: str = "add", statistic: str = "entropy") -> np.ndarray:
    """Entropy (bits) of the predictions of each image superimposed on ``n_perturb`` pool images.

    Args:
        exclude_self: ``images`` is ``pool`` (calibration): never superimpose an image on itself.
        statistic: ``entropy`` is STRIP's: the mean over perturbations of each prediction's entropy (how unsure the
            model is); ``mean_entropy`` is the entropy of the mean prediction (how much the predicted class varies
            across perturbations), which does not depend on the model being unsure about single mixtures.
    """
    if statistic not in STATISTICS:
        raise ConfigError(f"STRIP statistic {statistic!r} is unknown; use one of {', '.join(STATISTICS)}")
    if len(pool) < 2:
        raise ConfigError("STRIP needs at least 2 clean images to superimpose")
    rng = np.random.default_rng(seed)
    out = np.empty(len(images))
    for i, img in enumerate(images):
        candidates = np.delete(np.arange(len(pool)), i) if exclude_self else np.arange(len(pool))
        idx = rng.choice(candidates, size=min(n_perturb, len(candidates)), replace=False)
        p = np.clip(probs_fn(superimpose(img, pool[idx], mode)), 1e-12, 1.0)
        if statistic == "mean_entropy":
            m = p.mean(0)
            out[i] = float(-(m * np.log2(m)).sum())
        else:
            out[i] = float(np.mean(-(p * np.log2(p)).sum(1)))
    return out


@dataclass
class StripDetector:
    """A calibrated STRIP screen: ``flags(images)`` is True for inputs whose entropy is below the threshold."""

    probs_fn: ProbsFn
    pool: np.ndarray  # clean images (uint8, model resolution) to superimpose
    threshold: float
    frr: float
    n_perturb: int = 32
    seed: int = 0
    mode: str = "add"
    statistic: str = "entropy"

    @classmethod
    def calibrate(cls, probs_fn: ProbsFn, clean: np.ndarray, frr: float = 0.01, n_perturb: int = 32,
                  seed: int = 0, mode: str = "add", statistic: str = "entropy") -> tuple[StripDetector, np.ndarray]:
        """Threshold at the ``frr`` quantile of the clean images' entropies; returns the detector and them."""
        if not 0 < frr < 0.5:
            raise ConfigError(f"false-rejection rate {frr} is invalid: expected a share in (0, 0.5), e.g. 0.01")
        entropies = strip_entropy(probs_fn, clean, clean, n_perturb, seed, exclude_self=True, mode=mode,
                                  statistic=statistic)
        threshold = float(np.quantile(entropies, frr, method="lower"))  # at most frr of clean images fall below
        return cls(probs_fn, clean, threshold, frr, n_perturb, seed, mode, statistic), entropies

    def entropies(self, images: np.ndarray) -> np.ndarray:
        return strip_entropy(self.probs_fn, images, self.pool, self.n_perturb, self.seed + 1, mode=self.mode,
                             statistic=self.statistic)

    def flags(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flag, entropy) of each image: flagged when its entropy is strictly below the threshold."""
        h = self.entropies(images)
        return h < self.threshold, h
