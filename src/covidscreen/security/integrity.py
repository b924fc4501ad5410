"""Model integrity: which weights may be loaded, and what is known about where a model comes from.

covidscreen writes and loads only ``model.safetensors`` (tensors, never code) with a ``model.json`` sidecar; loading
checks the weights' sha256 against the sidecar (:func:`covidscreen.inference.checkpoint.load_checkpoint`). A sidecar
can be rewritten by whoever rewrote the weights, so a deployment pins the hash it trusts: ``--expect-sha256`` for one
model, or a manifest of allowed models (a JSON or YAML file: ``{"models": [{"name": ..., "weights_sha256": ...}]}``)
for a service. Outside weights (``--weights``) are read from safetensors or with ``torch.load(weights_only=True)``,
whose unpickler only builds tensors and refuses any other object (:func:`covidscreen.models.weights.read_state_dict`).
Pickle scanners (picklescan, modelscan) are bypassed again and again, so none is relied on here.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, ConfigError
from ..inference.checkpoint import SIDECAR_FILE
from ..inference.run import load_run

SCAN_FILE = "security_scan.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz")
SHA256_HEX = set("0123456789abcdef")


def normalise_sha256(value: str, what: str = "sha256") -> str:
    value = value.strip().lower()
    if len(value) != 64 or not set(value) <= SHA256_HEX:
        raise ConfigError(f"{what} {value[:80]!r} is not a sha256 (64 hexadecimal digits)")
    return value


@dataclass
class Manifest:
    """Allowed models: weights sha256 -> name."""

    models: dict[str, str]
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())  # JSON is YAML; safe_load builds data only
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"model manifest {path} could not be read ({exc.__class__.__name__}); expected "
                              '{"models": [{"name": ..., "weights_sha256": ...}]}') from None
        entries = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"model manifest {path} lists no models; expected "
                              '{"models": [{"name": ..., "weights_sha256": ...}]}')
        models = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "weights_sha256" not in e:
                raise ConfigError(f"model manifest {path}: entry {i} lacks weights_sha256")
            models[normalise_sha256(str(e["weights_sha256"]), f"{path} entry {i}")] = str(e.get("name", f"#{i}"))
        return cls(models, str(path))

    def check(self, sha256: str, what: str) -> str:
        """The manifest name of ``sha256``; CheckpointError when the model is not allowed."""
        if sha256 not in self.models:
            raise CheckpointError(f"{what} has weights sha256 {sha256}, which the manifest {self.path} does not allow; "
                                  "refused")
        return self.models[sha256]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def trusted_sha256(run_dir: str | Path, expect_sha256: str | None = None, manifest: str | Path | None = None
                   ) -> str | None:
    """The hash a load must match: ``expect_sha256``, or the run's recorded hash once the manifest allows it.

    Use it as ``Predictor(run_dir, expected_sha256=trusted_sha256(run_dir, expect, manifest))``: the predictor then
    hashes the very bytes it loads against it.

    Raises:
        CheckpointError: the run's recorded hash is not in the manifest.
        ConfigError: a malformed hash or manifest.
    """
    expected = normalise_sha256(expect_sha256, "--expect-sha256") if expect_sha256 else None
    if manifest is not None:
        recorded = str(load_run(run_dir).weights_sha256 or "")
        Manifest.load(manifest).check(recorded, str(run_dir))
        if expected is not None and expected != recorded:
            raise CheckpointError(f"{run_dir}: --expect-sha256 {expected} differs from the run's recorded {recorded}")
        expected = recorded
    return expected


def safetensors_summary(path: Path) -> dict[str, Any]:
    """What the safetensors header declares (tensor count, dtypes, parameters), read without loading tensors."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = 0
    for v in tensors.values():
        count = 1
        for d in v.get("shape", []):
            count *= int(d)
        params += count
    return {"tensors": len(tensors), "parameters": params,
            "dtypes": sorted({str(v.get("dtype")) for v in tensors.values()})}


@dataclass
class Provenance:
    """What is known about a run's model, and the integrity checks' verdicts."""

    run_dir: str
    facts: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, passed, detail)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "ok": self.ok, "facts": self.facts,
                "checks": [{"check": n, "passed": p, "detail": d} for n, p, d in self.checks],
                "warnings": self.warnings}


