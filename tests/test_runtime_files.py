"""Optional JSON files of a run folder read as empty when absent or damaged."""

from covidscreen.runtime import read_optional_json


def test_read_optional_json(tmp_path):
    good, bad = tmp_path / "metrics.json", tmp_path / "model.json"
    good.write_text('{"threshold": 0.4}')
    bad.write_text('{"threshold": ')  # a run killed while writing
    assert read_optional_json(good) == {"threshold": 0.4}
    assert read_optional_json(bad) == {}
    assert read_optional_json(tmp_path / "audit.json") == {}


def test_atomic_writes_keep_the_previous_file_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    import pandas as pd
    import pytest

    import covidscreen.runtime as runtime
    from covidscreen.errors import DiskFullError
    from covidscreen.runtime import atomic_output, atomic_write_bytes, atomic_write_csv, atomic_write_text

    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"auc": 0.9}')
    atomic_write_csv(tmp_path / "p.csv", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "p.csv").read_text() == "a\n1\n2\n"

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runtime.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=r"metrics\.json \(needs about 2\.0 MB.*previous metrics\.json is kept"):
        atomic_write_bytes(path, b"x" * 2_000_000)
    assert path.read_text() == '{"auc": 0.9}'
    with pytest.raises(DiskFullError, match="no model.onnx was written"):
        with atomic_output(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "p.csv"]  # no temporary files left
