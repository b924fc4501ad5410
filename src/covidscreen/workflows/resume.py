"""Is a run folder already finished with this config? Lets cross-validation and experiment grids resume after an
interruption without redoing finished runs, and without silently reusing a run made with other settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import TrainConfig, to_dict
from ..errors import ConfigError

# keys that change where or how fast a run is computed, not what it computes
IGNORED_KEYS = ("output", "device", "cache_dir", "eval_batch_size")


def config_differences(stored: dict, cfg: TrainConfig) -> list[str]:
    """``key: stored -> wanted`` for every key (outside :data:`IGNORED_KEYS`) whose value differs."""
    wanted = to_dict(cfg)
    diffs = []
    for key, value in wanted.items():
        if key in IGNORED_KEYS:
            continue
        old = stored.get(key, value)  # keys added after the run was made count as their default
        if isinstance(old, tuple):
            old = list(old)
        if old != value:
            diffs.append(f"{key}: {old!r} -> {value!r}")
    return diffs


def is_finished(run_dir: str | Path, cfg: TrainConfig) -> bool:
    """True when ``run_dir`` holds a complete run (metrics, checkpoint or ensemble manifest, config) of ``cfg``.

    Raises:
        ConfigError: the folder holds a complete run of another config (the message names the differing keys).
    """
    run_dir = Path(run_dir)
    done = (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file() and (
        (run_dir / "model.json").is_file() or (run_dir / "ensemble.json").is_file())
    if not done:
        return False
    stored = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    diffs = config_differences(stored, cfg)
    if diffs:
        raise ConfigError(f"{run_dir} holds a finished run of another config ({'; '.join(diffs[:3])}); delete the "
                          "folder or choose another output")
    return True
