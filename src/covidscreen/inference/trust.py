"""Which weights a load must have: a sha256 the user trusts (``--expect-sha256``) or a manifest of allowed models.

A run's record can be rewritten by whoever rewrote its weights, so a deployment pins the hash it trusts: one value
for one model, or a manifest (JSON or YAML: ``{"models": [{"name": ..., "weights_sha256": ...}]}``) for a service.
:func:`trusted_sha256` turns either into the digest that :class:`~covidscreen.inference.predictor.Predictor` checks
against the very bytes it loads. It lives beside the Predictor (not in ``security/``, which builds on the jobs of
``workflows/``) because every way of opening a run for prediction resolves it: ``predict``, the service, the DICOM
node (``workflows/predict.py``). ``security/integrity.py`` reports on the same records (``covidscreen verify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import CheckpointError, ConfigError
from .run import load_run

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
