"""The typed configuration of the service (``covidscreen serve`` maps its options onto it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

BACKENDS = ("auto", "torch", "onnx")


@dataclass
class ServeConfig:
    """Settings of one service process; every limit has a default and a reason.

    Attributes:
        run_dir: a run or ensemble folder.
        host: bind address; loopback unless told otherwise (put a TLS-terminating proxy in front for a network).
        port: TCP port.
        backend: ``onnx`` (ONNX Runtime, needs ``model.onnx``), ``torch``, or ``auto`` (ONNX when exported).
        db: audit-log database URL or SQLite path (None: ``audit_log.sqlite`` in the run folder).
        api_key_file: file of accepted API keys, one per line (None: no authentication).
        device: ``auto``, ``cpu`` or ``cuda`` for the PyTorch backend.
        max_upload_mb: largest request body; larger answers 413 before it is read.
        max_files: most files per request (the web page sends one file per request).
        max_pixels: most pixels per image (width x height from the header, before decoding).
        max_queue: images admitted at once (decoding, waiting or in a forward pass); more answer 503 + Retry-After.
        max_batch: most images per forward pass.
        batch_wait_ms: how long a forward pass waits for images of other requests that are already being decoded.
        decode_threads: threads decoding uploads (PIL and pydicom release the GIL for the heavy parts).
        model_threads: threads of one forward pass (PyTorch intra-op, ONNX Runtime intra-op); None: the library's
            default (all cores). Fewer leaves cores to decoding: forward passes and decoding then overlap instead
            of fighting for the same cores.
        operating_point: the default operating point (a request may pick another with ``?operating_point=``).
        expect_sha256: refuse to start unless the weights have this sha256 (a value the operator trusts).
        manifest: refuse to start unless this YAML/JSON list of allowed models names the run's weights.
        strip: screen every image for a backdoor trigger (STRIP, calibrated on the run's validation images at
            ``strip_frr`` false rejections); adds ``strip_entropy``/``strip_flag`` and a warning per flagged image.
            It costs ``n_perturb`` (32) extra forward passes per image: off by default.
        allow_flagged_model: start even when the model's last backdoor scan flagged it (``covidscreen scan``);
            without it such a model is refused at start-up.
    """

    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    db: str | None = None
    api_key_file: Path | None = None
    device: str = "auto"
    max_upload_mb: float = 32.0
    max_files: int = 20
    max_pixels: int = 60_000_000
    max_queue: int = 64
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    decode_threads: int = 2
    model_threads: int | None = None
    operating_point: str = "default"
    expect_sha256: str | None = None
    manifest: Path | None = None
    strip: bool = False
    strip_frr: float = 0.01
    allow_flagged_model: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if self.host != "localhost":
                raise ConfigError(f"host {self.host!r} is not an IP address (e.g. 127.0.0.1, 0.0.0.0)") from None
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range 1-65535")
        for name in ("max_upload_mb", "max_files", "max_pixels", "max_queue", "max_batch", "decode_threads"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be 0 or more, got {self.batch_wait_ms}")
        if self.api_key_file is not None:
            self.api_key_file = Path(self.api_key_file)
        if self.manifest is not None:
            self.manifest = Path(self.manifest)
        if not 0 < self.strip_frr < 0.5:
            raise ConfigError(f"strip_frr {self.strip_frr} is invalid: expected a share in (0, 0.5), e.g. 0.01")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
