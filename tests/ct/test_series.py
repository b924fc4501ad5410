import zipfile

import numpy as np
import pytest

from covidscreen.ct.series import SeriesError, read_series
from tests.ct.synthetic_ct import ct_dataset, phantom_hu, write, write_series

REVERSED = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # column direction flipped: the normal points down (feet first)


def test_shuffled_files_are_ordered_by_position_along_the_normal(tmp_path):
    folder, uid, in_order = write_series(tmp_path / "s", n=7, shuffle_seed=3)
    s = read_series(folder)
    assert s.series_instance_uid == uid and len(s) == 7
    assert [sl.source for sl in s.slices] == [str(p) for p in in_order]
    assert [sl.instance_number for sl in s.slices] == list(range(1, 8))
    assert np.all(np.diff([sl.position for sl in s.slices]) > 0)
    assert s.spacing == pytest.approx(2.5) and s.gaps == []
    # the file names alone would give another order
    assert sorted(p.name for p in in_order) != [p.name for p in in_order]


def test_reversed_orientation_orders_along_its_own_normal(tmp_path):
    folder, _, in_order = write_series(tmp_path / "s", n=6, orientation=REVERSED, shuffle_seed=1)
    s = read_series(folder)
    np.testing.assert_allclose(s.normal, (0, 0, -1))
    # slice k sits at z = -2.5 k mm in patient coordinates, at +2.5 k mm along the normal: order by the normal
    assert [sl.instance_number for sl in s.slices] == list(range(1, 7))
    zs = [float(sl.dataset.ImagePositionPatient[2]) for sl in s.slices]
    assert zs == sorted(zs, reverse=True)


def test_missing_slice_is_reported_as_a_gap_not_refused(tmp_path):
    folder, _, _ = write_series(tmp_path / "s", n=8, missing=(3, 4))
    s = read_series(folder)
    assert len(s) == 6
    (gap,) = s.gaps
    assert gap["after_slice"] == 2 and gap["before_slice"] == 3
    assert gap["step_mm"] == pytest.approx(7.5) and gap["missing_slices"] == 2
    assert s.summary()["gaps"] == [gap]


def test_mixed_series_are_refused_naming_both(tmp_path):
    _, a, _ = write_series(tmp_path / "mix", n=4, series_uid="1.2.3.100")
    write_series(tmp_path / "mix" / "other", n=3, series_uid="1.2.3.200")
    with pytest.raises(SeriesError, match=r"2 series are mixed.*1\.2\.3\.100 \(4 slices\).*1\.2\.3\.200 \(3 slices\)"):
        read_series(tmp_path / "mix")


def test_inconsistent_orientation_spacing_and_duplicates_are_refused(tmp_path):
    folder, uid, _ = write_series(tmp_path / "o", n=3)
    write(ct_dataset(phantom_hu(), z=10, series_uid=uid, orientation=(1, 0, 0, 0, 0.8, 0.6)), folder / "tilted.dcm")
    with pytest.raises(SeriesError, match="different orientations"):
        read_series(folder)
    folder, uid, _ = write_series(tmp_path / "p", n=3)
    write(ct_dataset(phantom_hu(), z=10, series_uid=uid, pixel_spacing=(0.9, 0.9)), folder / "other_spacing.dcm")
    with pytest.raises(SeriesError, match="different PixelSpacing"):
        read_series(folder)
    folder, uid, _ = write_series(tmp_path / "d", n=3)
    write(ct_dataset(phantom_hu(), z=2.5, series_uid=uid), folder / "duplicate.dcm")
    with pytest.raises(SeriesError, match="same position"):
        read_series(folder)


def test_zip_series_and_non_dicom_files(tmp_path):
    folder, uid, in_order = write_series(tmp_path / "s", n=5)
    (folder / "README.txt").write_text("not a slice")
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"scan/{f.name}")
    s = read_series(zpath)
    assert s.series_instance_uid == uid and len(s) == 5
    assert [sl.source.split(":")[-1] for sl in s.slices] == [f"scan/{p.name}" for p in in_order]
    assert len(s.skipped) == 1 and s.skipped[0].endswith("README.txt")
    assert read_series(folder).skipped == [str(folder / "README.txt")]


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "no DICOM files"),
    (lambda p: (p.write_bytes(b"PK\x03\x04 broken zip"), p)[1], "a series is a folder of DICOM slices"),
])
def test_bad_inputs_get_clear_errors(tmp_path, make, message):
    with pytest.raises(SeriesError, match=message):
        read_series(make(tmp_path / "x"))


def test_slice_without_position_cannot_be_ordered(tmp_path):
    folder, uid, _ = write_series(tmp_path / "s", n=3)
    ds = ct_dataset(phantom_hu(), z=20, series_uid=uid)
    del ds.ImagePositionPatient
    write(ds, folder / "nopos.dcm")
    with pytest.raises(SeriesError, match="ImagePositionPatient is missing"):
        read_series(folder)


def test_images_are_lung_windowed(tmp_path):
    folder, _, _ = write_series(tmp_path / "s", n=2)
    img = read_series(folder).images()[0]
    # air -1000 HU -> 59.5, lung -800 -> 93.5, soft tissue 40 -> 236.3 in the lung window (level -600, width 1500)
    assert set(np.unique(img)) == {60, 94, 236}
    assert img[0, 0] == 60 and img[32, 19] == 94 and img[32, 32] == 236
