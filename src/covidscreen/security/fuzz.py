"""Hostile image inputs for fuzzing the decoders (and anything that accepts uploads).

:func:`hostile_corpus` derives a deterministic corpus from real seed files: truncations, bit flips, mangled headers,
forged dimensions (valid checksums, so the decoder believes them), decompression bombs, empty and random files, and
DICOM files with absurd tags. :func:`check_decoding` runs inputs through the decoding layer and classifies each
outcome: a valid image, a clear :class:`~covidscreen.errors.ImageDecodeError`, or a crash (anything else).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config

from ..data.decode import read_image
from ..errors import ImageDecodeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid PNG of zeros declaring ``width`` x ``height``: tiny on disk, huge once decoded."""
    row = b"\x00" * (1 + width * bit_depth // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(min(height, 64))]
    body = b"".join(parts)
    # the remaining rows compress to almost nothing; emitting them all keeps the stream valid
    for _ in range(height - min(height, 64)):
        body += comp.compress(row)
    body += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def png_forged_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR claiming another size (CRC recomputed, so only the size is a lie)."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG with a leading IHDR")
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + _png_chunk(b"IHDR", ihdr) + png[33:]


def jpeg_forged_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF marker claiming another size."""
    data = bytearray(jpeg)
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker found")


def _dicom_variant(base: bytes, edit: Callable[[object], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(base))
    # an attacker writes whatever bytes they like: switch pydicom's value validation off while forging
    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    implicit, little = ds.original_encoding
    try:
        edit(ds)
        out = io.BytesIO()
        # the dataset keeps its own encoding whatever the (possibly forged) transfer syntax says
        pydicom.dcmwrite(out, ds, implicit_vr=implicit, little_endian=little,
                         enforce_file_format=False, force_encoding=True)
    finally:
        config.settings.writing_validation_mode = saved
    # values pydicom would refuse to even hold: forged in the bytes
    return out.getvalue().replace(b"77777777", b"many+-.e")


def _set(**tags: object) -> Callable[[object], None]:
    def edit(ds: object) -> None:
        for k, v in tags.items():
            setattr(ds, k, v)
    return edit


def _delete(*names: str) -> Callable[[object], None]:
    def edit(ds: object) -> None:
        for n in names:
            if n in ds:  # type: ignore[operator]
                delattr(ds, n)
    return edit


def _syntax(uid: str) -> Callable[[object], None]:
    def edit(ds: object) -> None:
        ds.file_meta.TransferSyntaxUID = uid  # type: ignore[attr-defined]
    return edit


ABSURD_DICOM_EDITS: dict[str, Callable[[object], None]] = {
    "rows_huge": _set(Rows=65535, Columns=65535),
    "rows_zero": _set(Rows=0),
    "columns_one": _set(Columns=1),
    "bits_64": _set(BitsAllocated=64),
    "bits_7": _set(BitsAllocated=7),
    "bits_0": _set(BitsAllocated=0),
    "bits_stored_above": _set(BitsStored=40),
    "samples_4": _set(SamplesPerPixel=4),
    "samples_3": _set(SamplesPerPixel=3),
    "frames_huge": _set(NumberOfFrames=1_000_000_000),
    "frames_zero": _set(NumberOfFrames=0),
    "frames_text": _set(NumberOfFrames="77777777"),  # rewritten to letters after saving (see _dicom_variant)
    "representation_5": _set(PixelRepresentation=5),
    "photometric_weird": _set(PhotometricInterpretation="PALETTE COLOR"),
    "photometric_ybr": _set(PhotometricInterpretation="YBR_FULL"),
    "window_zero": _set(WindowCenter=100, WindowWidth=0),
    "window_negative": _set(WindowCenter=-1e30, WindowWidth=-5),
    "window_multi": _set(WindowCenter=[1, 2, 3], WindowWidth=[0, 0]),
    "rescale_huge": _set(RescaleSlope=1e308, RescaleIntercept=-1e308),
    "rescale_zero": _set(RescaleSlope=0),
    "no_pixels": _delete("PixelData"),
    "no_rows": _delete("Rows"),
    "no_bits": _delete("BitsAllocated"),
    "no_photometric": _delete("PhotometricInterpretation"),
    "syntax_jpeg_lossless": _syntax("1.2.840.10008.1.2.4.70"),
    "syntax_jpeg2000": _syntax("1.2.840.10008.1.2.4.90"),
    "syntax_rle": _syntax("1.2.840.10008.1.2.5"),
    "syntax_deflate": _syntax("1.2.840.10008.1.2.1.99"),
    "syntax_unknown": _syntax("1.2.3.4.5.6.7"),
    "syntax_big_endian": _syntax("1.2.840.10008.1.2.2"),
}


def _mutations(name: str, data: bytes, rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` random mutations of one seed file: truncation, bit flips, header mangling, chunk duplication."""
    header = min(len(data), 1024 if data[128:132] == b"DICM" else 512)
    for i in range(n):
        kind = ("truncate", "bitflip", "header", "splice", "zero_run")[i % 5]
        buf = bytearray(data)
        if kind == "truncate":
            buf = buf[:int(rng.integers(1, len(buf)))]
        elif kind == "bitflip":
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 32))):
                buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "header":
            for pos in rng.integers(0, header, size=int(rng.integers(1, 12))):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == "splice":
            a, b = sorted(rng.integers(0, len(buf), size=2).tolist())
            at = int(rng.integers(0, len(buf)))
            buf = buf[:at] + buf[a:b] + buf[at:]
        else:
            a = int(rng.integers(0, len(buf)))
            buf[a:a + int(rng.integers(1, 4096))] = b"\xff" * len(buf[a:a + int(rng.integers(1, 4096))])
        yield f"mutated_{kind}:{name}:{i}", bytes(buf)


