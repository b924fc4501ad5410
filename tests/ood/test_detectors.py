"""The detectors on features with a known answer: Gaussian clusters (in distribution) and points far from them."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from covidscreen.errors import ConfigError, DataError
from covidscreen.ood.detectors import DETECTORS, detector_from_state, fit_detector


def clusters(n: int, seed: int, dim: int = 16, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, dim) * 6
    feats = centres[labels] + rng.normal(0, 1, (n, dim)) + shift
    return np.abs(feats).astype(np.float32), labels  # non-negative, as features after a ReLU are


def head(dim: int = 16):
    w = np.eye(3, dim).astype(np.float32)
    return w, np.zeros(3, np.float32)


@pytest.mark.parametrize("name", [d for d in DETECTORS if d != "energy"])  # energy reads logits only: below
def test_far_points_score_higher_and_state_round_trips(name):
    train, y = clusters(600, 0)
    inside, _ = clusters(200, 1)
    rng = np.random.default_rng(2)
    # far: features off the training clusters (other directions, larger norms)
    far = np.abs(rng.normal(0, 1, (200, 16)) * 6 + np.r_[np.zeros(3), np.ones(13) * 5]).astype(np.float32)
    w, b = head()
    det = fit_detector(name, train, y, head=(w, b))
    s_in = det.score(inside, inside @ w.T + b)
    s_far = det.score(far, far @ w.T + b)
    assert np.isfinite(s_in).all() and np.isfinite(s_far).all()
    auc = roc_auc_score(np.r_[np.zeros(200), np.ones(200)], np.r_[s_in, s_far])
    assert auc > 0.95, (name, auc)
    again = detector_from_state(name, det.params, {k: v.clone() for k, v in det.tensors.items()})
    np.testing.assert_allclose(again.score(far, far @ w.T + b), s_far, rtol=1e-6, atol=1e-6)


def test_mahalanobis_matches_the_formula():
    """Half the squared distance to the closest class mean under the shared (Ledoit-Wolf) covariance."""
    from sklearn.covariance import ledoit_wolf

    train, y = clusters(300, 3, dim=4)
    det = fit_detector("mahalanobis", train, y)
    mu = np.stack([train[y == k].mean(0) for k in range(3)]).astype(np.float64)
    prec = np.linalg.inv(ledoit_wolf(train - mu[y], assume_centered=True)[0])
    x = clusters(5, 4, dim=4)[0].astype(np.float64)
    want = np.min([0.5 * np.einsum("ij,jk,ik->i", x - m, prec, x - m) for m in mu], axis=0)
    np.testing.assert_allclose(det.score(x, np.zeros((5, 3))), want, rtol=1e-5)


def test_knn_is_the_kth_neighbour_distance_of_normalised_features():
    train, y = clusters(100, 5)
    det = fit_detector("knn", train, y)
    x = clusters(3, 6)[0]
    bank = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.sort(np.linalg.norm(q[:, None] - bank[None], axis=2), axis=1)[:, det.params["k"] - 1]
    np.testing.assert_allclose(det.score(x, np.zeros((3, 3))), d, rtol=1e-5)


def test_energy_is_minus_logsumexp():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    det = fit_detector("energy", *clusters(20, 0))
    np.testing.assert_allclose(det.score(np.zeros((2, 16)), logits),
                               -torch.logsumexp(torch.from_numpy(logits), 1).numpy(), rtol=1e-6)


def test_bad_requests_say_what_is_accepted():
    train, y = clusters(50, 0)
    with pytest.raises(ConfigError, match="unknown; use one of mahalanobis"):
        fit_detector("odin", train, y)
    with pytest.raises(ConfigError, match="ensemble"):
        fit_detector("vim", train, y, head=head(), ensemble=True)
    with pytest.raises(ConfigError, match="linear layer"):
        fit_detector("vim", train, y)
    with pytest.raises(DataError, match="at least 10"):
        fit_detector("knn", train[:5], y[:5])
    with pytest.raises(DataError, match="lacks bank"):
        detector_from_state("knn", {"k": 5}, {})
