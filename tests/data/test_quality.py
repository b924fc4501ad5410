"""Image-quality warnings from DICOM headers and image sizes."""

from __future__ import annotations

import numpy as np
import pydicom
from PIL import Image

from covidscreen.data.quality import ImageFacts, dicom_facts, quality_warnings, read_facts


def codes(warnings: list[str]) -> list[str]:
    return [w.split(":")[0] for w in warnings]


def test_frontal_chest_radiograph_has_no_warning():
    facts = ImageFacts(1024, 1024, "CR", "PA", "CHEST")
    assert quality_warnings(facts, np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)) == []
    assert quality_warnings(ImageFacts(2000, 1800, "DX", "AP", None)) == []


def test_each_warning():
    assert codes(quality_warnings(ImageFacts(512, 512, "CT", None, None))) == ["modality"]
    assert codes(quality_warnings(ImageFacts(512, 512, "CR", "LL", None))) == ["lateral"]
    assert codes(quality_warnings(ImageFacts(512, 512, "CR", None, "KNEE"))) == ["body-part"]
    assert codes(quality_warnings(ImageFacts(120, 900))) == ["small"]
    assert codes(quality_warnings(ImageFacts(512, 512), np.full((64, 64), 80, np.uint8))) == ["blank"]
    # a CT run warns about radiographs instead
    assert codes(quality_warnings(ImageFacts(512, 512, "CR"), run_modality="ct")) == ["modality"]
    assert quality_warnings(ImageFacts(512, 512, "CT"), run_modality="ct") == []


def test_facts_from_files(tmp_path, shared_data):
    dcm = sorted((shared_data / "dicom").glob("*.dcm"))[0]
    facts = read_facts(dcm)
    assert (facts.modality, facts.view_position, facts.height) == ("CR", "PA", 1024)
    assert facts.file_type == "dicom" and facts.photometric in ("MONOCHROME1", "MONOCHROME2")
    assert dicom_facts(pydicom.dcmread(str(dcm), stop_before_pixels=True)) == facts
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "a.png")
    assert read_facts(tmp_path / "a.png") == ImageFacts(height=30, width=50, file_type="png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert read_facts(tmp_path / "junk.png") == ImageFacts()  # the decoder, not this, reports unreadable files
