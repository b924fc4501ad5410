"""Model integrity: pinned hashes, safetensors only, and a real pickle payload that must never run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covidscreen.errors import CheckpointError, ConfigError, ModelError
from covidscreen.inference.checkpoint import save_checkpoint, write_sidecar
from covidscreen.inference.predictor import Predictor
from covidscreen.inference.run import load_checkpoint, load_run, read_sidecar
from covidscreen.models import create_model
from covidscreen.models.weights import read_state_dict
from covidscreen.security.integrity import Manifest, format_provenance, provenance, sha256_of, trusted_sha256
from tests.conftest import LIVENESS_S


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    model = create_model("squeezenet1_1", pretrained=False, num_classes=2)
    out = tmp_path / "run"
    save_checkpoint(out, model, {"classes": ["covid", "normal"], "image_size": 64, "positive_class": "covid",
                                 "threshold": 0.5, "split_fingerprint": "f" * 16, "seed": 3})
    return out


class Payload:
    """A pickle that creates a file when unpickled: real code execution, as in a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def _payload_file(tmp_path: Path, name: str = "evil.pth") -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / name
    torch.save({"features.0.weight": torch.zeros(2), "x": Payload(marker)}, path)
    return path, marker


def test_the_payload_is_real(tmp_path):
    """Unpickled without protection (in another process), the file does run code: the tests below mean something."""
    path, marker = _payload_file(tmp_path)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=LIVENESS_S)
    assert marker.read_text() == "payload ran"


def test_outside_weights_with_a_payload_are_refused_and_never_run(tmp_path):
    path, marker = _payload_file(tmp_path)
    with pytest.raises(ModelError, match="could not be read as a state_dict"):
        read_state_dict(path)
    with pytest.raises(ModelError):
        create_model("squeezenet1_1", pretrained=True, num_classes=2, weights_path=path)  # --weights PATH
    assert not marker.exists()


def test_a_run_folder_whose_weights_are_a_pickle_is_refused_and_never_runs(run_dir, tmp_path):
    from covidscreen.workflows.init_from import load_trunk

    path, marker = _payload_file(tmp_path)
    # the attacker controls the whole folder: weights and the sidecar's hash
    (run_dir / "model.safetensors").write_bytes(path.read_bytes())
    meta = read_sidecar(run_dir)
    meta["weights_sha256"] = sha256_of(run_dir / "model.safetensors")
    write_sidecar(run_dir, meta)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(run_dir)
    with pytest.raises(CheckpointError):
        load_trunk(create_model("squeezenet1_1", pretrained=False, num_classes=2), run_dir)  # --init-from RUN
    # and a sidecar pointing at a pickle file is refused before the file is opened
    (run_dir / "model.pth").write_bytes(path.read_bytes())
    meta["weights_file"] = "model.pth"
    write_sidecar(run_dir, meta)
    with pytest.raises(CheckpointError, match="only a .safetensors file"):
        load_checkpoint(run_dir)
    meta["weights_file"] = "../run/model.safetensors"
    write_sidecar(run_dir, meta)
    with pytest.raises(CheckpointError, match="only a .safetensors file"):
        load_checkpoint(run_dir)
    assert not marker.exists()


def test_changed_weights_are_refused(run_dir):
    blob = bytearray((run_dir / "model.safetensors").read_bytes())
    blob[-5] ^= 0x01  # one bit of one weight
    (run_dir / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="changed or replaced after they were written; refused"):
        load_checkpoint(run_dir)
    prov = provenance(run_dir)
    assert not prov.ok and "INTEGRITY CHECK FAILED" in format_provenance(prov)


def test_expected_sha256_pins_the_model(run_dir):
    good = sha256_of(run_dir / "model.safetensors")
    load_run(run_dir).load_model("cpu", good.upper())
    assert Predictor(run_dir, device="cpu", expected_sha256=good).classes == ["covid", "normal"]
    with pytest.raises(CheckpointError, match="--expect-sha256 expects"):
        Predictor(run_dir, device="cpu", expected_sha256="0" * 64)
    with pytest.raises(ConfigError, match="not a sha256"):
        trusted_sha256(run_dir, "abc")


def test_manifest_of_allowed_models(run_dir, tmp_path):
    good = sha256_of(run_dir / "model.safetensors")
    allowed = tmp_path / "allowed.yaml"
    allowed.write_text(json.dumps({"models": [{"name": "screen-v1", "weights_sha256": good}]}))
    assert trusted_sha256(run_dir, manifest=allowed) == good
    other = tmp_path / "other.yaml"
    other.write_text("models:\n  - {name: other, weights_sha256: " + "1" * 64 + "}\n")
    with pytest.raises(CheckpointError, match="does not allow"):
        trusted_sha256(run_dir, manifest=other)
    (tmp_path / "bad.yaml").write_text("models: []\n")
    with pytest.raises(ConfigError, match="lists no models"):
        Manifest.load(tmp_path / "bad.yaml")
    assert provenance(run_dir, manifest=allowed).ok and not provenance(run_dir, manifest=other).ok


def test_provenance_reports_hashes_fingerprint_code_and_scans(run_dir):
    (run_dir / "extra.pkl").write_bytes(b"\x80\x04N.")
    prov = provenance(run_dir, expect_sha256=sha256_of(run_dir / "model.safetensors"))
    text = format_provenance(prov)
    assert prov.ok
    assert prov.facts["weights_sha256"] in text and "split fingerprint: ffffffffffffffff" in text
    assert prov.facts["weights_header"]["tensors"] > 10
    assert "commit" in text and "no backdoor scan was run" in text and "extra.pkl" in text
    (run_dir / "security_scan.json").write_text(json.dumps({"model": {"verdict": "clean", "summary": "x",
                                                                      "date": "2026"}}))
    assert "scan model: clean" in format_provenance(provenance(run_dir))


def test_verify_job_prints_text_or_json_and_names_a_failed_check(run_dir):
    from covidscreen.security.integrity import verify_job

    good = verify_job(run_dir, sha256_of(run_dir / "model.safetensors"))
    assert good.failure is None and good.text == format_provenance(good.provenance)
    as_json = verify_job(run_dir, as_json=True)
    assert json.loads(as_json.text)["ok"] is True
    bad = verify_job(run_dir, "0" * 64)
    assert bad.failure == f"{run_dir}: integrity check failed; do not use this model" and "[FAIL]" in bad.text
