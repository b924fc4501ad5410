"""Label/site confounding table, Cramér's V and warnings."""

import pandas as pd
import pytest

from covidscreen.audit.confounding import confounding_audit, confounding_warnings, cramers_v, is_aligned


def _table(pairs):
    return pd.DataFrame([{"label": lab, "site": s} for lab, s, n in pairs for _ in range(n)])


def test_cramers_v_hand_checked():
    perfect = _table([("covid", "a", 10), ("normal", "b", 10)])
    independent = _table([("covid", "a", 5), ("covid", "b", 5), ("normal", "a", 5), ("normal", "b", 5)])
    assert cramers_v(perfect.groupby(["label", "site"]).size().unstack(fill_value=0)) == pytest.approx(1.0)
    assert cramers_v(independent.groupby(["label", "site"]).size().unstack(fill_value=0)) == pytest.approx(0.0)
    # 2x2 [[8,2],[2,8]]: chi2 = 7.2, n = 20 -> V = sqrt(7.2/20) = 0.6
    t = _table([("x", "a", 8), ("x", "b", 2), ("y", "a", 2), ("y", "b", 8)])
    assert cramers_v(t.groupby(["label", "site"]).size().unstack(fill_value=0)) == pytest.approx(0.6)


def test_single_source_class_is_flagged_in_plain_words():
    t = _table([("covid", "cohen", 40), ("normal", "nih", 30), ("normal", "cohen", 3), ("pneumonia", "nih", 20),
                ("pneumonia", "kermany", 30), ("normal", "rdb", 25)])
    w = confounding_warnings(t)
    assert any("All 40 'covid' images come from one site (cohen)" in x for x in w)
    assert any("Site 'kermany' contributes only 'pneumonia'" in x for x in w)
    block = confounding_audit(t)
    assert block["single_source_classes"] == {"covid": {"site": "cohen", "share": 1.0}}
    assert is_aligned(block)
    balanced = _table([("covid", "a", 10), ("covid", "b", 10), ("normal", "a", 10), ("normal", "b", 10)])
    assert confounding_warnings(balanced) == [] and not is_aligned(confounding_audit(balanced))
    one_site = _table([("covid", "a", 10), ("normal", "a", 10)])
    assert not confounding_audit(one_site)["single_source_classes"]
