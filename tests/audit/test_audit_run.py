"""The whole audit on planted data, its files, and the CLI command (including one-line errors)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from covidscreen.audit.render import write_audit_html
from covidscreen.audit.run import audit_table
from covidscreen.cli import app, main


def test_audit_table_reports_every_planted_problem(planted, tmp_path):
    _, table, cache = planted
    audit = audit_table(table, cache.images, cache.rows(table["path"].tolist()), tmp_path, split_source="planted")
    texts = [f["text"] for f in audit["findings"] if f["severity"] == "high"]
    assert any(t.startswith("Shortcut risk") and "100% of 'covid' images come from alpha" in t for t in texts)
    assert any("1 patient(s) have images in more than one split" in t for t in texts)
    assert any("2 pair(s) of (near-)identical images sit in different splits" in t and "1 set(s) of byte-identical"
               in t for t in texts)
    medium = [f["text"] for f in audit["findings"] if f["severity"] == "medium"]
    assert any("All 40 'covid' images come from one site (alpha)" in t for t in medium)
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["findings"] == audit["findings"]
    assert (tmp_path / "audit_pairs.csv").read_text().count("\n") == 3  # header + 2 pairs
    html = write_audit_html(tmp_path).read_text()
    assert "Shortcut risk" in html and "beta/dup_resized.jpg" in html


def test_cli_audit_on_a_data_folder(planted, tmp_path, monkeypatch):
    root, _, _ = planted
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["audit", str(root), "-o", str(tmp_path / "out"), "--image-size", "64"])
    assert res.exit_code == 0, res.output
    assert "[high] Shortcut risk" in res.output
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["split_source"].startswith("the default patient-grouped split")
    # the default split keeps patients together; the two planted copies (other patient ids) may or may not cross
    assert audit["leakage"]["n_patients_in_several_splits"] == 0
    assert audit["leakage"]["near_duplicates"]["n_pairs"] == 2
    assert (tmp_path / "out" / "audit.html").is_file()


def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    for args in (["audit", str(tmp_path / "missing")], ["audit", str(tmp_path), "--image-size", "8"]):
        monkeypatch.setattr(sys, "argv", ["covidscreen", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
