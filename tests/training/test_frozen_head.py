import numpy as np
import pytest
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_sample_weight

from covidscreen.errors import DataError
from covidscreen.models.heads import build_frozen_head
from covidscreen.training.frozen_head import fit_gradient_boosting, fit_logistic


def synthetic_features(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose classes differ in a few dimensions, with unequal scales (the logistic head standardises)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    scale = rng.uniform(0.1, 10, d)
    x = rng.normal(0, 1, (n, d)) * scale
    x[:, :3] += y[:, None] * 2 * scale[:3]
    return x.astype(np.float32), y


def softmax(z: torch.Tensor) -> np.ndarray:
    return torch.softmax(z.double(), 1).numpy()


@pytest.mark.parametrize("k", [2, 3])
def test_logistic_head_matches_sklearn(k: int) -> None:
    x, y = synthetic_features(120, 16, k)
    head = fit_logistic(x, y, k, balanced=False)
    mean, scale = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    ref = LogisticRegression(max_iter=2000, random_state=0).fit((x - mean) / scale, y)
    with torch.no_grad():
        ours = softmax(head(torch.from_numpy(x)))
    np.testing.assert_allclose(ours, ref.predict_proba((x - mean) / scale), atol=1e-4)
    assert (ours.argmax(1) == y).mean() > 0.8


@pytest.mark.parametrize("k", [2, 3])
def test_gradient_boosting_head_matches_sklearn_exactly(k: int) -> None:
    x, y = synthetic_features(150, 12, k, seed=1)
    head = fit_gradient_boosting(x, y, k, balanced=True, n_estimators=30)
    ref = GradientBoostingClassifier(n_estimators=30, max_depth=3, learning_rate=0.1, max_features="sqrt",
                                     random_state=0).fit(x, y, sample_weight=compute_sample_weight("balanced", y))
    x_new, _ = synthetic_features(60, 12, k, seed=2)  # unseen rows walk other paths through the trees
    with torch.no_grad():
        ours = softmax(head(torch.from_numpy(x_new)))
    np.testing.assert_allclose(ours, ref.predict_proba(x_new), atol=1e-6)


def test_gradient_boosting_head_round_trips_through_its_description_and_state_dict() -> None:
    x, y = synthetic_features(90, 8, 3)
    head = fit_gradient_boosting(x, y, 3, n_estimators=10)
    rebuilt = build_frozen_head(head.describe())
    rebuilt.load_state_dict(head.state_dict())
    xt = torch.from_numpy(x)
    assert torch.equal(rebuilt(xt), head(xt))
    assert all(isinstance(v, torch.Tensor) for v in head.state_dict().values())  # tensors only: safetensors


def test_a_class_missing_from_training_is_a_clear_error() -> None:
    x, y = synthetic_features(30, 4, 2)
    with pytest.raises(DataError, match="no image of class"):
        fit_logistic(x, y, 3)
