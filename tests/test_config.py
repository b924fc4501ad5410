import pytest

from covidscreen.config import TrainConfig, resolve_train_config
from covidscreen.errors import ConfigError


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
