"""A bad config gives a one-line error naming the key."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from covidscreen.config import TrainConfig, apply_overrides, resolve_train_config, to_dict
from covidscreen.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _yaml(tmp_path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key", [
    ("folds: 1\n", "folds"),
    ("folds: 2\n", "folds"),
    ("fold: 3\n", "fold"),
    ("folds: 5\nfold: 5\n", "fold"),
    ("loss: hinge\n", "loss"),
    ("focal_gamma: -1\n", "focal_gamma"),
    ("loss: focal\nfocal_alpha: 1.5\nclass_weights: false\n", "focal_alpha"),
    ("loss: focal\nfocal_alpha: 0.25\n", "focal_alpha"),  # class_weights is on by default: both would weight
    ("focal_alpha: 0.25\nclass_weights: false\n", "focal_alpha"),  # only with focal loss
    ("sampler: balanced\n", "sampler"),  # with class weights it would correct twice
    ("sampler: stratified\nclass_weights: false\n", "sampler"),
    ("mixup_alpha: -0.2\n", "mixup_alpha"),
    ("cutmix_alpha: -1\n", "cutmix_alpha"),
    ("lr_decay: 0\n", "lr_decay"),
    ("lr_decay: 1.5\n", "lr_decay"),
    ("head_warmup_epochs: 4\nepochs: 4\n", "head_warmup_epochs"),
    ("task: ternary\n", "task"),
    ("train_fraction: 0\n", "train_fraction"),
    ("train_fraction: 1.5\n", "train_fraction"),
    ("labels: [covid]\n", "labels"),
    ("sites: []\n", "sites"),
])
def test_impossible_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        resolve_train_config(_yaml(tmp_path, text))
    msg = str(exc.value)
    assert f"'{key}'" in msg and "\n" not in msg


@pytest.mark.parametrize("text,key", [
    ("folds: five\n", "folds"),
    ("mixup_alpha: yes\n", "mixup_alpha"),
    ("sites: kermany\n", "sites"),  # a list is expected
    ("labels: [1, 2]\n", "labels"),  # of strings
    ("init_from: 3\n", "init_from"),
    ("focal_alhpa: 0.3\n", "focal_alhpa"),  # unknown key (typo)
])
def test_wrong_types_and_unknown_keys_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as exc:
        resolve_train_config(_yaml(tmp_path, text))
    assert "\n" not in str(exc.value)


def test_valid_options_are_accepted_and_round_trip(tmp_path):
    text = ("loss: focal\nfocal_gamma: 1\nfocal_alpha: 0.4\nclass_weights: false\nsampler: random\nmixup_alpha: 0.2\n"
            "cutmix_alpha: 1\nlr_decay: 0.7\nhead_warmup_epochs: 1\ntask: binary\nsites: [cohen, nih]\n"
            "labels: [covid, normal]\nsplit_seed: 4\ntrain_fraction: 0.25\nfolds: 10\n")
    cfg = resolve_train_config(_yaml(tmp_path, text))
    assert cfg.focal_gamma == 1.0 and isinstance(cfg.focal_gamma, float)
    assert cfg.sites == ["cohen", "nih"] and cfg.folds == 10
    assert apply_overrides(TrainConfig(), to_dict(cfg)) == cfg
    # defaults keep the spine's behaviour: every new option is off
    d = TrainConfig()
    assert (d.loss, d.sampler, d.mixup_alpha, d.cutmix_alpha, d.lr_decay, d.head_warmup_epochs, d.task,
            d.train_fraction, d.folds) == ("cross_entropy", "random", 0.0, 0.0, 1.0, 0, "multiclass", 1.0, None)


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "covidscreen", "train", "--folds", "1"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config key 'folds' = 1 is invalid: expected null or at least 3 (one fold tests, the next validates, "
        "the others train)"]


# --- spine: precedence, YAML errors ---
def test_yaml_then_cli_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 1\nsplit: [0.6, 0.2, 0.2]\nmodel: resnet18\n")
    cfg = resolve_train_config(f, epochs=2)
    assert cfg.epochs == 2 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.split == (0.6, 0.2, 0.2) and cfg.model == "resnet18"
    assert TrainConfig().epochs != 7


@pytest.mark.parametrize("text,key", [
    ("epoch: 3\n", "epoch"),
    ("epochs: three\n", "epochs"),
    ("epochs: 0\n", "epochs"),
    ("split: [0.5, 0.5, 0.5]\n", "split"),
    ("batch_size: true\n", "batch_size"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve_train_config(f)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_train_config(tmp_path / "nope.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_train_config(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_train_config(f)


def test_variadic_tuples_take_any_length_of_their_item_type():
    @dataclass
    class Betas:
        betas: tuple[float, ...] = (1.0,)
        pair: tuple[int, str] = (0, "a")

    assert apply_overrides(Betas(), {"betas": [1, 2.5, 3]}).betas == (1.0, 2.5, 3.0)
    assert apply_overrides(Betas(), {"betas": []}).betas == ()
    with pytest.raises(ConfigError, match="'betas' has value"):
        apply_overrides(Betas(), {"betas": [1, "x"]})
    with pytest.raises(ConfigError, match="'pair' has value"):  # fixed-length tuples keep their length
        apply_overrides(Betas(), {"pair": [1, "a", "b"]})
