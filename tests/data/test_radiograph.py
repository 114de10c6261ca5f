"""Radiograph loading (DICOM written here with pydicom, PNG/JPEG/TIFF with Pillow) and crop/resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MPEG2MPML,
    RLELossless,
    generate_uid,
)

from xraysyn.data.radiograph import (  # noqa: E402
    CropTransform,
    RadiographReadError,
    crop_and_resize,
    load_radiograph,
)

BITS = 12
MAX_STORED = 2**BITS - 1


def _attenuation_map(rows: int = 24, cols: int = 20) -> np.ndarray:
    """A toy radiograph in [0, 1]: smooth background, dark 'lungs', one bright 'bone' square."""
    r, c = np.mgrid[0:rows, 0:cols]
    image = 0.4 + 0.1 * np.sin(r / 5.0) * np.cos(c / 4.0)
    image[4:18, 3:8] = 0.1
    image[4:18, 12:17] = 0.1
    image[10:14, 9:11] = 0.95
    return image


def _write_dicom(path, stored: np.ndarray, *, photometric="MONOCHROME2", bits_stored=BITS, window=None,
                 slope=None, intercept=None, spacing=None, spacing_tag="ImagerPixelSpacing", transfer_syntax=None,
                 modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1"):  # CR Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if stored.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if spacing is not None:
        setattr(ds, spacing_tag, list(spacing))
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_and_monochrome2_give_the_same_brightness(tmp_path):
    att = _attenuation_map()
    stored = np.round(att * MAX_STORED).astype(np.uint16)
    m2 = load_radiograph(_write_dicom(tmp_path / "m2.dcm", stored))
    m1 = load_radiograph(_write_dicom(tmp_path / "m1.dcm", MAX_STORED - stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1.image, m2.image, atol=1e-6)
    # Bright = more attenuation: the bone square is the brightest, the lungs the darkest.
    assert m2.image[11, 9] == pytest.approx(1.0) and m2.image[5, 4] == pytest.approx(0.0)
    expected = (att - att.min()) / (att.max() - att.min())
    np.testing.assert_allclose(m2.image, expected, atol=1.0 / MAX_STORED)
    assert m2.image.dtype == np.float32 and m2.meta["photometric"] == "MONOCHROME2"


def test_8_bit_dicom_and_pixel_spacing(tmp_path):
    att = _attenuation_map()
    stored = np.round(att * 255).astype(np.uint8)
    rg = load_radiograph(_write_dicom(tmp_path / "x.dcm", stored, bits_stored=8, spacing=(0.2, 0.25)))
    expected = (stored - stored.min()) / float(stored.max() - stored.min())
    np.testing.assert_allclose(rg.image, expected, atol=1e-6)
    assert rg.pixel_spacing_mm == pytest.approx((0.2, 0.25))
    assert rg.meta["spacing_tag"] == "ImagerPixelSpacing"
    no_spacing = load_radiograph(_write_dicom(tmp_path / "y.dcm", stored, bits_stored=8))
    assert no_spacing.pixel_spacing_mm is None


def test_rescale_then_window_follow_the_dicom_linear_window(tmp_path):
    stored = np.tile(np.arange(0, 4000, 25, dtype=np.uint16), (4, 1))  # a ramp, 4 x 160
    slope, intercept, center, width = 2.0, -1000.0, 2500.0, 3001.0
    rg = load_radiograph(_write_dicom(tmp_path / "w.dcm", stored, slope=slope, intercept=intercept,
                                      window=(center, width)))
    # PS3.3 C.11.2.1.2.1 linear window on the modality values, then normalised to [0, 1].
    x = slope * stored.astype(np.float64) + intercept
    expected = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(rg.image, expected, atol=1e-6)
    assert rg.meta["voi"] == "window"


def test_rle_and_jpeg2000_compressed_round_trip(tmp_path):
    att = _attenuation_map(64, 64)  # JPEG 2000's default 6 resolution levels need >= 32 pixels
    stored = np.round(att * MAX_STORED).astype(np.uint16)
    plain = load_radiograph(_write_dicom(tmp_path / "plain.dcm", stored)).image
    rle = load_radiograph(_write_dicom(tmp_path / "rle.dcm", stored, transfer_syntax=RLELossless))
    np.testing.assert_array_equal(rle.image, plain)
    pytest.importorskip("openjpeg")
    j2k = load_radiograph(_write_dicom(tmp_path / "j2k.dcm", stored, transfer_syntax=JPEG2000Lossless))
    np.testing.assert_array_equal(j2k.image, plain)


def test_missing_codec_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("openjpeg")
    from pydicom.pixels import get_decoder

    stored = np.round(_attenuation_map(64, 64) * MAX_STORED).astype(np.uint16)
    path = _write_dicom(tmp_path / "j2k.dcm", stored, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as if no plugin were installed
    with pytest.raises(RadiographReadError, match=r"xraysyn\[dicom-codecs\]"):
        load_radiograph(path)


def test_syntax_without_any_decoder(tmp_path):
    path = _write_dicom(tmp_path / "v.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    ds.save_as(path)
    with pytest.raises(RadiographReadError, match="no decoder"):
        load_radiograph(path)


def test_dicom_errors(tmp_path):
    stored = np.round(_attenuation_map() * MAX_STORED).astype(np.uint16)
    good = _write_dicom(tmp_path / "good.dcm", stored)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 200])
    with pytest.raises(RadiographReadError, match="truncated"):
        load_radiograph(truncated)
    (tmp_path / "text.dcm").write_text("hello, not a DICOM file")
    with pytest.raises(RadiographReadError, match="not a DICOM"):
        load_radiograph(tmp_path / "text.dcm")
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(RadiographReadError, match="no pixel data"):
        load_radiograph(tmp_path / "nopixels.dcm")
    with pytest.raises(RadiographReadError, match="constant"):
        load_radiograph(_write_dicom(tmp_path / "flat.dcm", np.full((5, 5), 7, np.uint16)))
    with pytest.raises(FileNotFoundError):
        load_radiograph(tmp_path / "missing.dcm")


def test_png_16_bit_round_trip_and_8_bit(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(12, 9), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "x16.png")
    rg = load_radiograph(tmp_path / "x16.png")
    np.testing.assert_allclose(rg.image, values / 65535.0, atol=1e-7)
    assert rg.meta["bits"] == 16 and rg.pixel_spacing_mm is None
    values8 = rng.integers(0, 256, size=(7, 5), dtype=np.uint8)
    Image.fromarray(values8).save(tmp_path / "x8.png")
    np.testing.assert_allclose(load_radiograph(tmp_path / "x8.png").image, values8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(load_radiograph(tmp_path / "x8.png", invert=True).image, 1 - values8 / 255.0,
                               atol=1e-7)


def test_grayscale_jpeg_and_rgb_with_equal_channels(tmp_path):
    gray = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    rg = load_radiograph(tmp_path / "g.jpg")
    assert rg.image.shape == (16, 32)
    np.testing.assert_allclose(rg.image, gray / 255.0, atol=0.03)  # lossy JPEG
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_radiograph(tmp_path / "rgb.png").image, gray / 255.0, atol=1e-7)
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(load_radiograph(tmp_path / "la.png").image, gray / 255.0, atol=1e-7)


def test_image_errors(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(RadiographReadError, match="differing channels"):
        load_radiograph(tmp_path / "colour.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(RadiographReadError, match="at least 2x2"):
        load_radiograph(tmp_path / "dot.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(RadiographReadError, match="empty"):
        load_radiograph(tmp_path / "empty.png")
    Image.fromarray(np.arange(4096, dtype=np.uint8).reshape(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(RadiographReadError, match="truncated"):
        load_radiograph(tmp_path / "cut.png")
    nan_image = np.ones((6, 6), np.float32)
    nan_image[2, 3] = np.nan
    Image.fromarray(nan_image).save(tmp_path / "nan.tiff")
    with pytest.raises(RadiographReadError, match="NaN"):
        load_radiograph(tmp_path / "nan.tiff")
    assert issubclass(RadiographReadError, ValueError)


# ------------------------------------------------------------------------------- crop and resize
def test_crop_transform_inverse():
    t = CropTransform(row0=13, col0=40, crop_rows=300, crop_cols=300, out_rows=64, out_cols=64)
    rng = np.random.default_rng(1)
    r, c = rng.uniform(-5, 70, 50), rng.uniform(-5, 70, 50)
    back = t.to_output(*t.to_original(r, c))
    np.testing.assert_allclose(back, (r, c), atol=1e-9)
    # Output pixel edges map to crop edges: output [-0.5, 63.5] covers original [12.5, 312.5].
    np.testing.assert_allclose(t.to_original(-0.5, -0.5), (12.5, 39.5))
    np.testing.assert_allclose(t.to_original(63.5, 63.5), (312.5, 339.5))
    assert t.output_spacing_mm((0.1, 0.2)) == pytest.approx((0.1 * 300 / 64, 0.2 * 300 / 64))


def test_centre_crop_moves_a_blob_where_the_transform_says():
    rows, cols = 90, 150
    r, c = np.mgrid[0:rows, 0:cols]
    blob_r, blob_c = 37.3, 81.6
    image = np.exp(-((r - blob_r) ** 2 + (c - blob_c) ** 2) / (2 * 4.0**2))
    out, t = crop_and_resize(image, size=45, margin=0.0)
    assert out.shape == (45, 45) and t.crop_rows == 90 and t.col0 == 30 and t.row0 == 0
    rr, cc = np.mgrid[0:45, 0:45]
    centroid = ((out * rr).sum() / out.sum(), (out * cc).sum() / out.sum())
    np.testing.assert_allclose(centroid, t.to_output(blob_r, blob_c), atol=0.05)


def test_body_crop_follows_the_body():
    image = np.zeros((100, 160), np.float32)
    image[:, 50:110] = 0.7  # the body, 60 columns wide, centred on column 79.5
    out, t = crop_and_resize(image, size=32, margin=0.25, mode="body")
    assert t.crop_cols == 90 and t.col0 == 35  # 60 * 1.5, centred on the body
    out, t = crop_and_resize(image, size=32, margin=1.0, mode="body")
    assert t.crop_cols == 100 and t.row0 == 0  # clipped to the short side


@pytest.mark.parametrize("kwargs, needle", [
    ({"image": np.zeros((1, 5))}, "image"),
    ({"image": np.full((5, 5), np.nan)}, "NaN"),
    ({"size": 0}, "size"),
    ({"mode": "lungs"}, "mode"),
    ({"margin": 0.5}, "margin"),
])
def test_crop_errors(kwargs, needle):
    args = {"image": np.ones((10, 10)), **kwargs}
    with pytest.raises(ValueError, match=needle):
        crop_and_resize(**args)


def _real_cr_path():
    """RG1_UNCR.dcm (a real chest CR, MONOCHROME1) from $XRAYSYN_RG1_UNCR or an installed pydicom-data."""
    import os
    from pathlib import Path

    env = os.environ.get("XRAYSYN_RG1_UNCR")
    if env and Path(env).is_file():
        return Path(env)
    try:
        import pydicom_data
    except ImportError:
        return None
    found = list(Path(pydicom_data.__file__).parent.rglob("RG1_UNCR.dcm"))
    return found[0] if found else None


@pytest.mark.slow
def test_real_chest_cr_has_bright_spine_and_dark_lungs():
    path = _real_cr_path()
    if path is None:
        pytest.skip("RG1_UNCR.dcm not available (set XRAYSYN_RG1_UNCR or install pydicom-data)")
    rg = load_radiograph(path)
    assert rg.meta["photometric"] == "MONOCHROME1" and rg.meta["voi"] == "window"
    image = rg.image
    rows, cols = image.shape
    assert min(rows, cols) > 1000 and 0.0 <= image.min() and image.max() <= 1.0
    band = slice(int(0.3 * rows), int(0.5 * rows))
    spine = image[band, int(0.47 * cols):int(0.53 * cols)].mean()
    right_lung = image[band, int(0.2 * cols):int(0.3 * cols)].mean()
    left_lung = image[band, int(0.7 * cols):int(0.8 * cols)].mean()
    # After the MONOCHROME1 inversion, bone (spine) is bright and the lungs are dark.
    assert spine > right_lung + 0.2 and spine > left_lung + 0.2
    out, _ = crop_and_resize(image, 256, mode="body", margin=0.05)
    assert out.shape == (256, 256)


# --------------------------------------------- full bit depth of colour files, modality (issue 24: 11)
# Files written byte by byte from the PNG (ISO/IEC 15948) and TIFF 6.0 specifications, so that the
# reader is checked against the stored numbers, not against another library's writer.
def _png_bytes(samples: np.ndarray, bit_depth: int = 16) -> bytes:
    import struct
    import zlib

    samples = np.asarray(samples)
    rows, cols = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey+alpha, RGB, RGBA
    big_endian = samples.astype(">u2" if bit_depth == 16 else "u1").reshape(rows, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in big_endian)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", cols, rows, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _tiff_bytes(samples: np.ndarray) -> bytes:
    """Uncompressed little-endian 16-bit RGB (or RGBA with unassociated alpha) TIFF, one strip."""
    import struct

    rows, cols, channels = samples.shape
    pixels = np.ascontiguousarray(samples, dtype="<u2").tobytes()
    short, long = 3, 4
    entries = [(256, long, 1, cols), (257, long, 1, rows), (258, short, channels, None), (259, short, 1, 1),
               (262, short, 1, 2), (273, long, 1, None), (277, short, 1, channels), (278, long, 1, rows),
               (279, long, 1, len(pixels)), (284, short, 1, 1)]
    if channels == 4:
        entries.append((338, short, 1, 2))
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 2 * channels
    out = [b"II", struct.pack("<HI", 42, 8), struct.pack("<H", len(entries))]
    for tag, kind, count, value in entries:
        value = bits_at if tag == 258 else pixels_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == short and tag != 258 else struct.pack("<I", value)
        out.append(struct.pack("<HHI", tag, kind, count) + packed)
    out += [struct.pack("<I", 0), struct.pack(f"<{channels}H", *([16] * channels)), pixels]
    return b"".join(out)


def _grey16(rows: int = 7, cols: int = 5) -> np.ndarray:
    grey = np.random.default_rng(4).integers(0, 65536, size=(rows, cols))
    grey[0, 0], grey[0, 1] = 0, 65535
    grey[1, :] = 0x00FF  # only low bits: all zero once cut to 8 bits
    return grey


@pytest.mark.parametrize("layout", ["RGB", "RGBA"])
@pytest.mark.parametrize("container", ["png", "tiff"])
def test_16_bit_colour_files_with_equal_channels_keep_their_full_depth(tmp_path, layout, container):
    grey = _grey16()
    channels = [grey] * 3 + ([np.full_like(grey, 65535)] if layout == "RGBA" else [])
    samples = np.stack(channels, -1)
    path = tmp_path / f"x.{container}"
    path.write_bytes(_png_bytes(samples) if container == "png" else _tiff_bytes(samples))
    rg = load_radiograph(path)
    np.testing.assert_allclose(rg.image, grey / 65535.0, rtol=0, atol=1e-7)
    assert rg.meta["bits"] == 16 and rg.meta["channels"] == len(channels)



def test_16_bit_colour_errors_instead_of_eight_bits(tmp_path):
    grey = _grey16()
    colour = np.stack([grey, grey, grey // 2], -1)
    (tmp_path / "colour.png").write_bytes(_png_bytes(colour))
    with pytest.raises(RadiographReadError, match="differing channels"):
        load_radiograph(tmp_path / "colour.png")
    (tmp_path / "colour.tiff").write_bytes(_tiff_bytes(colour))
    with pytest.raises(RadiographReadError, match="differing channels"):
        load_radiograph(tmp_path / "colour.tiff")
    # 16-bit grey + alpha: read whole or refused, never cut to 8 bits.
    (tmp_path / "la.png").write_bytes(_png_bytes(np.stack([grey, np.full_like(grey, 65535)], -1)))
    try:
        rg = load_radiograph(tmp_path / "la.png")
    except RadiographReadError as exc:
        assert "16-bit grey+alpha" in str(exc) and "full depth" in str(exc)
    else:
        np.testing.assert_allclose(rg.image, grey / 65535.0, rtol=0, atol=1e-7)
    plain = tmp_path / "grey.png"
    plain.write_bytes(_png_bytes(grey))
    np.testing.assert_allclose(load_radiograph(plain).image, grey / 65535.0, rtol=0, atol=1e-7)


def test_image_files_with_several_frames_are_refused(tmp_path):
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])
    with pytest.raises(RadiographReadError, match="2 frames"):
        load_radiograph(tmp_path / "pages.tiff")


@pytest.mark.parametrize("modality", ["CT", "MR", "PT", "US", "NM"])
def test_dicom_of_a_non_projection_modality_is_refused_naming_it(tmp_path, modality):
    stored = np.round(_attenuation_map() * MAX_STORED).astype(np.uint16)
    path = _write_dicom(tmp_path / "slice.dcm", stored, modality=modality, sop_class="1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(RadiographReadError, match=rf"Modality '{modality}' is not a projection radiograph"):
        load_radiograph(path)
    assert load_radiograph(path, check_modality=False).image.shape == stored.shape


@pytest.mark.parametrize("modality", ["CR", "DX", "DR", "RF", "XA", "MG", "OT", None])
def test_dicom_of_projection_modalities_and_secondary_captures_load(tmp_path, modality):
    stored = np.round(_attenuation_map() * MAX_STORED).astype(np.uint16)
    rg = load_radiograph(_write_dicom(tmp_path / "x.dcm", stored, modality=modality))
    assert rg.image.shape == stored.shape
    secondary = _write_dicom(tmp_path / "sc.dcm", stored, modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.7.3")
    assert load_radiograph(secondary).image.shape == stored.shape  # a capture of a CT screen is a picture
