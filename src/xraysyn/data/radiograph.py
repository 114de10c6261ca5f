"""Loading real radiographs (DICOM CR/DX, PNG, JPEG) and cropping them to a CT-like field of view.

Output convention: a float32 ``(H, W)`` image in ``[0, 1]`` where **bright means more
attenuation** (bone white, lungs dark — the usual chest X-ray display), row 0 at the top of the
stored image.

DICOM pipeline (PS3.3 C.11, "Softcopy VOI LUT" and "Modality LUT"): stored values → modality
LUT or RescaleSlope/Intercept → VOI LUT sequence or WindowCenter/WindowWidth (the first
window when several are given) → min–max normalised to ``[0, 1]`` → inverted when the
photometric interpretation is ``MONOCHROME1`` (where the minimum value is displayed white).
Only projection radiographs are accepted: the Modality must be one of :data:`PROJECTION_MODALITIES`
(CR, DX, DR, RF, XA, MG, IO, PX, RG, OT) or the file a Secondary Capture; a CT or MR slice (or
any other modality) is refused with its modality named, unless ``check_modality=False``. A file
without a Modality is accepted (nothing to check).
Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins; JPEG / JPEG-LS /
JPEG 2000 need ``pip install 'xraysyn[dicom-codecs]'`` (pylibjpeg and its libjpeg/openjpeg plugins).

PNG / JPEG / TIFF (Pillow): 8-bit values are divided by 255 and 16-bit values by 65535 (the stored
brightness is kept, not stretched); grayscale stored as RGB(A) is accepted when the three colour
channels are equal (an alpha channel is ignored), colour with differing channels is refused.
16-bit colour PNG / TIFF (which Pillow would cut to 8 bits) are read at full depth with
SimpleITK; ``meta["bits"]`` is the stored depth. Files with several frames (multi-page TIFF,
animated PNG/GIF) are refused like multi-frame DICOM. Pass ``invert=True`` for files stored as
negatives.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Radiograph",
    "RadiographReadError",
    "CropTransform",
    "load_radiograph",
    "crop_and_resize",
    "RADIOGRAPH_SUFFIXES",
    "PROJECTION_MODALITIES",
]

#: File suffixes read with Pillow; anything else is tried as DICOM.
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Suffixes recognised as radiographs when walking folders (DICOM files may also have no suffix).
RADIOGRAPH_SUFFIXES = PILLOW_SUFFIXES + (".dcm", ".dicom")
#: Smallest accepted image side in pixels (a 1×1 "image" carries no picture).
MIN_IMAGE_SIDE = 2
#: Name of the optional dependency group holding the DICOM decoders.
CODECS_EXTRA = "dicom-codecs"
#: DICOM Modality values (PS3.3 C.7.3.1.1.1) of projection radiographs, which load_radiograph accepts.
PROJECTION_MODALITIES = {
    "CR": "computed radiography",
    "DX": "digital radiography",
    "DR": "digital radiography (older exporters)",
    "RF": "radio fluoroscopy",
    "XA": "X-ray angiography",
    "MG": "mammography",
    "IO": "intra-oral radiography",
    "PX": "panoramic X-ray",
    "RG": "radiographic imaging (film/screen)",
    "OT": "other (scanned films, secondary captures)",
}
#: SOP Class UID of Secondary Capture Image Storage; its multi-frame variants append ``.1``-``.4``.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: Pillow modes of colour images whose samples Pillow reduces to 8 bits when the file stores more.
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "LA", "La")
#: Pillow modes holding one sample per pixel at more than 8 bits (kept at full depth by Pillow).
_DEEP_GREY_MODES = ("I", "F")
#: Byte offset of the bit depth in a PNG file (8-byte signature, IHDR length and type, width,
#: height); the colour type follows it.
_PNG_BIT_DEPTH_OFFSET = 24
#: PNG colour types (ISO/IEC 15948, table 11.1) by name, for messages.
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


class RadiographReadError(ValueError):
    """A file that cannot be read as a radiograph (the message names the file and the reason)."""


@dataclass
class Radiograph:
    """A radiograph ready for the models.

    Attributes:
        image: ``(H, W)`` float32 in ``[0, 1]``, bright = more attenuation.
        pixel_spacing_mm: ``(row_mm, col_mm)`` when the file states it (DICOM PixelSpacing, else
            ImagerPixelSpacing, which is measured at the detector), else ``None``.
        meta: provenance: ``source``, ``format``, and for DICOM ``photometric``, ``bits_stored``,
            ``transfer_syntax``, ``spacing_tag``, ``voi`` (what was applied).
    """

    image: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- checks
def _check_image(array: np.ndarray, source: str) -> None:
    if array.ndim != 2 or min(array.shape) < MIN_IMAGE_SIDE:
        raise RadiographReadError(
            f"{source}: image must be 2-D with at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise RadiographReadError(f"{source}: image contains NaN or infinite values")


def _normalise_min_max(array: np.ndarray, source: str) -> np.ndarray:
    lo, hi = float(array.min()), float(array.max())
    if not hi > lo:
        raise RadiographReadError(f"{source}: image is constant (all pixels {lo}), there is nothing to show")
    return ((array - lo) / (hi - lo)).astype(np.float32)


def _single_channel(array: np.ndarray, source: str) -> np.ndarray:
    """``(H, W, C)`` grayscale stored as colour -> ``(H, W)``; differing channels -> error.

    Two channels are gray + alpha (the alpha is ignored); three or four are RGB(A).
    """
    if array.shape[-1] <= 2:
        return array[..., 0]
    colour = array[..., :3]
    if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
        raise RadiographReadError(
            f"{source}: colour image with differing channels; a radiograph must be grayscale "
            "(convert it explicitly if the colour is only an overlay)"
        )
    return colour[..., 0]


# ----------------------------------------------------------------------------------- DICOM
def _decoder_available(transfer_syntax) -> bool | None:
    """True/False when pydicom knows a decoder for the syntax, ``None`` when none exists at all."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:
        return None


