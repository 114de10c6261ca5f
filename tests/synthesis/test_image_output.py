"""Derived outputs like their input: 8/16-bit PNG and derived DICOM (Secondary Capture).

The DICOM sources are built here with pydicom (a small CR, 12 bits stored, patient/study set);
what is written is read back with pydicom and Pillow directly and through load_radiograph.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from support.dicom_cr import BITS, CR_IMAGE_STORAGE, IDENTIFIERS, ROWS, COLS, TOP, write_cr as _write_cr  # noqa: E402
from xraysyn.data.radiograph import Radiograph, load_radiograph  # noqa: E402
from xraysyn.synthesis.image_output import (  # noqa: E402
    output_bits,
    save_png_like_input,
    write_derived_dicom,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _image(rows: int = ROWS, cols: int = COLS, seed: int = 0) -> np.ndarray:
    """Random values in [0, 1] that reach both ends (load_radiograph min-max normalises DICOM)."""
    image = np.random.default_rng(seed).uniform(0.0, 1.0, (rows, cols))
    image[0, 0], image[-1, -1] = 0.0, 1.0
    return image


# ----------------------------------------------------------------------------------- DICOM source
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_derived_dicom_keeps_patient_study_spacing_and_reads_back(tmp_path, photometric):
    source_path = _write_cr(tmp_path / "src.dcm", _image(seed=1), photometric=photometric)
    source = load_radiograph(source_path)
    derived = _image(seed=2)
    out = write_derived_dicom(tmp_path / "out" / "bone.dcm", derived, source, source_path=source_path,
                              description="XraySyn bone image", derivation="bone thickness rendered by XraySyn",
                              image_type=["BONE"])
    src = pydicom.dcmread(source_path)
    ds = pydicom.dcmread(out)
    for keyword, value in IDENTIFIERS.items():
        assert str(ds[keyword].value) == value, keyword
    assert ds.SpecificCharacterSet == "ISO_IR 192" and "Müller".encode("utf-8") in out.read_bytes()
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SOPClassUID == SECONDARY_CAPTURE == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.preamble == b"\0" * 128
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "BONE"]
    assert ds.SeriesDescription == "XraySyn bone image" and ds.ConversionType == "WSD" and ds.Modality == "CR"
    assert ds.DerivationDescription == "bone thickness rendered by XraySyn"
    reference = ds.SourceImageSequence[0]
    assert reference.ReferencedSOPClassUID == CR_IMAGE_STORAGE
    assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert [float(v) for v in ds.PixelSpacing] == [0.143, 0.15]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.16, 0.17]
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, BITS, BITS - 1, 0)
    assert (ds.Rows, ds.Columns) == (ROWS, COLS)
    # Stored samples: round(v * 4095), complemented for MONOCHROME1 (minimum displayed white).
    expected = np.rint(derived * TOP).astype(np.int64)
    if photometric == "MONOCHROME1":
        expected = TOP - expected
    np.testing.assert_array_equal(ds.pixel_array.astype(np.int64), expected)
    back = load_radiograph(out)
    assert back.meta["photometric"] == photometric and back.pixel_spacing_mm == pytest.approx((0.143, 0.15))
    np.testing.assert_allclose(back.image, derived, atol=0.5 / TOP + 1e-6)


def test_window_spans_the_stored_range(tmp_path):
    """PS3.3 C.11.2.1.2.1 linear window evaluated here: stored 0 -> bottom, 4095 -> top, linear between."""
    source_path = _write_cr(tmp_path / "src.dcm", _image())
    out = write_derived_dicom(tmp_path / "o.dcm", _image(seed=3), load_radiograph(source_path),
                              description="d", derivation="d")
    ds = pydicom.dcmread(out)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = np.arange(TOP + 1, dtype=np.float64)
    assert c - 0.5 - (w - 1) / 2 <= 0.0 and c - 0.5 + (w - 1) / 2 >= TOP  # nothing clipped
    fraction = (x - (c - 0.5)) / (w - 1) + 0.5
    np.testing.assert_allclose(fraction, x / TOP, atol=1e-12)


def test_flags_copied_and_source_path_defaults_to_meta(tmp_path):
    source_path = _write_cr(tmp_path / "src.dcm", _image(), extra={"LossyImageCompression": "01",
                                                                     "BurnedInAnnotation": "YES",
                                                                     "Laterality": "L"})
    source = load_radiograph(source_path)
    out = write_derived_dicom(tmp_path / "o.dcm", np.full((ROWS, COLS), 2.0), source, description="d",
                              derivation="d")  # values above 1 are clipped
    ds = pydicom.dcmread(out)
    assert ds.LossyImageCompression == "01" and ds.BurnedInAnnotation == "YES" and ds.Laterality == "L"
    assert ds.PatientID == IDENTIFIERS["PatientID"]
    assert np.all(ds.pixel_array == TOP)


# ----------------------------------------------------------------------------------- PNG source
def test_png_source_gives_a_new_anonymous_study(tmp_path):
    png = save_png_like_input(_image(seed=4), tmp_path / "in.png", bits=8)
    source = load_radiograph(png)
    bone = write_derived_dicom(tmp_path / "bone.dcm", _image(seed=5), source, description="bone", derivation="d")
    soft = write_derived_dicom(tmp_path / "soft.dcm", _image(seed=6), source, description="soft", derivation="d")
    other_source = load_radiograph(save_png_like_input(_image(seed=7), tmp_path / "other.png", bits=8))
    other = write_derived_dicom(tmp_path / "x.dcm", _image(seed=8), other_source, description="x", derivation="d")
    a, b, c = (pydicom.dcmread(p) for p in (bone, soft, other))
    assert a.PhotometricInterpretation == "MONOCHROME2" and a.SOPClassUID == SECONDARY_CAPTURE
    assert a.PatientID == "" and str(a.PatientName) == "" and "SourceImageSequence" not in a
    assert a.StudyInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.BitsStored == 16 and "PixelSpacing" not in a
    np.testing.assert_allclose(load_radiograph(bone).image, _image(seed=5), atol=0.5 / 65535 + 1e-6)


# ----------------------------------------------------------------------------------- PNG output
def test_16_bit_png_round_trip_is_exact(tmp_path):
    image = _image(13, 11, seed=9)
    path = save_png_like_input(image, tmp_path / "a" / "out.png", bits=16)
    with open(path, "rb") as fh:
        header = fh.read(26)
    assert header[24:26] == bytes([16, 0])  # IHDR: bit depth 16, colour type 0 (grey)
    with Image.open(path) as img:
        samples = np.array(img).astype(np.int64)
    np.testing.assert_array_equal(samples, np.rint(image * 65535).astype(np.int64))
    back = load_radiograph(path)
    assert back.meta["bits"] == 16 and output_bits(back) == 16
    np.testing.assert_allclose(back.image, image, atol=0.5 / 65535 + 1e-7)


def test_8_bit_png_round_trip_and_clipping(tmp_path):
    image = _image(5, 6, seed=10)
    image[1, 1], image[2, 2] = -0.3, 1.7
    path = save_png_like_input(image, tmp_path / "out.PNG", bits=8)
    with Image.open(path) as img:
        assert img.mode == "L"
        samples = np.array(img)
    assert samples[1, 1] == 0 and samples[2, 2] == 255
    back = load_radiograph(path)
    np.testing.assert_allclose(back.image, np.clip(image, 0, 1), atol=0.5 / 255 + 1e-7)
    assert output_bits(back) == 8


@pytest.mark.parametrize("meta, bits", [
    ({"format": "dicom", "bits_stored": 12}, 16),
    ({"format": "dicom", "bits_stored": 16}, 16),
    ({"format": "dicom", "bits_stored": 8}, 8),
    ({"format": "png", "bits": 16}, 16),
    ({"format": "png", "bits": 8}, 8),
    ({"format": "jpg", "bits": 8}, 8),
    ({"format": "tif", "bits": 32}, 16),
    ({}, 8),
])
def test_output_bits(meta, bits):
    assert output_bits(Radiograph(image=np.zeros((2, 2), np.float32), meta=meta)) == bits


def test_output_bits_of_a_loaded_12_bit_dicom(tmp_path):
    assert output_bits(load_radiograph(_write_cr(tmp_path / "s.dcm", _image()))) == 16


# ----------------------------------------------------------------------------------- bad input
def test_bad_png_arguments(tmp_path):
    target = tmp_path / "x.png"
    cases = [
        (dict(image=np.zeros((2, 2, 2)), bits=8), "2-D"),
        (dict(image=np.zeros(4), bits=8), "2-D"),
        (dict(image=np.full((3, 3), np.nan), bits=8), "NaN"),
        (dict(image=np.zeros((3, 3)), bits=12), "bits"),
        (dict(image=np.zeros((3, 3)), bits=True), "bits"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            save_png_like_input(kwargs["image"], target, bits=kwargs["bits"])
    with pytest.raises(ValueError, match=r"\.png"):
        save_png_like_input(np.zeros((3, 3)), tmp_path / "x.jpg", bits=8)
    assert list(tmp_path.iterdir()) == []


def test_bad_dicom_arguments(tmp_path):
    source_path = _write_cr(tmp_path / "src.dcm", _image())
    source = load_radiograph(source_path)
    target = tmp_path / "out" / "o.dcm"
    good = dict(description="d", derivation="d")
    cases = [
        (np.zeros((ROWS, COLS + 1)), good, "shape"),
        (np.zeros((ROWS, COLS, 1)), good, "2-D"),
        (np.where(np.eye(ROWS, COLS) > 0, np.inf, 0.0), good, "infinite"),
        (np.zeros((ROWS, COLS)), dict(description="", derivation="d"), "description"),
        (np.zeros((ROWS, COLS)), dict(description="a\\b", derivation="d"), "backslash"),
        (np.zeros((ROWS, COLS)), dict(description="x" * 65, derivation="d"), "64"),
        (np.zeros((ROWS, COLS)), dict(description="d", derivation="  "), "derivation"),
        (np.zeros((ROWS, COLS)), dict(good, image_type=["bone"]), "Code String"),
    ]
    for image, kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            write_derived_dicom(target, image, source, source_path=source_path, **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        write_derived_dicom(target, np.zeros((ROWS, COLS)), source, source_path=tmp_path / "gone.dcm", **good)
    with pytest.raises(ValueError, match="Radiograph"):
        write_derived_dicom(target, np.zeros((ROWS, COLS)), np.zeros((ROWS, COLS)), **good)
    assert not target.parent.exists()


def test_dicom_not_reaching_0_and_1_reads_back_stretched(tmp_path):
    """Documented limit: load_radiograph min-max normalises DICOM, so a dim image comes back stretched."""
    source_path = _write_cr(tmp_path / "src.dcm", _image())
    dim = 0.2 + 0.5 * _image(seed=11)  # spans [0.2, 0.7]
    out = write_derived_dicom(tmp_path / "o.dcm", dim, load_radiograph(source_path), description="d", derivation="d")
    stored = pydicom.dcmread(out).pixel_array.astype(np.float64)
    np.testing.assert_allclose(stored / TOP, dim, atol=0.5 / TOP)  # the file holds the image as written
    stretched = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(load_radiograph(out).image, stretched, atol=1e-6)
    assert np.ptp(stretched) == 1.0 and np.ptp(dim) < 0.6
