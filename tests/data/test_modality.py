import pandas as pd
import pytest

from covidscreen.data.modality import modality_from_dicom, normalise_modality, table_modality
from covidscreen.errors import DataError
from tests.ct.synthetic_ct import ct_dataset, phantom_hu, radiograph_dataset, write


def _table(paths, **cols):
    return pd.DataFrame({"path": [str(p) for p in paths], **cols})


def test_spellings_and_dicom_tags():
    assert [normalise_modality(v) for v in ("CXR", "x-ray", "DX", "cr", "CT")] == ["cxr", "cxr", "cxr", "cxr", "ct"]
    with pytest.raises(DataError, match="use cxr"):
        normalise_modality("MRI")
    assert modality_from_dicom("CR") == "cxr" and modality_from_dicom("CT") == "ct"
    assert modality_from_dicom(None) is None and modality_from_dicom("OT") is None
    with pytest.raises(DataError, match="Modality MR is not supported"):
        modality_from_dicom("MR")


def test_modality_from_column_dicom_view_or_default(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(b"")
    assert table_modality(_table([png], modality=["ct"]))[0] == "ct"
    assert table_modality(_table([png], view=["axial"]))[0] == "ct"
    assert table_modality(_table([png], view=["PA"])) == ("cxr", "nothing in the data (assumed: chest radiographs)")
    ct = write(ct_dataset(phantom_hu(16)), tmp_path / "ct.dcm")
    mod, source = table_modality(_table([ct, png]))
    assert mod == "ct" and "DICOM Modality" in source
    assert table_modality(_table([png]), override="ct") == ("ct", "the modality option")


def test_mixed_or_contradicting_data_is_refused(tmp_path):
    ct = write(ct_dataset(phantom_hu(16)), tmp_path / "ct.dcm")
    cr = write(radiograph_dataset(16), tmp_path / "cr.dcm")
    with pytest.raises(DataError, match="mixes modalities"):
        table_modality(_table([ct, cr]))
    with pytest.raises(DataError, match="mixes modalities"):
        table_modality(_table([ct, ct], modality=["ct", "cxr"]))
    with pytest.raises(DataError, match="contradicts itself"):
        table_modality(_table([cr], modality=["ct"]))
    with pytest.raises(DataError, match="modality cxr was asked for, but the data is ct"):
        table_modality(_table([ct]), override="cxr")
