"""The decoding layer against hostile files: a generated corpus of >= 1,000 inputs and a hypothesis harness."""

from __future__ import annotations

import io
import resource
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidscreen.data import decode
from covidscreen.data.decode import read_image
from covidscreen.errors import ImageDecodeError
from covidscreen.security.fuzz import (
    ABSURD_DICOM_EDITS,
    PNG_SIGNATURE,
    check_decoding,
    hostile_corpus,
    jpeg_forged_size,
    png_bomb,
    png_forged_size,
)


@pytest.fixture(scope="module")
def seeds(shared_data) -> dict[str, bytes]:
    """Real files of each format: the shared samples (made small, so that 1,000 decodes take seconds) and DICOMs."""
    out = {}
    for name in ("16747_3_1.jpg", "nih_00000001_000.png"):
        im = Image.open(shared_data / "samples" / name).convert("L")
        im.thumbnail((160, 160))
        buf = io.BytesIO()
        im.save(buf, "PNG" if name.endswith(".png") else "JPEG", quality=90)
        out[name] = buf.getvalue()
    rgb = Image.open(shared_data / "samples" / "16747_3_1.jpg").convert("RGB")
    rgb.thumbnail((96, 96))
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    out["rgb.png"] = buf.getvalue()
    wide = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    out["grey16.png"] = buf.getvalue()
    for path in sorted((shared_data / "dicom").glob("*.dcm")):
        out[path.name] = path.read_bytes()
    return out


def test_hostile_corpus_never_crashes_the_decoders(seeds, tmp_path):
    cases = list(hostile_corpus(seeds, mutations_per_seed=130, seed=1))
    assert len(cases) >= 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and Pillow warn about what they read; errors are what count
        report = check_decoding(iter(cases), tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"\nfuzz: {report.total} inputs, {report.valid} valid images, {report.refused} clear errors, "
          f"{len(report.crashes)} crashes; peak memory grew {grown_mb:.0f} MB; refused by kind "
          f"{report.refused_by_kind}")
    assert report.crashes == []
    assert report.total == len(cases) and report.valid + report.refused == report.total
    # every bomb, forged huge size and empty or random file is refused, not decoded
    for kind in ("bomb_png", "empty", "random", "random_png_magic", "random_jpeg_magic", "random_dicom_magic"):
        assert report.refused_by_kind.get(kind) == report.total_by_kind[kind], kind
    assert report.refused_by_kind["huge_dims_png"] >= report.total_by_kind["huge_dims_png"] - 1  # 3x3 may decode
    assert report.total_by_kind["absurd_dicom"] == 2 * len(ABSURD_DICOM_EDITS)
    assert report.valid >= 20  # the corpus still holds decodable images: the harness does not refuse everything
    assert grown_mb < 1024  # memory bounded: no decode of a forged size allocated its declared pixels


def test_png_bomb_is_refused_before_pixels_are_decoded(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20_000, 20_000))
    assert path.stat().st_size < 2_000_000  # tiny on disk, 400 MB decoded

    def no_load(self):  # pragma: no cover - reaching it is the failure
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_load)
    with pytest.raises(ImageDecodeError, match="too large"):
        read_image(path)


def test_forged_dimensions_are_refused_with_a_clear_message(seeds, tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(png_forged_size(seeds["nih_00000001_000.png"], 60_000, 60_000))
    with pytest.raises(ImageDecodeError, match="too large"):
        read_image(png)
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(jpeg_forged_size(seeds["16747_3_1.jpg"], 65_535, 65_535))
    with pytest.raises(ImageDecodeError, match="too large"):
        read_image(jpg)


def test_dicom_declaring_more_pixels_than_it_holds_is_refused(shared_data, tmp_path):
    import pydicom

    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cxr_monochrome2.dcm")  # JPEG-compressed pixel data
    ds.Rows, ds.Columns = 4000, 4000
    ds.save_as(tmp_path / "forged_jpeg.dcm")
    with pytest.raises(ImageDecodeError, match="declares 4000x4000 pixels but its JPEG stream holds 1024x1024"):
        read_image(tmp_path / "forged_jpeg.dcm")
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cxr_monochrome2.dcm")
    ds.decompress()
    ds.Rows, ds.Columns = 4000, 4000  # 16 MB declared, 1 MB held
    ds.save_as(tmp_path / "forged.dcm")
    with pytest.raises(ImageDecodeError, match="holds .* bytes of pixel data; truncated or forged"):
        read_image(tmp_path / "forged.dcm")
    ds.Rows, ds.Columns = 30_000, 30_000
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(ImageDecodeError, match="too large"):
        read_image(tmp_path / "huge.dcm")
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cxr_monochrome2.dcm")
    ds.BitsAllocated = 64
    ds.save_as(tmp_path / "bits.dcm")
    with pytest.raises(ImageDecodeError, match="BitsAllocated 64"):
        read_image(tmp_path / "bits.dcm")


def test_other_formats_are_refused_by_content_whatever_the_suffix(tmp_path):
    arr = np.full((32, 32), 100, dtype=np.uint8)
    for fmt in ("TIFF", "BMP", "GIF", "WEBP"):
        path = tmp_path / f"x_{fmt}.png"  # a misleading suffix: the content decides
        Image.fromarray(arr).save(path, fmt)
        with pytest.raises(ImageDecodeError, match="not a readable image"):
            read_image(path)
    Image.fromarray(arr).save(tmp_path / "real.dcm", "PNG")  # a PNG named .dcm is still a PNG
    assert read_image(tmp_path / "real.dcm").shape == (32, 32)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    with pytest.raises(ImageDecodeError, match="larger than the limit"):
        read_image(path)


def _prefixes(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    return st.sampled_from([PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"\x00" * 128 + b"DICM", b""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decoders_on_generated_bytes(data, seeds, tmp_path):
    """Hypothesis harness: magic prefixes + arbitrary bytes, and real files with arbitrary edits (bounded: 300)."""
    if data.draw(st.booleans()):
        blob = data.draw(_prefixes(seeds)) + data.draw(st.binary(max_size=2048))
    else:
        base = bytearray(data.draw(st.sampled_from(sorted(seeds.values(), key=len))))
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(base) - 1))
            base[pos:pos + 4] = data.draw(st.binary(min_size=1, max_size=4))
        blob = bytes(base[:data.draw(st.integers(1, len(base)))])
    path = tmp_path / "h.img"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = read_image(path)
        except ImageDecodeError as exc:
            assert str(exc)
            return
    assert arr.ndim == 2 and arr.dtype == np.uint8
