"""The generalisation grid file expands into valid, distinct training configurations."""

from pathlib import Path

import pytest

from covidscreen.errors import ConfigError
from covidscreen.training.generalisation_grid import expand_grid

GRID = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "generalisation.yaml"


def test_shipped_grid_expands_to_the_variants():
    output, runs = expand_grid(GRID)
    names = [n for n, _ in runs]
    variants = {n.split("__")[1] for n in names}
    assert names[0] == "seed=0__baseline"
    assert {"lung_crop", "lung_mask", "clahe", "site_balanced", "adversarial", "combined"} <= variants
    assert len(names) == 3 * len(variants)
    cfgs = dict(runs)
    assert cfgs["seed=1__baseline"].roi == "none" and cfgs["seed=1__lung_mask"].roi == "lungs-mask"
    assert cfgs["seed=2__baseline"].seed == 2
    assert cfgs["seed=0__adversarial"].adversarial_weight > 0 and cfgs["seed=0__site_balanced"].site_balanced
    assert all(c.keep_mixed_sites and c.image_size == cfgs["seed=0__baseline"].image_size for c in cfgs.values())
    assert len({c.output for c in cfgs.values()}) == len(runs)
    assert all(Path(c.output).parent == output / "runs" for c in cfgs.values())


def test_list_axes_multiply_and_bad_axes_are_refused(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("base: {epochs: 1}\ngrid:\n  seed: [0, 1]\n  v: {a: {}, b: {intensity: clahe}}\n")
    _, runs = expand_grid(f)
    assert [n for n, _ in runs] == ["seed=0__a", "seed=0__b", "seed=1__a", "seed=1__b"]
    f.write_text("grid:\n  seed: 3\n")
    with pytest.raises(ConfigError, match="grid axis"):
        expand_grid(f)
    f.write_text("grid:\n  v: {a: {roi: lungs}}\n")
    with pytest.raises(ConfigError, match="roi"):
        expand_grid(f)


def test_aggregation_over_seeds_and_markdown():
    import pandas as pd

    from covidscreen.training.generalisation_grid import aggregate_over_seeds, markdown_table

    t = pd.DataFrame({"variant": ["seed=0__a", "seed=1__a", "seed=0__b", "seed=1__b"],
                      "_auc_cohen": [0.6, 0.8, 0.5, float("nan")], "_probe": [0.9, 0.7, 0.8, 0.8]})
    agg = aggregate_over_seeds(t)
    assert list(agg["variant"]) == ["a", "b"] and list(agg["seeds"]) == [2, 2]
    assert agg.loc[0, "cohen test AUC mean (sd)"] == "0.700 (0.141)"
    assert agg.loc[1, "cohen test AUC mean (sd)"] == "0.500 (0.000)"  # the NaN seed is left out, not counted as 0
    assert agg.loc[0, "cohen test AUC range"] == "0.600-0.800"
    md = markdown_table(agg).splitlines()
    assert md[0].startswith("| variant | seeds |") and md[1].startswith("|---|") and len(md) == 4


def test_paired_differences_to_the_baseline_of_the_same_seed():
    import pandas as pd

    from covidscreen.training.generalisation_grid import aggregate_over_seeds

    t = pd.DataFrame({"variant": ["seed=0__baseline", "seed=0__x", "seed=1__baseline", "seed=1__x"],
                      "_auc_cohen": [0.60, 0.70, 0.80, 0.82]})
    agg = aggregate_over_seeds(t).set_index("variant")
    assert agg.loc["x", "cohen AUC - baseline, paired: mean [min, max]"] == "+0.060 [+0.020, +0.100]"
    assert pd.isna(agg.loc["baseline"].get("cohen AUC - baseline, paired: mean [min, max]"))
