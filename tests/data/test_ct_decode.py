"""CT slices: Hounsfield units from RescaleSlope/Intercept and the lung window, against hand-computed values."""

import numpy as np
import pytest

from covidscreen.data.decode import (
    LUNG_WINDOW,
    apply_window,
    check_window,
    ct_slice_hu,
    ct_slice_to_uint8,
    dicom_modality,
    hounsfield_units,
    read_image,
)
from covidscreen.errors import ImageDecodeError
from tests.ct.synthetic_ct import ct_dataset, phantom_hu, radiograph_dataset, write


def test_hounsfield_units_by_hand():
    stored = np.array([[0, 24], [1064, 137]], dtype=np.uint16)
    np.testing.assert_array_equal(hounsfield_units(stored, 1, -1024), [[-1024, -1000], [40, -887]])
    np.testing.assert_array_equal(hounsfield_units(stored, 2, -1024), [[-1024, -976], [1104, -750]])
    np.testing.assert_array_equal(hounsfield_units(stored.astype(np.int16) - 1024, 1, 0), [[-1024, -1000], [40, -887]])


def test_lung_window_by_hand():
    # level -600, width 1500: -1350 HU -> 0, +150 HU -> 255, linear in between (255 / 1500 = 0.17 per HU)
    hu = np.array([-2000, -1350, -1250, -850, -750, -350, 40, 150, 3000], dtype=np.float32)
    expected = [0, 0, 17, 85, 102, 170, 236, 255, 255]  # e.g. 40 HU: (40 + 1350) * 0.17 = 236.3
    np.testing.assert_array_equal(apply_window(hu, *LUNG_WINDOW), expected)
    # the mediastinal window (level 40, width 400): -160 HU -> 0, 240 HU -> 255
    np.testing.assert_array_equal(apply_window(np.array([-160, -60, 140, 240], np.float32), 40, 400),
                                  [0, 64, 191, 255])  # 100 * 0.6375 = 63.75, 300 * 0.6375 = 191.25
    with pytest.raises(ValueError, match="positive"):
        apply_window(hu, -600, 0)
    with pytest.raises(ImageDecodeError, match="level, width"):
        check_window(("a", 3))


def test_ct_dicom_uses_the_lung_window_not_the_stored_one(tmp_path):
    hu = phantom_hu(64)  # air -1000, lung -800, soft tissue 40
    path = write(ct_dataset(hu, slope=1, intercept=-1024, window=(40, 400)), tmp_path / "ct.dcm")
    img = read_image(path)
    assert img[0, 0] == 60 and img[32, 19] == 94 and img[32, 32] == 236  # 59.5, 93.5, 236.3 by hand
    assert dicom_modality(path) == "CT"
    # a configurable window: the mediastinal one turns lung and air black and soft tissue mid-grey
    med = read_image(path, ct_window=(40, 400))
    assert med[0, 0] == 0 and med[32, 19] == 0 and med[32, 32] == 128
    # slope 2: the same tissues in other stored values give the same image
    path2 = write(ct_dataset(hu, slope=2, intercept=-1024), tmp_path / "ct2.dcm")
    np.testing.assert_array_equal(read_image(path2), img)
    import pydicom

    np.testing.assert_allclose(ct_slice_hu(pydicom.dcmread(path2)), hu)
    np.testing.assert_array_equal(ct_slice_to_uint8(pydicom.dcmread(path)), img)


def test_radiograph_dicom_keeps_its_own_path(tmp_path):
    path = write(radiograph_dataset(modality="DX"), tmp_path / "dx.dcm")
    img = read_image(path)
    assert dicom_modality(path) == "DX" and img.min() == 0 and img.max() == 255  # min..max scaling, no HU window
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(img).save(png)
    assert dicom_modality(png) is None
