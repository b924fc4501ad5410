import pytest
import torch

from covidscreen.config import OPTIMIZERS, TrainConfig
from covidscreen.errors import ConfigError
from covidscreen.training.optimizers import build_optimizer


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_and_lowers_a_quadratic(name: str) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = build_optimizer(name, [{"params": [w]}], lr=0.01, weight_decay=0.0)
    start = float((w.detach() ** 2).sum())
    before = w.detach().clone()
    for _ in range(20):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert not torch.equal(w.detach(), before)
    assert float((w.detach() ** 2).sum()) < start


def test_usual_defaults() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    sgd = build_optimizer("sgd", [w], lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    assert sgd.defaults["weight_decay"] == 1e-4
    assert isinstance(build_optimizer("adam", [w], 1e-3, 0.0), torch.optim.Adam)
    assert type(build_optimizer("adamw", [w], 1e-3, 0.01)) is torch.optim.AdamW
    rms = build_optimizer("rmsprop", [w], 1e-3, 0.0)
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["alpha"] == 0.9


def test_sgd_nesterov_matches_hand_computation() -> None:
    # one Nesterov step from w=1 on f=w^2: g=2, buf=g, update = g + 0.9*buf = 3.8 -> w = 1 - 0.1*3.8
    w = torch.nn.Parameter(torch.ones(1))
    opt = build_optimizer("sgd", [w], lr=0.1, weight_decay=0.0)
    (w ** 2).sum().backward()
    opt.step()
    assert float(w.detach()) == pytest.approx(1 - 0.1 * 3.8)


def test_unknown_optimizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sgd"):
        build_optimizer("lbfgs", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.0)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()
    assert TrainConfig().optimizer == "adamw"
