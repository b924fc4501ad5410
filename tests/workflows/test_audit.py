"""The whole audit on planted data, its files, and the CLI command (including one-line errors)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from covidscreen.cli import app, main
from covidscreen.reporting.audit_page import write_audit_html
from covidscreen.workflows.audit import audit_table


def test_audit_table_reports_every_planted_problem(planted, tmp_path):
    _, table, cache = planted
    audit = audit_table(table, cache.images, cache.rows(table["path"].tolist()), tmp_path, split_source="planted")
    texts = [f["text"] for f in audit["findings"] if f["severity"] == "high"]
    assert any(t.startswith("Shortcut risk") and "100% of 'covid' images come from alpha" in t for t in texts)
    # the planted site is visible within a label too (normal and pneumonia images of beta and gamma), and said so
    within = audit["shortcut"]["pixels"]["site_within_label"]
    assert within["balanced_accuracy"] > 0.9 and within["chance"] == 0.5 and set(within["per_label"]) >= {"normal"}
    assert any("Within each label, where the disease cannot explain it, the site is predicted with balanced "
               f"accuracy from the images {100 * within['balanced_accuracy']:.0f}%" in t for t in texts)
    assert any("1 patient(s) have images in more than one split" in t for t in texts)
    assert any("2 pair(s) of (near-)identical images sit in different splits" in t and "1 set(s) of byte-identical"
               in t for t in texts)
    medium = [f["text"] for f in audit["findings"] if f["severity"] == "medium"]
    assert any("All 40 'covid' images come from one site (alpha)" in t for t in medium)
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["findings"] == audit["findings"]
    assert (tmp_path / "audit_pairs.csv").read_text().count("\n") == 3  # header + 2 pairs
    html = write_audit_html(tmp_path).read_text()
    assert "Shortcut risk" in html and "beta/dup_resized.jpg" in html and "site, within each label" in html


def test_cli_audit_on_a_data_folder(planted, tmp_path, monkeypatch):
    root, _, _ = planted
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["audit", str(root), "-o", str(tmp_path / "out"), "--image-size", "64"])
    assert res.exit_code == 0, res.output
    assert "[high] Shortcut risk" in res.output
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["split_source"].startswith("the default patient-grouped split")
    assert "near-duplicates kept together" in audit["split_source"]
    # the default split keeps patients together, and the two planted copies (other patient ids) with their originals
    assert audit["leakage"]["n_patients_in_several_splits"] == 0
    assert audit["leakage"]["near_duplicates"]["n_pairs"] == 2
    assert audit["leakage"]["near_duplicates"]["n_cross_split"] == 0
    assert audit["leakage"]["n_exact_duplicate_sets_cross_split"] == 0
    assert (tmp_path / "out" / "audit.html").is_file()


def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    for args in (["audit", str(tmp_path / "missing")], ["audit", str(tmp_path), "--image-size", "8"]):
        monkeypatch.setattr(sys, "argv", ["covidscreen", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines


def test_audit_of_a_run_probes_its_model_on_its_own_preprocessing(tmp_path, monkeypatch):
    """``covidscreen audit DATA RUN`` feeds the model what it was trained on (here a 10 % border crop), as the audit
    at the end of training does, not the plain resized images."""
    import torch

    from covidscreen.config import PreprocessConfig, TrainConfig
    from covidscreen.inference.run import read_sidecar
    from covidscreen.workflows import audit as cache_module
    from covidscreen.workflows.audit import audit_data_dir
    from covidscreen.workflows.fit import fit
    from tests.explain_fixtures import write_synthetic_folder

    data = write_synthetic_folder(tmp_path / "data", per_class=12)
    cfg = TrainConfig(data=str(data), output=str(tmp_path / "run"), model="mobilenet_v2_035", pretrained=False,
                      image_size=64, epochs=1, samples_per_epoch=None, batch_size=8, split=(0.5, 0.25, 0.25),
                      device="cpu", augment=False, audit=False, bootstrap=0,
                      preprocess=PreprocessConfig(border_crop=0.1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    seen = []
    real = cache_module.ImageCache

    def spy(paths, size, *args, **kwargs):
        seen.append(kwargs.get("preprocess"))
        return real(paths, size, *args, **kwargs)

    monkeypatch.setattr(cache_module, "ImageCache", spy)
    out = audit_data_dir(data, run, output=tmp_path / "audit", device="cpu", progress=False)
    assert seen == [PreprocessConfig.from_dict(read_sidecar(run)["preprocessing"])] and seen[0].border_crop == 0.1
    audit = json.loads((out / "audit.json").read_text())
    assert "balanced_accuracy" in audit["shortcut"]["model_features"]["site"]
    # each label of this folder comes from one site: nothing to probe within a label, and the audit says why
    assert "two sites" in audit["shortcut"]["model_features"]["site_within_label"]["skipped"]


def test_audit_job_prints_the_findings_of_audit_json(planted, tmp_path, monkeypatch):
    from covidscreen.workflows.audit import audit_job

    root, _, _ = planted
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path / "cache"))
    outcome = audit_job(root, output=tmp_path / "out", image_size=64, progress=False)
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert outcome.findings == saved["findings"] and outcome.output == tmp_path / "out"
    lines = outcome.lines()
    assert lines[:-1] == [f"[{f['severity']}] {f['text']}" for f in saved["findings"]]
    assert lines[-1] == f"audit: {tmp_path / 'out' / 'audit.json'} | {tmp_path / 'out' / 'audit.html'}"


@pytest.mark.parametrize("size", [8, 2048])
def test_audit_job_refuses_an_image_size_before_reading_anything(tmp_path, size):
    from covidscreen.errors import ConfigError
    from covidscreen.workflows.audit import audit_job

    with pytest.raises(ConfigError, match=f"--image-size {size}: use an integer from 32 to 1024"):
        audit_job(tmp_path / "missing", image_size=size)