def _dicom_pixels(ds, source: str) -> np.ndarray:
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/ValueError/NotImplementedError/...
        if transfer_syntax is not None and transfer_syntax.is_compressed:
            available = _decoder_available(transfer_syntax)
            if available is None:
                raise RadiographReadError(
                    f"{source}: no decoder exists for transfer syntax {transfer_syntax.name} ({transfer_syntax})"
                ) from None
            if not available:
                raise RadiographReadError(
                    f"{source}: pixel data is compressed as {transfer_syntax.name} and no decoder is installed; "
                    f"install one with: pip install 'xraysyn[{CODECS_EXTRA}]'"
                ) from None
        raise RadiographReadError(f"{source}: cannot decode the pixel data (truncated or corrupt?): {exc}") from None


def _is_secondary_capture(ds) -> bool:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    return sop_class == SECONDARY_CAPTURE_SOP_CLASS or sop_class.startswith(SECONDARY_CAPTURE_SOP_CLASS + ".")


def _check_modality(ds, source: str) -> None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not modality or modality in PROJECTION_MODALITIES or _is_secondary_capture(ds):
        return
    accepted = ", ".join(PROJECTION_MODALITIES)
    raise RadiographReadError(
        f"{source}: DICOM Modality {modality!r} is not a projection radiograph (accepted: {accepted}, or a "
        "Secondary Capture); a CT or MR slice cannot stand in for an X-ray. Pass check_modality=False to "
        "load it anyway")


