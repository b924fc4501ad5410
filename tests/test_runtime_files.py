"""Optional JSON files of a run folder read as empty when absent or damaged."""

from covidscreen.runtime import read_optional_json


def test_read_optional_json(tmp_path):
    good, bad = tmp_path / "metrics.json", tmp_path / "model.json"
    good.write_text('{"threshold": 0.4}')
    bad.write_text('{"threshold": ')  # a run killed while writing
    assert read_optional_json(good) == {"threshold": 0.4}
    assert read_optional_json(bad) == {}
    assert read_optional_json(tmp_path / "audit.json") == {}