def provenance(run_dir: str | Path, expect_sha256: str | None = None, manifest: str | Path | None = None
               ) -> Provenance:
    """Hashes, training-data fingerprint, code version, scans: everything ``covidscreen verify`` prints.

    Raises:
        CheckpointError: not a run folder (no readable sidecar). Failed checks are recorded, not raised.
    """
    run = load_run(run_dir)
    run_dir = run.path
    meta = run.sidecar
    prov = Provenance(str(run_dir.resolve()))
    versions = run.versions or {}
    config = run.config or {}
    prov.facts.update({
        "architecture": run.architecture,
        "classes": list(run.classes),
        "image_size": run.image_size,
        "created": meta.get("created"),
        "data_dir": run.data_dir,
        "split_fingerprint": run.split_fingerprint,
        "split_counts": meta.get("split_counts"),
        "seed": run.seed,
        "covidscreen_version": versions.get("covidscreen"),
        "code_commit": versions.get("covidscreen_commit"),
        "library_versions": {k: v for k, v in versions.items() if k not in ("covidscreen", "covidscreen_commit")},
        "init_from": meta.get("init_from"),
        "sanitized": run.sanitized,
        "pretrained_weights": config.get("weights") or (
            "registry default" if config.get("pretrained", True) else "none (from scratch)"),
    })
    if run.kind == "ensemble":  # an ensemble: each member is a run of its own
        prov.facts["ensemble_members"] = [str(m) for m in run.members]
        prov.warnings.append("ensemble folder: verify each member run as well")
        return prov
    name = str(run.weights_file or "")
    weights = run_dir / name
    fmt_ok = Path(name).name == name and name.endswith(".safetensors") and weights.is_file()
    prov.checks.append(("weights are safetensors in the run folder", fmt_ok, name or "no weights_file in sidecar"))
    if not fmt_ok:
        return prov
    actual = sha256_of(weights)
    recorded = str(run.weights_sha256 or "")
    prov.facts["weights_file"] = str(weights)
    prov.facts["weights_sha256"] = actual
    prov.facts["weights_bytes"] = weights.stat().st_size
    prov.checks.append((f"sha256 matches {SIDECAR_FILE}", actual == recorded, f"recorded {recorded or 'none'}"))
    try:
        prov.facts["weights_header"] = safetensors_summary(weights)
        prov.checks.append(("safetensors header is well-formed", True, ""))
    except CheckpointError as exc:
        prov.checks.append(("safetensors header is well-formed", False, str(exc)))
    if expect_sha256:
        want = normalise_sha256(expect_sha256, "--expect-sha256")
        prov.checks.append(("sha256 is the expected one", actual == want, f"expected {want}"))
    if manifest is not None:
        allowed = Manifest.load(manifest)
        prov.checks.append((f"allowed by manifest {manifest}", actual in allowed.models,
                            allowed.models.get(actual, "not listed")))
    pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        prov.warnings.append(f"pickle-format files in the run folder ({', '.join(pickles)}): covidscreen never loads "
                             "them; do not load them elsewhere either")
    scan_file = run_dir / SCAN_FILE
    if scan_file.is_file():
        try:
            prov.facts["scans"] = json.loads(scan_file.read_text())
        except json.JSONDecodeError:
            prov.warnings.append(f"{SCAN_FILE} is damaged")
    else:
        prov.facts["scans"] = None
        prov.warnings.append("no backdoor scan was run on this model (covidscreen scan RUN_DIR)")
    return prov


def format_provenance(prov: Provenance) -> str:
    """Plain-text report of :func:`provenance` for the terminal."""
    f = prov.facts
    lines = [f"run: {prov.run_dir}",
             f"model: {f.get('architecture')} classes {f.get('classes')} input {f.get('image_size')} px",
             f"weights: {f.get('weights_file', '?')} ({f.get('weights_bytes', '?')} bytes)",
             f"weights sha256: {f.get('weights_sha256', '?')}",
             f"trained: {f.get('created')} on {f.get('data_dir')} (seed {f.get('seed')})",
             f"split fingerprint: {f.get('split_fingerprint')} {f.get('split_counts') or ''}",
             f"code: covidscreen {f.get('covidscreen_version')} commit {f.get('code_commit') or 'unknown'}",
             f"libraries: {', '.join(f'{k} {v}' for k, v in (f.get('library_versions') or {}).items())}",
             f"initial weights: {f.get('pretrained_weights')}"
             + (f"; trunk from run {f['init_from'].get('run_dir')} (sha256 {f['init_from'].get('weights_sha256')})"
                if f.get("init_from") else "")]
    san = f.get("sanitized")
    if san:
        lines.append(f"sanitized: {san.get('method')} on {san.get('clean_images')} clean image(s) of "
                     f"{san.get('clean_data')} at {san.get('date')}, from run {san.get('source_run')} (sha256 "
                     f"{san.get('source_weights_sha256')})")
    scans = f.get("scans")
    if scans:
        for kind, rec in scans.items():
            lines.append(f"scan {kind}: {rec.get('verdict', '?')} ({rec.get('summary', '')}) at {rec.get('date')}")
    for name, passed, detail in prov.checks:
        lines.append(f"[{'ok' if passed else 'FAIL'}] {name}{': ' + detail if detail else ''}")
    lines += [f"warning: {w}" for w in prov.warnings]
    lines.append("verdict: " + ("integrity checks passed" if prov.ok else "INTEGRITY CHECK FAILED: do not use"))
    return "\n".join(lines)
