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

from ..errors import CheckpointError
from ..inference.run import load_run
from ..inference.trust import Manifest, normalise_sha256, trusted_sha256  # noqa: F401 (moved; kept importable here)

SCAN_FILE = "security_scan.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    prov = Provenance(str(run_dir.resolve()))
    versions = run.versions or {}
    config = run.config or {}
    prov.facts.update({
        "architecture": run.architecture,
        "classes": list(run.classes),
        "image_size": run.image_size,
        "created": run.created,
        "data_dir": run.data_dir,
        "split_fingerprint": run.split_fingerprint,
        "split_counts": run.split_counts,
        "seed": run.seed,
        "covidscreen_version": versions.get("covidscreen"),
        "code_commit": versions.get("covidscreen_commit"),
        "library_versions": {k: v for k, v in versions.items() if k not in ("covidscreen", "covidscreen_commit")},
        "init_from": run.init_from,
        "sanitized": run.sanitized,
        "pretrained_weights": config.get("weights") or (
            "registry default" if config.get("pretrained", True) else "none (from scratch)"),
    })
    _check_ood(run, prov)
    prov.facts["commissioning"] = {n: {"verdict": c.verdict, "created": c.created, "threshold": c.operating_point,
                                       "data_fingerprint": c.data_fingerprint,
                                       "specificity": c.record.get("specificity"),
                                       "sensitivity": c.record.get("sensitivity")}
                                   for n, c in run.commissioning.items()}
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
    prov.checks.append((f"sha256 matches {run.record_file.name}", actual == recorded, f"recorded {recorded or 'none'}"))
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


def _check_ood(run: Any, prov: Provenance) -> None:
    """The out-of-distribution model: its file's sha256 against the sidecar (a missing one is a warning)."""
    rec = run.ood
    if rec is None:
        prov.facts["ood"] = None
        prov.warnings.append("no out-of-distribution model: results carry no flag for images unlike the training "
                             f"images (covidscreen ood fit {run.path})")
        return
    path = run.path / rec.file
    ok_name = Path(rec.file).name == rec.file and rec.file.endswith(".safetensors")
    actual = sha256_of(path) if ok_name and path.is_file() else None
    prov.facts["ood"] = {"file": str(path), "sha256": actual, "detector": rec.detector, "threshold": rec.threshold,
                         "flag_rate": rec.flag_rate, "val_flag_rate": rec.val_flag_rate}
    prov.checks.append(("out-of-distribution model matches its sha256", actual == rec.sha256,
                        f"recorded {rec.sha256}" if actual is not None else f"{rec.file} is missing"))


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
    ood = f.get("ood")
    if ood:
        lines.append(f"out-of-distribution model: {ood['detector']}, threshold {ood['threshold']:.4g} (flags "
                     f"{ood['flag_rate']:.0%} of validation images), sha256 {ood['sha256']}")
    for n, c in (f.get("commissioning") or {}).items():
        spec = c.get("specificity") or {}
        lines.append(f"commissioning '{n}': {c['verdict']} on {c['created']}, threshold {c['threshold']:.4g}, "
                     f"specificity {spec.get('estimate', float('nan')):.3f} (lower bound "
                     f"{spec.get('ci_low', float('nan')):.3f}), data sha256 {c['data_fingerprint']}")
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


@dataclass(frozen=True)
class VerifyOutcome:
    """What ``covidscreen verify`` prints (``text``), and the error it ends with when a check failed (``failure``;
    None when every check passed)."""

    provenance: Provenance
    text: str
    failure: str | None


def verify_job(run_dir: str | Path, expect_sha256: str | None = None, manifest: str | Path | None = None,
               as_json: bool = False) -> VerifyOutcome:
    """``covidscreen verify``: the run's :func:`provenance`, as JSON or as the plain-text report."""
    prov = provenance(run_dir, expect_sha256, manifest)
    text = json.dumps(prov.as_dict(), indent=2, default=str) if as_json else format_provenance(prov)
    return VerifyOutcome(prov, text, None if prov.ok else f"{run_dir}: integrity check failed; do not use this model")