def hostile_corpus(seeds: dict[str, bytes], mutations_per_seed: int = 200, seed: int = 0
                   ) -> Iterator[tuple[str, bytes]]:
    """A deterministic corpus of hostile inputs derived from ``seeds`` (name -> file bytes: PNG, JPEG, DICOM).

    Yields (case name, file bytes). The case name's first field says the kind, so results can be counted by kind.
    """
    rng = np.random.default_rng(seed)
    yield "empty", b""
    for i in range(40):
        size = int(rng.integers(1, 8192))
        yield f"random:{i}", rng.bytes(size)
        yield f"random_png_magic:{i}", PNG_SIGNATURE + rng.bytes(size)
        yield f"random_jpeg_magic:{i}", b"\xff\xd8\xff\xe0" + rng.bytes(size)
        yield f"random_dicom_magic:{i}", b"\x00" * 128 + b"DICM" + rng.bytes(size)
    for w, h in ((20_000, 20_000), (100_000, 1), (1, 100_000), (16_385, 100), (7_000, 7_000), (65_535, 65_535)):
        yield f"bomb_png:{w}x{h}", png_bomb(min(w, 70_000), h if w * h <= 50_000_000 else min(h, 7_000))
    for name, data in seeds.items():
        if data[:8] == PNG_SIGNATURE:
            for w, h in ((0, 10), (10, 0), (2**31 - 1, 2**31 - 1), (100_000, 100_000), (40_000, 40_000),
                         (16_384, 16_384), (3, 3), (1, 2**20)):
                yield f"huge_dims_png:{name}:{w}x{h}", png_forged_size(data, w, h)
        elif data[:2] == b"\xff\xd8":
            for w, h in ((0, 10), (65_535, 65_535), (40_000, 40_000), (65_535, 1), (3, 3)):
                yield f"huge_dims_jpeg:{name}:{w}x{h}", jpeg_forged_size(data, w, h)
        elif data[128:132] == b"DICM":
            for tag, edit in ABSURD_DICOM_EDITS.items():
                yield f"absurd_dicom:{name}:{tag}", _dicom_variant(data, edit)
        yield from _mutations(name, data, rng, mutations_per_seed)


@dataclass
class FuzzReport:
    """Outcomes of a fuzz run: counts per outcome and per case kind, and the crashes (should be none)."""

    total: int = 0
    valid: int = 0
    refused: int = 0
    crashes: list[tuple[str, str]] = field(default_factory=list)
    refused_by_kind: dict[str, int] = field(default_factory=dict)
    total_by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, outcome: str, detail: str = "") -> None:
        kind = name.split(":", 1)[0]
        self.total += 1
        self.total_by_kind[kind] = self.total_by_kind.get(kind, 0) + 1
        if outcome == "valid":
            self.valid += 1
        elif outcome == "refused":
            self.refused += 1
            self.refused_by_kind[kind] = self.refused_by_kind.get(kind, 0) + 1
        else:
            self.crashes.append((name, detail))


def check_decoding(cases: Iterator[tuple[str, bytes]], workdir: str | Path,
                   suffixes: tuple[str, ...] = (".png", ".jpg", ".dcm")) -> FuzzReport:
    """Write each case to a file (cycling through misleading suffixes) and decode it with ``read_image``.

    A valid outcome must be a 2-D ``uint8`` array; a refusal must be an ``ImageDecodeError`` with a message; anything
    else is recorded as a crash.
    """
    report = FuzzReport()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(cases):
        path = workdir / f"case{suffixes[i % len(suffixes)]}"
        path.write_bytes(data)
        try:
            arr = read_image(path)
        except ImageDecodeError as exc:
            report.add(name, "refused" if str(exc).strip() else "crash", "empty error message")
            continue
        except Exception as exc:  # noqa: BLE001 - a crash is exactly what is being counted
            report.add(name, "crash", f"{exc.__class__.__name__}: {exc}")
            continue
        ok = isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype == np.uint8 and min(arr.shape) >= 8
        report.add(name, "valid" if ok else "crash", "" if ok else f"bad array {getattr(arr, 'shape', None)}")
    return report
