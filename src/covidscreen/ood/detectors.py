"""Published out-of-distribution detectors on a model's head-input features, through pytorch-ood.

Each detector is pytorch-ood's implementation (``pytorch_ood.detector``), fitted on features (``fit_features``) and
scored on features or logits (``predict_features``); what this module adds is a state of plain tensors (so that a
fitted detector is stored as safetensors and rebuilt without pickles) and a common ``score(features, logits)``.
Scores are "higher = less like the training images".

- ``mahalanobis`` (Lee et al. 2018): half the squared Mahalanobis distance to the closest class mean under one shared
  covariance. pytorch-ood's class means are kept; its precision (the inverse of the summed scatter plus 1e-6) is
  replaced by the Ledoit-Wolf shrunk estimate (scikit-learn) of the class-centred features: with fewer images than
  features (1,280) the plain inverse is dominated by rounding, and two fits of the same features disagreed.
- ``knn`` (Sun et al. 2022): the distance of the L2-normalised feature to its k-th nearest normalised training
  feature (k = 50, the paper's CIFAR-10 value; fewer when the training set is small). The training features are the
  state (at most :data:`KNN_BANK` of them, drawn with the run's seed).
- ``vim`` (Wang et al. 2022): the norm of the feature's residual outside the principal subspace of the training
  features (seen from the head's origin), scaled to the logits, minus the energy. Needs a linear head (not an
  ensemble, not a gradient-boosting head).
- ``energy`` (Liu et al. 2020): minus the log-sum-exp of the logits; nothing to fit. Not for ensembles (whose
  "logits" are log-probabilities, whose log-sum-exp is always 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError

DETECTORS = ("mahalanobis", "knn", "vim", "energy")
KNN_K = 50
KNN_BANK = 5000
VIM_MAX_DIM = 512


@dataclass
class Detector:
    """A fitted detector: its name, parameters, and tensors (everything needed to score, nothing else)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    _impl: object = field(default=None, repr=False)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """One score per row, higher = less like the training features."""
        if self._impl is None:
            self._impl = _build(self.name, self.params, self.tensors)
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if self.name == "energy":
            # heavy: pytorch-ood, as above
            from pytorch_ood.detector import EnergyBased

            out = EnergyBased.score(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)))
        elif self.name == "mahalanobis":
            out = self._impl.predict_features(feats.double())
        else:
            out = self._impl.predict_features(feats)
        return out.double().cpu().numpy().reshape(-1)


def _contiguous_labels(labels: np.ndarray) -> torch.Tensor:
    """Class indices renumbered 0..K-1 over the classes present (pytorch-ood wants every index to occur)."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return torch.from_numpy(inverse.astype(np.int64))


def fit_detector(name: str, features: np.ndarray, labels: np.ndarray, head: tuple[np.ndarray, np.ndarray] | None
                 = None, ensemble: bool = False, seed: int = 0) -> Detector:
    """Fit detector ``name`` on in-distribution (training) features and their class indices.

    Args:
        head: ``(weight (C, D), bias (C,))`` of the model's linear head (needed by ``vim``).
        ensemble: the features are an ensemble's members' side by side (``vim`` and ``energy`` do not apply).

    Raises:
        ConfigError: an unknown detector, or one that does not apply to this model.
        DataError: too few training features.
    """
    if name not in DETECTORS:
        raise ConfigError(f"out-of-distribution detector {name!r} is unknown; use one of {', '.join(DETECTORS)}")
    if ensemble and name in ("vim", "energy"):
        raise ConfigError(f"the {name} detector reads the logits of one model; an ensemble averages probabilities. "
                          "Use mahalanobis or knn for an ensemble")
    n = len(features)
    if n < 10:
        raise DataError(f"an out-of-distribution detector needs at least 10 training images; got {n}")
    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = _contiguous_labels(labels)
    if name == "energy":
        return Detector(name)
    if name == "mahalanobis":
        # heavy: pytorch-ood and scikit-learn's covariance, loaded where a detector is fitted
        from pytorch_ood.detector import Mahalanobis
        from sklearn.covariance import LedoitWolf

        det = Mahalanobis(None)
        with _default_dtype(torch.float64):
            det.fit_features(z.double(), y)
        centred = (z.double() - det.mu[y]).numpy()
        det.precision = torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred).precision_)
        tensors = {"mu": det.mu.double(), "precision": det.precision.double()}
        return Detector(name, {}, tensors, det)
    if name == "knn":
        if n > KNN_BANK:  # a bounded state: the file and the neighbour search stay small
            keep = np.sort(np.random.default_rng(seed).choice(n, KNN_BANK, replace=False))
            z = z[torch.from_numpy(keep)]
        z = z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)
        k = min(KNN_K, len(z))
        return Detector(name, {"k": k}, {"bank": z.contiguous()})
    # vim
    if head is None:
        raise ConfigError("the vim detector needs a model whose head is one linear layer (not a gradient-boosting "
                          "head, not an ensemble); use mahalanobis or knn")
    # heavy: importing pytorch-ood takes seconds (its losses and models); loaded where a detector runs
    from pytorch_ood.detector import ViM

    w = torch.as_tensor(np.asarray(head[0]), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(head[1]), dtype=torch.float32)
    d = int(min(VIM_MAX_DIM, z.shape[1] // 2, max(1, n - 1)))
    det = ViM(None, d=d, w=w, b=b)
    det.fit_features(z, y)
    tensors = {"w": w, "b": b, "principal_subspace": det.principal_subspace.float().contiguous(),
               "alpha": torch.tensor([det.alpha], dtype=torch.float64)}
    return Detector(name, {"d": d}, tensors, det)


class _default_dtype:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.old)


def _build(name: str, params: dict[str, float], tensors: dict[str, torch.Tensor]) -> object:
    """The pytorch-ood object of a stored state."""
    # heavy: pytorch-ood, as above
    from pytorch_ood import detector as pood

    if name == "mahalanobis":
        det = pood.Mahalanobis(None)
        det.mu, det.precision = tensors["mu"].double(), tensors["precision"].double()
    elif name == "knn":
        bank = tensors["bank"].float()
        det = pood.KNN(None, k=int(params["k"]), normalize=True, algorithm="brute")
        det.fit_features(bank, torch.zeros(len(bank), dtype=torch.long))
    elif name == "vim":
        det = pood.ViM(None, d=int(params["d"]), w=tensors["w"], b=tensors["b"])
        det.principal_subspace = tensors["principal_subspace"].float()
        det.alpha = float(tensors["alpha"].reshape(-1)[0])
    elif name == "energy":
        det = None
    else:
        raise DataError(f"stored out-of-distribution detector {name!r} is unknown to this covidscreen; refit it with "
                        "covidscreen ood fit RUN_DIR")
    return det


def detector_from_state(name: str, params: dict[str, float], tensors: dict[str, torch.Tensor]) -> Detector:
    """Rebuild a stored detector (checks that its tensors are the ones it needs)."""
    need = {"mahalanobis": ("mu", "precision"), "knn": ("bank",), "vim": ("w", "b", "principal_subspace", "alpha"),
            "energy": ()}.get(name)
    if need is None:
        raise DataError(f"stored out-of-distribution detector {name!r} is unknown to this covidscreen; refit it with "
                        "covidscreen ood fit RUN_DIR")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise DataError(f"the stored {name} detector lacks {', '.join(missing)}; refit it with covidscreen ood fit")
    det = Detector(name, dict(params), {k: tensors[k] for k in need})
    det._impl = _build(name, det.params, det.tensors)
    return det
