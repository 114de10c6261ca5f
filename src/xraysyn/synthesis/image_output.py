"""Writing derived radiographs (bone image, bone-suppressed image) like their input: PNG or DICOM.

Every image written here is ``(H, W)`` on the scale of :class:`~xraysyn.data.radiograph.Radiograph`:
values in ``[0, 1]``, **bright = more attenuation**, the same size as the input radiograph. Values
outside ``[0, 1]`` are clipped, then quantised to ``round(v · (2**bits − 1))``. Every file goes
through :func:`~xraysyn.atomic.atomic_write`, so a failure never leaves a partial file.

* :func:`save_png_like_input` writes an 8-bit or a 16-bit greyscale PNG; :func:`output_bits`
  picks the depth from the input's metadata (more than 8 stored bits → 16).
* :func:`write_derived_dicom` writes a DICOM *derived* image (Secondary Capture) that keeps the
  patient and study of a DICOM input, or starts a new anonymous study for a PNG/JPEG input.

Reading back: :func:`~xraysyn.data.radiograph.load_radiograph` returns a PNG's values exactly (it
divides by 255 or 65535). For DICOM it min–max normalises the windowed values, so a written DICOM
reads back as written (within one quantisation step) when the image reaches both 0 and 1, and
otherwise as the same image linearly stretched to ``[0, 1]``; a DICOM viewer shows it with the
stored window, which covers the full stored range (the image as written, not stretched).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xraysyn import __version__
from xraysyn.atomic import atomic_write
from xraysyn.data.radiograph import MIN_IMAGE_SIDE, SECONDARY_CAPTURE_SOP_CLASS, Radiograph

__all__ = [
    "output_bits",
    "quantise",
    "save_png_like_input",
    "write_derived_dicom",
    "DICOM_COPIED_ATTRIBUTES",
]

#: Bit depths a PNG can be written at here (PNG greyscale allows 1, 2, 4, 8, 16; radiographs use these two).
PNG_BITS = (8, 16)
#: zlib level of the full-resolution PNGs: the fastest; 16-bit radiographs are noisy in their low bits, so higher
#: levels barely shrink them (docs/benchmarks.md, "Writing").
PNG_COMPRESS_LEVEL = 1
#: Bits per sample in the DICOM pixel data written here (PS3.5 8.1.1: BitsAllocated 16 holds up to 16 stored bits).
DICOM_BITS_ALLOCATED = 16
#: Stored bits used when the source states none (a PNG/JPEG source, or a DICOM without BitsStored).
DEFAULT_BITS_STORED = 16
#: Patient and study identification copied from a DICOM source when present (PS3.3 C.7.1.1 Patient,
#: C.7.2.1 General Study, C.7.3.1 General Series, C.8.11.5 DX Positioning, C.7.6.1 General Image).
DICOM_COPIED_ATTRIBUTES = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "Laterality", "ImageLaterality", "ViewPosition", "BodyPartExamined",
    "PatientOrientation",
)
#: Spacing attributes copied from a DICOM source when present (valid because the output keeps its size).
DICOM_SPACING_ATTRIBUTES = (
    "PixelSpacing", "PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription", "ImagerPixelSpacing",
)
#: Type 2 attributes (present, possibly empty; PS3.3 C.7.1.1, C.7.2.1) written empty for a non-DICOM source.
_EMPTY_FOR_NEW_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID",
                        "AccessionNumber", "ReferringPhysicianName")
#: Secondary Capture Equipment ConversionType "WSD": workstation (PS3.3 C.8.6.1).
CONVERSION_TYPE_WORKSTATION = "WSD"
#: Modality of the output when the source states none (PS3.3 C.7.3.1.1.1, "Other").
FALLBACK_MODALITY = "OT"
#: Purpose of reference of the SourceImageSequence item: DCM 121322, "Source image for image
#: processing operation" (PS3.16 CID 7202).
SOURCE_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")
#: Character set of every written file: UTF-8 (PS3.3 C.12.1.1.2, "ISO_IR 192"), so copied names
#: and the caller's descriptions in any script can be stored.
SPECIFIC_CHARACTER_SET = "ISO_IR 192"
#: Longest Long String (LO, SeriesDescription) and Short Text (ST, DerivationDescription) in
#: characters (PS3.5 Table 6.2-1).
LO_MAX_CHARS = 64
ST_MAX_CHARS = 1024
#: A Code String (CS, the ImageType values): up to 16 upper-case letters, digits, space or
#: underscore (PS3.5 Table 6.2-1).
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")


# ----------------------------------------------------------------------------------- checks
def _as_image(image: Any) -> np.ndarray:
    """``(H, W)`` float64 copy of ``image`` (numpy or torch), checked for shape and finiteness."""
    if hasattr(image, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        image = image.detach().cpu().numpy()
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < MIN_IMAGE_SIDE:
        raise ValueError(f"image must be 2-D (H, W) with sides >= {MIN_IMAGE_SIDE}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"image contains {int(np.sum(~np.isfinite(array)))} NaN or infinite values")
    return array


def _check_bits(bits: Any, allowed: Sequence[int], what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in allowed:
        raise ValueError(f"{what} must be one of {tuple(allowed)}, got {bits!r}")
    return int(bits)


def _check_text(value: Any, name: str, max_chars: int, *, single_value: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > max_chars:
        raise ValueError(f"{name} must have at most {max_chars} characters (DICOM limit), got {len(value)}")
    if single_value and ("\\" in value or any(ord(ch) < 32 for ch in value)):
        raise ValueError(f"{name} must not contain a backslash or control characters, got {value!r}")
    return value


def quantise(image: np.ndarray, bits: int) -> np.ndarray:
    """``(H, W)`` values (any float range) → ``round(clip(v, 0, 1) · (2**bits − 1))`` as uint16 (uint8 for 8 bits).

    Rounding is to the nearest integer, halves to even (:func:`numpy.rint`).
    """
    bits = _check_bits(bits, range(1, DICOM_BITS_ALLOCATED + 1), "bits")
    top = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * top).astype(dtype)


# ----------------------------------------------------------------------------------- PNG
def output_bits(radiograph: Radiograph) -> int:
    """PNG depth for outputs derived from ``radiograph``: 16 when the input stores more than 8 bits, else 8.

    DICOM: ``meta["bits_stored"] > 8`` → 16. PNG/TIFF/JPEG: ``meta["bits"] > 8`` (16-bit PNG, 16-bit
    or float TIFF) → 16. Anything else (8-bit files, no metadata) → 8.
    """
    meta = radiograph.meta or {}
    stored = meta.get("bits_stored") if meta.get("format") == "dicom" else meta.get("bits")
    try:
        deep = stored is not None and int(stored) > 8
    except (TypeError, ValueError):
        deep = False
    return 16 if deep else 8


def save_png_like_input(image: Any, path: str | os.PathLike, *, bits: int) -> Path:
    """Save a ``(H, W)`` image in ``[0, 1]`` (bright = attenuating) as a greyscale PNG, atomically.

    Args:
        image: ``(H, W)`` float values; clipped to ``[0, 1]`` and quantised to ``round(v · (2**bits − 1))``.
        path: the ``.png`` file to write (parent folders are created, an existing file is replaced).
        bits: 8 or 16 (see :func:`output_bits`); 16 writes exact 16-bit samples, which
            :func:`~xraysyn.data.radiograph.load_radiograph` reads back as ``value / 65535``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: not 2-D, sides under 2 pixels, NaN/inf values, ``bits`` not 8 or 16, or a
            ``path`` not ending in ``.png``.
    """
    from PIL import Image

    array = _as_image(image)
    bits = _check_bits(bits, PNG_BITS, "bits")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    pixels = quantise(array, bits)
    # uint8 → Pillow mode "L"; uint16 → mode "I;16", which Pillow writes as a 16-bit greyscale PNG.
    picture = Image.fromarray(pixels)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL),
                        suffix=".png")


# ----------------------------------------------------------------------------------- DICOM
def _read_source_dataset(source: Radiograph, source_path: str | os.PathLike | None):
    import pydicom

    path = source_path if source_path is not None else (source.meta or {}).get("source")
    if path is None:
        raise ValueError("source is a DICOM radiograph but no source_path was given and source.meta has no 'source'")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise ValueError(f"source_path {str(path)!r} does not exist (needed to copy the patient and study)") from None
    except Exception as exc:  # InvalidDicomError, truncated headers
        raise ValueError(f"source_path {str(path)!r} is not a readable DICOM file: {exc}") from None


def _window(bits_stored: int) -> tuple[int, int]:
    """(center, width) of the linear window mapping stored 0 .. 2**bits − 1 onto the whole display range.

    PS3.3 C.11.2.1.2.1: the linear window is the line through ``(c − 0.5 − (w − 1)/2, ymin)`` and
    ``(c − 0.5 + (w − 1)/2, ymax)``; ending it at 0 and ``2**bits − 1`` gives ``w = 2**bits``,
    ``c = 2**(bits − 1)``.
    """
    return 2 ** (bits_stored - 1), 2**bits_stored


def _source_reference(src) -> Any | None:
    """The SourceImageSequence item naming ``src`` (None when it lacks its SOP class or instance UID)."""
    from pydicom.dataset import Dataset

    file_meta = getattr(src, "file_meta", None) or {}
    sop_class = src.get("SOPClassUID") or file_meta.get("MediaStorageSOPClassUID")
    sop_instance = src.get("SOPInstanceUID") or file_meta.get("MediaStorageSOPInstanceUID")
    if not sop_class or not sop_instance:
        return None
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_PURPOSE_CODE
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def write_derived_dicom(
    path: str | os.PathLike,
    image: Any,
    source: Radiograph,
    *,
    source_path: str | os.PathLike | None = None,
    description: str,
    derivation: str,
    image_type: Sequence[str] = (),
) -> Path:
    """Write a ``(H, W)`` image in ``[0, 1]`` (bright = attenuating) as a derived DICOM image, atomically.

    The file is a **Secondary Capture Image** (SOP class 1.2.840.10008.5.1.4.1.1.7, ConversionType
    ``WSD``), Explicit VR Little Endian, uncompressed, with file meta and preamble. Secondary
    Capture is chosen over keeping the source's CR/DX SOP class (DICOM does allow derived DX images
    "FOR PRESENTATION") because every PACS and viewer accepts it and it needs nothing we cannot
    state truthfully: the DX IOD makes the DX Detector module mandatory and its DX Image module
    requires Pixel Intensity Relationship (and its Sign), Rescale Type and Presentation LUT Shape,
    which have no honest value for a network's output; the CR IOD likewise requires the CR Series
    and CR Image modules. A Secondary Capture also keeps a synthetic image from being taken for an
    acquisition by hanging protocols or CAD that select on the DX/CR SOP class. The Modality stays
    the source's (CR, DX, ...; ``OT`` when it has none), so the output is listed with its input.

    Source is a DICOM file (``source.meta["format"] == "dicom"``): the dataset is re-read from
    ``source_path`` (default ``source.meta["source"]``, the path :func:`load_radiograph` read)
    without its pixels, and the output keeps :data:`DICOM_COPIED_ATTRIBUTES` (patient, study,
    laterality, view, body part) where present, the source's ``PixelSpacing`` and
    ``ImagerPixelSpacing`` (the output has the source's size), its ``PhotometricInterpretation``
    (``MONOCHROME1`` samples are stored inverted, ``2**bits − 1 − q``, so the file displays like the
    input), its ``BitsStored`` (16 when absent or above 16), its ``LossyImageCompression`` ("01":
    once lossy, always lossy) and ``BurnedInAnnotation`` (a burnt-in marker survives in derived
    pixels), and gets a SourceImageSequence item referencing the source's SOP class and instance.
    New SOPInstanceUID and SeriesInstanceUID.

    Source is a PNG/JPEG/TIFF (any other format): a new study of an anonymous patient —
    PatientName and PatientID empty (Type 2; an invented ID such as "anonymous" would merge
    unrelated people into one patient in a PACS), a StudyInstanceUID generated from a hash of the
    source's pixels (so the bone and the suppressed image of one input land in the same study),
    ``MONOCHROME2``, 16 stored bits, no spacing (the file states none).

    Both: ImageType ``DERIVED\\SECONDARY`` followed by ``image_type``, SeriesDescription =
    ``description``, DerivationDescription = ``derivation``, BitsAllocated 16, HighBit =
    BitsStored − 1, PixelRepresentation 0, a WindowCenter/WindowWidth spanning the stored range
    (center ``2**(bits − 1)``, width ``2**bits``), character set UTF-8 (``ISO_IR 192``).
    Quantisation: ``round(clip(v, 0, 1) · (2**bits_stored − 1))``.

    Args:
        path: the file to write (any suffix; parent folders are created, an existing file is replaced).
        image: ``(H, W)`` float values, the same shape as ``source.image``.
        source: the radiograph the image was derived from, as :func:`load_radiograph` returned it.
        source_path: the source's DICOM file, re-read for its header (DICOM sources only).
        description: SeriesDescription, e.g. ``"XraySyn bone image"`` (1..64 characters, no backslash).
        derivation: DerivationDescription, how the image was made (1..1024 characters).
        image_type: further ImageType values after ``DERIVED``, ``SECONDARY`` (DICOM Code Strings:
            up to 16 of ``A-Z 0-9 _`` and space each).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the image is not 2-D, has NaN/inf values or a shape other than the source's;
            ``description`` or ``derivation`` empty, too long or (description) holding a backslash;
            an ``image_type`` value that is not a Code String; a DICOM source whose file cannot be read.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    array = _as_image(image)
    if not isinstance(source, Radiograph):
        raise ValueError(f"source must be a Radiograph (from load_radiograph), got {type(source).__name__}")
    source_shape = tuple(np.shape(source.image))
    if array.shape != source_shape:
        raise ValueError(f"image has shape {array.shape} but the source radiograph {source_shape}; a derived "
                         "image keeps the source's size (its pixel spacing is copied)")
    description = _check_text(description, "description", LO_MAX_CHARS, single_value=True)
    derivation = _check_text(derivation, "derivation", ST_MAX_CHARS, single_value=False)
    extra_types = list(image_type)
    for value in extra_types:
        if not isinstance(value, str) or not _CODE_STRING.fullmatch(value):
            raise ValueError("image_type values must be DICOM Code Strings (1-16 of A-Z, 0-9, space, _), "
                             f"got {value!r}")

    is_dicom = (source.meta or {}).get("format") == "dicom"
    src = _read_source_dataset(source, source_path) if is_dicom else None

    sop_instance = generate_uid()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    file_meta.MediaStorageSOPInstanceUID = sop_instance
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = SPECIFIC_CHARACTER_SET
    ds.SOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    ds.SOPInstanceUID = sop_instance
    now = _dt.datetime.now()
    ds.InstanceCreationDate = ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")

    if src is not None:
        for keyword in DICOM_COPIED_ATTRIBUTES + DICOM_SPACING_ATTRIBUTES:
            if keyword in src:
                setattr(ds, keyword, src[keyword].value)  # text is re-encoded as UTF-8 on write
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID = generate_uid()
        modality = str(src.get("Modality", "") or "").strip() or FALLBACK_MODALITY
        photometric = str(src.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # colour-stored greyscale reads as MONOCHROME2
            photometric = "MONOCHROME2"
        stored_bits = src.get("BitsStored")
        bits_stored = int(stored_bits) if stored_bits and 1 <= int(stored_bits) <= DICOM_BITS_ALLOCATED \
            else DEFAULT_BITS_STORED
        if str(src.get("LossyImageCompression", "")).strip() == "01":
            ds.LossyImageCompression = "01"
        if "BurnedInAnnotation" in src:  # a burnt-in marker of the source survives in derived pixels
            ds.BurnedInAnnotation = src.BurnedInAnnotation
        reference = _source_reference(src)
        if reference is not None:
            ds.SourceImageSequence = [reference]
    else:
        for keyword in _EMPTY_FOR_NEW_STUDY:
            setattr(ds, keyword, "")
        pixels_hash = hashlib.sha256(np.ascontiguousarray(source.image).tobytes()).digest()
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[pixels_hash.hex()])
        ds.StudyDate, ds.StudyTime = ds.ContentDate, ds.ContentTime
        modality = FALLBACK_MODALITY
        photometric = "MONOCHROME2"
        bits_stored = DEFAULT_BITS_STORED

    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = None  # Type 2: present, empty (the caller's series have no natural number)
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    ds.ImageType = ["DERIVED", "SECONDARY", *extra_types]
    ds.DerivationDescription = derivation
    ds.ConversionType = CONVERSION_TYPE_WORKSTATION
    ds.Manufacturer = ""
    ds.SecondaryCaptureDeviceManufacturer = "xraysyn"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__

    top = 2**bits_stored - 1
    stored = quantise(array, bits_stored).astype(np.uint16)
    if photometric == "MONOCHROME1":  # minimum displayed white: store the complement
        stored = (top - stored).astype(np.uint16)
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = DICOM_BITS_ALLOCATED
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    center, width = _window(bits_stored)
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.WindowCenterWidthExplanation = "full stored range"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()

    def write(tmp: Path) -> None:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)

    return atomic_write(path, write, suffix=".dcm")
