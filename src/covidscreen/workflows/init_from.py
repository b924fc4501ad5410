"""Sequential (domain) fine-tuning: start a run from the trunk of an earlier run instead of ImageNet weights.

The offline stand-in for CheXNet-style chest X-ray pretraining: first fine-tune on a larger chest X-ray task (e.g.
pneumonia vs normal on the pediatric images, with ``sites``/``labels``), then on COVID with ``init_from``. The
earlier run's head is dropped (its classes may differ); the new run gets a fresh head.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..inference.run import load_checkpoint, load_run
from ..models import ScreeningModel


def load_trunk(model: ScreeningModel, run_dir: str | Path) -> dict:
    """Copy every trunk weight of the run in ``run_dir`` into ``model`` (same architecture); the head stays fresh.

    The earlier run's weights are sha256-checked by :func:`load_checkpoint`.

    Returns:
        What was loaded (for the new run's sidecar): run folder, architecture, classes, weights sha256.

    Raises:
        ConfigError: the run is of another architecture.
    """
    prev, run = load_checkpoint(run_dir, "cpu")
    if run.architecture != model.spec.name:
        raise ConfigError(f"init_from: {run_dir} holds a {run.architecture} model, but this run trains "
                          f"{model.spec.name}; use the same model")
    head = model.spec.head + "."
    state = {k: v for k, v in prev.backbone.state_dict().items() if not k.startswith(head)}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    not_head = [k for k in missing if not k.startswith(head)]
    if not_head or unexpected:  # pragma: no cover - same architecture, so only a registry change can cause this
        raise ConfigError(f"init_from: {run_dir} does not fit {model.spec.name} (missing {not_head[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return {"run_dir": str(Path(run_dir).resolve()), "architecture": run.architecture,
            "classes": list(run.classes), "weights_sha256": run.weights_sha256}


def check_no_leak(run_dir: str | Path, table: pd.DataFrame, data_dir: Path) -> None:
    """Refuse to start when images that the earlier run trained on are in this run's validation or test split.

    That happens when the two runs split differently (other seed, split fractions or data); their test results
    would then be inflated by memorised images.

    Raises:
        ConfigError: naming how many images overlap and what to change.
    """
    split_file = Path(run_dir) / "split.csv"
    if not split_file.is_file():
        return
    prev = pd.read_csv(split_file, keep_default_na=False)
    prev_meta_root = _data_dir_of(run_dir)
    trained = {str((prev_meta_root / p).resolve()) for p in prev.loc[prev["split"] == "train", "image"]}
    held_out = table[table["split"].isin(["val", "test"])]
    overlap = sum(str((data_dir / p).resolve()) in trained for p in held_out["image"])
    if overlap:
        raise ConfigError(f"init_from: {overlap} image(s) of this run's validation/test splits were training images "
                          f"of {run_dir}; use the same data, seed (or split_seed), split and max_per_class in both "
                          "runs so that their splits agree")


def _data_dir_of(run_dir: str | Path) -> Path:
    return Path(load_run(run_dir).data_dir or ".")