def _load_dicom(path: Path, source: str, check_modality: bool) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise RadiographReadError(
            f"{source}: not a DICOM file (no DICM preamble) and not a known image suffix {PILLOW_SUFFIXES}"
        ) from None
    except Exception as exc:  # truncated headers raise EOFError/OSError/struct errors
        raise RadiographReadError(f"{source}: unreadable DICOM file (truncated or corrupt?): {exc}") from None
    if check_modality:
        _check_modality(ds, source)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RadiographReadError(f"{source}: DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise RadiographReadError(f"{source}: DICOM file has {frames} frames, a radiograph has exactly one")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    pixels = _dicom_pixels(ds, source)
    if pixels.ndim == 3:
        pixels = _single_channel(pixels, source)
        photometric = "MONOCHROME2"
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographReadError(f"{source}: unsupported photometric interpretation {photometric!r}")
    if pixels.ndim != 2:
        raise RadiographReadError(f"{source}: expected a 2-D image, got pixel data of shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds)
    voi = "none"
    if "VOILUTSequence" in ds:
        voi = "VOILUTSequence"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        voi = "window"
    if voi != "none":
        try:
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        except Exception as exc:
            raise RadiographReadError(f"{source}: invalid VOI LUT / window: {exc}") from None
    values = np.asarray(values, dtype=np.float64)
    _check_image(values, source)
    image = _normalise_min_max(values, source)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    spacing, spacing_tag = None, None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2:
            pair = (float(value[0]), float(value[1]))
            if all(math.isfinite(v) and v > 0 for v in pair):
                spacing, spacing_tag = pair, tag
                break
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    meta = {
        "source": source,
        "format": "dicom",
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", pixels.dtype.itemsize * 8)),
        "transfer_syntax": str(ts) if ts is not None else None,
        "modality": str(ds.get("Modality", "")),
        "spacing_tag": spacing_tag,
        "voi": voi,
    }
    return Radiograph(image=np.ascontiguousarray(image, dtype=np.float32), pixel_spacing_mm=spacing, meta=meta)


# ----------------------------------------------------------------------------------- Pillow
def _stored_layout(img, path: Path) -> tuple[int | None, str]:
    """Bits per stored sample and the channel layout, from the file's own header (PNG IHDR, TIFF
    BitsPerSample); ``(None, mode)`` for other formats."""
    if img.format == "PNG":
        with open(path, "rb") as fh:
            fh.seek(_PNG_BIT_DEPTH_OFFSET)
            header = fh.read(2)
        if len(header) == 2:
            return header[0], _PNG_COLOUR_TYPES.get(header[1], img.mode)
        return None, img.mode
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)
        if isinstance(bits, (tuple, list)):
            return (max(int(b) for b in bits) if bits else None), img.mode
        return (int(bits) if bits is not None else None), img.mode
    return None, img.mode


def _read_deep_colour(path: Path, source: str, bits: int, layout: str) -> np.ndarray:
    """``(H, W, C)`` samples of a colour PNG/TIFF at their stored depth (SimpleITK reads them whole)."""
    import SimpleITK as sitk

    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RadiographReadError(
            f"{source}: {bits}-bit {layout} image cannot be read at full depth ({reason}); save it as "
            f"{bits}-bit grayscale without alpha (not read rather than cut to 8 bits)") from None
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        raise RadiographReadError(f"{source}: {bits}-bit {layout} image read with shape {array.shape}, "
                                  "expected one picture (rows, cols, channels)")
    return array


def _pixel_scale(array: np.ndarray, bits: int, source: str) -> float | None:
    """Divisor mapping integer samples of ``bits`` bits to [0, 1]; ``None`` for floats (min-max)."""
    if array.dtype.kind == "f":
        return None
    top = 2**bits - 1
    if array.min() < 0 or array.max() > top:
        raise RadiographReadError(f"{source}: integer image values outside the {bits}-bit range 0..{top}")
    return float(top)


def _load_pillow(path: Path, source: str) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames != 1:
                raise RadiographReadError(f"{source}: image file has {frames} frames, a radiograph has exactly one")
            mode = img.mode
            stored_bits, layout = _stored_layout(img, path)
            if stored_bits is not None and stored_bits > 8 and mode in _COLOUR_MODES:
                array = _read_deep_colour(path, source, stored_bits, layout)
                return _finish_pillow(array, mode, stored_bits, path, source, reader="SimpleITK")
            if stored_bits is not None and stored_bits > 8 and mode not in _DEEP_GREY_MODES \
                    and not mode.startswith("I;16"):
                raise RadiographReadError(f"{source}: {stored_bits}-bit {mode} images are not supported "
                                          "(only grayscale or RGB(A))")
            img.load()
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            elif mode == "1":
                img = img.convert("L")
                mode = "L"
            array = np.array(img)
    except RadiographReadError:
        raise
    except UnidentifiedImageError:
        raise RadiographReadError(f"{source}: not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated files raise OSError in load()
        raise RadiographReadError(f"{source}: unreadable image (truncated or corrupt?): {exc}") from None
    if mode.startswith("I;16"):
        bits = 16
    elif mode == "I":  # 32-bit integer TIFF, or a 16-bit grayscale PNG in older Pillow
        bits = stored_bits if stored_bits else 16
    elif mode == "F":
        bits = 32
    else:
        bits = 8
    return _finish_pillow(array, mode, bits, path, source, reader="Pillow")


def _finish_pillow(array: np.ndarray, mode: str, bits: int, path: Path, source: str, *, reader: str) -> Radiograph:
    channels = array.shape[-1] if array.ndim == 3 else 1
    if array.ndim == 3:
        array = _single_channel(array, source)
    if array.size == 0:
        raise RadiographReadError(f"{source}: image is empty")
    scale = None if mode == "F" else _pixel_scale(array, bits, source)
    values = array.astype(np.float64)
    _check_image(values, source)
    if scale is None:
        image = _normalise_min_max(values, source)
    else:
        image = (values / scale).astype(np.float32)
    meta = {"source": source, "format": path.suffix.lower().lstrip("."), "mode": mode, "bits": bits,
            "channels": channels, "reader": reader}
    return Radiograph(image=np.ascontiguousarray(image, dtype=np.float32), pixel_spacing_mm=None, meta=meta)


def load_radiograph(path: str | os.PathLike, *, invert: bool = False, check_modality: bool = True) -> Radiograph:
    """Read one radiograph.

    Args:
        path: DICOM file (any suffix or none), or PNG / JPEG / TIFF / BMP.
        invert: flip the brightness (``1 - image``), for files stored as negatives.
        check_modality: refuse DICOM files whose Modality is not a projection radiograph
            (:data:`PROJECTION_MODALITIES` or a Secondary Capture).

    Returns:
        :class:`Radiograph` with a float32 ``(H, W)`` image in ``[0, 1]`` (bright = more
        attenuation) and the pixel spacing in mm when known.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RadiographReadError (a ``ValueError``): truncated or non-image files, missing pixel data,
            missing codecs (names the ``dicom-codecs`` extra), colour images with differing channels,
            empty / 1×1 / constant images, NaNs, several frames, a DICOM Modality that is not a
            projection radiograph (e.g. CT, MR; the message names it).
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise FileNotFoundError(f"radiograph {source!r} does not exist")
    if not path.is_file():
        raise RadiographReadError(f"{source}: is not a file")
    if path.stat().st_size == 0:
        raise RadiographReadError(f"{source}: file is empty")
    if path.suffix.lower() in PILLOW_SUFFIXES:
        radiograph = _load_pillow(path, source)
    else:
        radiograph = _load_dicom(path, source, check_modality)
    if invert:
        radiograph.image = 1.0 - radiograph.image
        radiograph.meta["inverted"] = True
    return radiograph


# ----------------------------------------------------------------------------------- crop + resize
@dataclass(frozen=True)
class CropTransform:
    """Maps pixel coordinates between an original image and its cropped, resized version.

    Pixel centres sit at integer coordinates (row ``r`` covers ``[r - 0.5, r + 0.5]``). The crop
    window starts at ``(row0, col0)`` (top-left pixel of the window, original pixels) and spans
    ``crop_rows × crop_cols`` original pixels, resampled to ``out_rows × out_cols``.
    """

    row0: int
    col0: int
    crop_rows: int
    crop_cols: int
    out_rows: int
    out_cols: int

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per output pixel ``(row, col)``."""
        return self.crop_rows / self.out_rows, self.crop_cols / self.out_cols

    def to_original(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel coordinates (arrays or numbers) -> original pixel coordinates."""
        sr, sc = self.scale
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        return self.row0 - 0.5 + (rows + 0.5) * sr, self.col0 - 0.5 + (cols + 0.5) * sc

    def to_output(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Original pixel coordinates -> output pixel coordinates (inverse of :meth:`to_original`)."""
        sr, sc = self.scale
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        return (rows - self.row0 + 0.5) / sr - 0.5, (cols - self.col0 + 0.5) / sc - 0.5

    def output_spacing_mm(self, pixel_spacing_mm: tuple[float, float] | None) -> tuple[float, float] | None:
        """Pixel spacing (mm) of the output given the original's, ``None`` stays ``None``."""
        if pixel_spacing_mm is None:
            return None
        sr, sc = self.scale
        return pixel_spacing_mm[0] * sr, pixel_spacing_mm[1] * sc


def _body_columns(image: np.ndarray, background_quantile: float = 0.02) -> tuple[int, int]:
    """Left/right columns of the body: columns whose mean brightness exceeds the midpoint between
    the darkest column and the median column (air beside the patient is dark)."""
    profile = image.mean(axis=0)
    low = float(np.quantile(profile, background_quantile))
    threshold = 0.5 * (low + float(np.median(profile)))
    inside = np.flatnonzero(profile > threshold)
    if inside.size == 0:
        return 0, image.shape[1] - 1
    return int(inside[0]), int(inside[-1])


def crop_and_resize(image, size: int | tuple[int, int] = 256, *, margin: float = 0.0,
                    mode: str = "center") -> tuple[np.ndarray, CropTransform]:
    """Crop a radiograph to a square, CT-like field of view and resize it.

    Rule: the crop is a square (CT volumes are cubes, their frontal DRRs are square).

    * ``mode="center"``: side ``min(H, W) · (1 - 2·margin)``, centred on the image.
    * ``mode="body"``: side ``body_width · (1 + 2·margin)`` (clipped to ``min(H, W)``), centred
      horizontally on the body (columns brighter than the air beside the patient) and vertically
      on the image; this matches the tight-to-body crop of the CT preprocessing.

    The window is shifted, never shrunk further, to stay inside the image. Resizing uses bilinear
    interpolation with antialiasing (``torch.nn.functional.interpolate``), whose pixel-centre
    convention is the one of :class:`CropTransform`.

    Args:
        image: ``(H, W)`` array (numpy or torch), any float range.
        size: output side in pixels, or ``(rows, cols)``.
        margin: fraction of the square side (see the rule); ``0 <= margin < 0.5`` for ``center``,
            ``0 <= margin <= 1`` for ``body``.
        mode: ``"center"`` or ``"body"``.

    Returns:
        ``(out, transform)``: float32 numpy ``(rows, cols)`` and the :class:`CropTransform`.
    """
    import torch
    import torch.nn.functional as F

    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 2 or min(array.shape) < MIN_IMAGE_SIDE:
        raise ValueError(f"image must be 2-D (H, W) with sides >= {MIN_IMAGE_SIDE}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image contains NaN or infinite values")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        out_rows = out_cols = int(size)
    else:
        try:
            out_rows, out_cols = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be a positive integer or (rows, cols), got {size!r}") from None
    if out_rows < 1 or out_cols < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if mode not in ("center", "body"):
        raise ValueError(f"mode must be 'center' or 'body', got {mode!r}")
    margin_ok = isinstance(margin, (int, float)) and (
        0.0 <= margin < 0.5 if mode == "center" else 0.0 <= margin <= 1.0)
    if not margin_ok:
        expected = "[0, 0.5)" if mode == "center" else "[0, 1]"
        raise ValueError(f"margin must be in {expected} for mode {mode!r}, got {margin!r}")
    rows, cols = array.shape
    short = min(rows, cols)
    if mode == "center":
        side = max(1, int(round(short * (1.0 - 2.0 * margin))))
        center_col = (cols - 1) / 2.0
    else:
        left, right = _body_columns(array.astype(np.float64))
        side = min(short, max(1, int(round((right - left + 1) * (1.0 + 2.0 * margin)))))
        center_col = (left + right) / 2.0
    center_row = (rows - 1) / 2.0
    row0 = int(np.clip(round(center_row - (side - 1) / 2.0), 0, rows - side))
    col0 = int(np.clip(round(center_col - (side - 1) / 2.0), 0, cols - side))
    crop = torch.from_numpy(np.ascontiguousarray(array[row0:row0 + side, col0:col0 + side], dtype=np.float32))
    resized = F.interpolate(crop[None, None], size=(out_rows, out_cols), mode="bilinear",
                            align_corners=False, antialias=side > min(out_rows, out_cols))
    transform = CropTransform(row0=row0, col0=col0, crop_rows=side, crop_cols=side, out_rows=out_rows, out_cols=out_cols)
    return resized[0, 0].numpy(), transform
