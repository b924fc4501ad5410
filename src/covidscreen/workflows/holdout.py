"""Leave-one-site-out validation: train without one site, then evaluate on that site as external data.

``covidscreen train --holdout-site cohen`` removes every image of ``cohen`` before the split (so none is in train,
val or test) and, after training, evaluates the model on them into ``RUN_DIR/eval-holdout-cohen/``; the comparison
with the internal test split goes into the run's ``metrics.json`` (``holdout_site``) and report.

A held-out site may hold classes that no other site has (on the shared data every COVID image is from ``cohen``).
The model then never learns that class; those images are counted and named in the report, not silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.locate import DEFAULT_DATASET, resolve_data_dir
from ..data.table import load_table
from ..errors import ConfigError
from ..inference.run import load_run
from ..runtime import atomic_write_text
from ..training.subsets import subsample_per_class
from .evaluate import evaluate_table


def exclude_site(table: pd.DataFrame, site: str) -> pd.DataFrame:
    """The table without the images of ``site``.

    Raises:
        ConfigError: the site is not in the data, or nothing would be left to train on.
    """
    sites = sorted(table["site"].astype(str).unique())
    if site not in sites:
        raise ConfigError(f"holdout_site '{site}' is not a site of the data; sites: {', '.join(sites)}")
    rest = table[table["site"] != site].reset_index(drop=True)
    if rest.empty:
        raise ConfigError(f"holdout_site '{site}' is the only site of the data: nothing is left to train on")
    rest.attrs.update(table.attrs)
    return rest


def evaluate_holdout_site(run_dir: str | Path, cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Evaluate a finished run on its held-out site; returns (and stores in ``metrics.json``) the summary block."""
    run_dir = Path(run_dir)
    site = cfg.holdout_site
    data_dir = resolve_data_dir(cfg.data, cfg.modality or DEFAULT_DATASET)  # modality ct: the data root's ct/
    table = load_table(data_dir)
    held = table[table["site"] == site].reset_index(drop=True)
    if cfg.max_per_class:
        held = subsample_per_class(held, cfg.max_per_class, cfg.seed)
    classes = list(load_run(run_dir).classes)
    unknown = held[~held["label"].isin(classes)]
    notes = []
    if len(unknown):
        counts = ", ".join(f"{n} '{lab}'" for lab, n in unknown["label"].value_counts().sort_index().items())
        notes.append(f"{counts} image(s) of site '{site}' could not be evaluated: no other site has that class, so "
                     f"the model never learned it (classes: {', '.join(classes)}). A model trained on these data "
                     "cannot be validated on that class at an unseen site.")
    held = held[held["label"].isin(classes)].reset_index(drop=True)
    block: dict[str, Any] = {"site": site, "notes": notes,
                             "description": f"Trained without any image of site '{site}'; internal = the run's test "
                                            f"split (other sites), external = {len(held)} image(s) of '{site}'."}
    out = run_dir / f"eval-holdout-{site}"
    if held.empty:
        block["notes"].append(f"No image of site '{site}' has a class the model knows: nothing to evaluate.")
    else:
        evaluate_table(run_dir, held, "external", out, device=cfg.device, progress=progress,
                       n_boot=int(cfg.bootstrap), seed=cfg.seed, description=block["description"],
                       data_dir=data_dir, notes=notes)
        ext = json.loads((out / "metrics.json").read_text())
        block["comparison"] = ext.get("internal_vs_external", {}).get("comparison", [])
        block["n_images"] = int(len(held))
        block["report"] = f"{out.name}/report.html"
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["holdout_site"] = block
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2))
    return block
