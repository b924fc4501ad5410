import numpy as np
import pydicom
import pytest
from PIL import Image

from covidscreen.data.decode import is_dicom, load_resized, read_image, resize_square
from covidscreen.errors import ImageDecodeError


def test_8bit_grey_png_roundtrip(tmp_path):
    arr = (np.arange(64 * 32) % 256).astype(np.uint8).reshape(64, 32)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (64, 32)
    np.testing.assert_array_equal(out, arr)


def test_16bit_png_is_scaled_from_its_own_range(tmp_path):
    arr = np.zeros((40, 40), dtype=np.uint16)
    arr[:, 20:] = 4095  # 12-bit data stored in 16 bits: max must map to 255, not to 4095/65535*255
    arr[0, 0] = 1000
    Image.fromarray(arr).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode.startswith("I")
    out = read_image(tmp_path / "b.png")
    assert out.dtype == np.uint8
    assert out[5, 30] == 255 and out[5, 5] == 0
    assert out[0, 0] == round(1000 * 255 / 4095)


def test_rgb_png_and_jpeg_become_grey(tmp_path):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    for f in ("c.png", "c.jpg"):
        out = read_image(tmp_path / f)
        assert out.ndim == 2
        assert abs(int(out.mean()) - round(0.299 * 200)) <= 2


def test_shared_dicoms_decode_with_bright_bone(shared_data):
    d = shared_data / "dicom"
    mono1, mono2 = read_image(d / "fake_monochrome1.dcm"), read_image(d / "siim_cxr_monochrome2.dcm")
    for arr in (mono1, mono2):
        assert arr.dtype == np.uint8 and arr.shape == (1024, 1024)
        assert arr.max() > 200 and arr.min() < 50
    # MONOCHROME1 stores bright as low values: the decoded image must be the inverse of the raw pixels
    ds = pydicom.dcmread(d / "fake_monochrome1.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(float)
    corr = np.corrcoef(raw.ravel()[::97], mono1.astype(float).ravel()[::97])[0, 1]
    assert corr < -0.9
    assert is_dicom(d / "fake_monochrome1.dcm") and not is_dicom(shared_data / "samples" / "16747_3_1.jpg")


def test_shared_samples_decode(shared_data):
    for f in (shared_data / "samples").iterdir():
        arr = load_resized(f, 224)
        assert arr.shape == (224, 224) and arr.dtype == np.uint8 and arr.std() > 10


@pytest.mark.parametrize("content,expected", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "not a readable image"),
])
def test_non_images_are_rejected_with_a_clear_message(tmp_path, content, expected):
    f = tmp_path / "x.png"
    f.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=expected) as exc:
        read_image(f)
    assert "Accepted" in str(exc.value)


def test_truncated_jpeg_and_missing_file(tmp_path, shared_data):
    data = (shared_data / "samples" / "16747_3_1.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageDecodeError):
        read_image(tmp_path / "t.jpg")
    with pytest.raises(ImageDecodeError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_fake_dicom_preamble_is_rejected(tmp_path):
    f = tmp_path / "fake.dcm"
    f.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    with pytest.raises(ImageDecodeError):
        read_image(f)


def test_resize_square_golden():
    arr = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out = resize_square(np.kron(arr, np.ones((8, 8), dtype=np.uint8)), 4)
    assert out.shape == (4, 4)
    assert out[0, 0] < 30 and out[0, 3] > 225 and out[3, 0] > 225 and out[3, 3] < 30
