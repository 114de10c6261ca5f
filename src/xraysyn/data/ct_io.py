"""Reading and writing CT volumes: DICOM series folders, NIfTI, NRRD and MHA/MHD.

Every loader returns a :class:`CTVolume`: the CT in Hounsfield units as a float32 array
``hu[i, j, k]`` and the ``(4, 4)`` ``world_from_voxel`` affine mapping homogeneous voxel-centre
indices ``(i, j, k, 1)`` to world **RAS+ mm** (the NIfTI / nibabel convention used everywhere in
xraysyn). DICOM and ITK (MHA/MHD) store LPS coordinates; they are converted by negating the first
two rows of the affine.

DICOM series rules (checked, each failure is one :class:`CTReadError` naming the file or value):

* every file of the folder must be DICOM, except names ending in :data:`IGNORED_SUFFIXES`
  (LIDC-IDRI keeps an XML annotation next to its slices), hidden files and ``DICOMDIR``;
* exactly one ``SeriesInstanceUID`` (a folder holding several series is an error listing them);
* at least :data:`MIN_SLICES` single-frame slices with pixel data, equal ``Rows``/``Columns``,
  ``PixelSpacing`` and ``ImageOrientationPatient``;
* slices are sorted by their position along the slice normal (row cosine x column cosine); the
  positions must lie on one straight line with equal steps: every ``ImagePositionPatient`` must be
  within ``SPACING_ATOL_MM + SPACING_RTOL * step`` of ``first + k * step``. DICOM stores positions
  as decimal strings of up to 16 characters, so honest rounding is far below this tolerance
  while a missing slice (a doubled gap) is far above it;
* ``RescaleSlope``/``RescaleIntercept`` (default 1 and 0) are applied per slice to obtain HU.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraysyn.atomic import atomic_write

__all__ = [
    "IGNORED_SUFFIXES",
    "LPS_FROM_RAS",
    "MIN_SLICES",
    "SPACING_ATOL_MM",
    "SPACING_RTOL",
    "CTReadError",
    "CTVolume",
    "is_dicom_file",
    "load_ct",
    "load_volume_tensor",
    "save_nifti",
    "volume_format",
    "write_nifti_array",
]

#: Diagonal flip between DICOM/ITK LPS+ and NIfTI RAS+ world coordinates (its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Absolute tolerance (mm) on each slice position against an evenly spaced series.
SPACING_ATOL_MM = 0.01
#: Relative tolerance (fraction of the slice step) on each slice position.
SPACING_RTOL = 0.01
#: Tolerance on direction cosines and in-plane pixel spacing agreeing between slices.
ORIENTATION_ATOL = 1e-4
#: A volume needs at least this many voxels along every axis (fewer is a 2-D image, not a CT).
MIN_SLICES = 2
#: File name endings ignored inside DICOM series folders.
IGNORED_SUFFIXES = (".xml", ".txt", ".json", ".csv", ".md", ".html", ".pdf", ".ini", ".log")
#: Recognised single-file volume formats, by (lower-case) file name ending.
_FILE_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "itk",
    ".mhd": "itk",
}
_MEDIA_STORAGE_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


class CTReadError(ValueError):
    """A CT file or folder cannot be read as a 3-D volume (the message names the file and why)."""


@dataclass
class CTVolume:
    """A CT volume with its world placement.

    Attributes:
        hu: ``(I, J, K)`` float32 CT values in Hounsfield units (or the file's raw values when the
            file holds something else, e.g. a label map).
        world_from_voxel: ``(4, 4)`` float64 affine, homogeneous voxel centre ``(i, j, k, 1)`` ->
            world RAS+ mm.
        meta: provenance: ``format``, ``source`` and format-specific entries such as
            ``slice_thickness_mm`` (DICOM ``SliceThickness``) and ``series_instance_uid``.
    """

    hu: np.ndarray
    world_from_voxel: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(I, J, K)`` in voxels."""
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing along ``i, j, k`` in mm (lengths of the affine's first three columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.world_from_voxel[:3, :3], axis=0))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- checks
def _check_volume(hu: np.ndarray, world_from_voxel: np.ndarray, source: str) -> None:
    if hu.ndim != 3:
        raise CTReadError(f"{source}: expected a 3-D volume, got an array of shape {hu.shape}")
    if min(hu.shape) < MIN_SLICES:
        raise CTReadError(
            f"{source}: shape {hu.shape} is a 2-D image, not a CT volume (need at least {MIN_SLICES} "
            "voxels along every axis)"
        )
    nan_count = int(np.count_nonzero(~np.isfinite(hu)))
    if nan_count:
        raise CTReadError(f"{source}: {nan_count} voxels are NaN or infinite")
    if world_from_voxel.shape != (4, 4) or not np.all(np.isfinite(world_from_voxel)):
        raise CTReadError(f"{source}: the affine must be a finite (4, 4) matrix, got {world_from_voxel!r}")
    if abs(np.linalg.det(world_from_voxel[:3, :3])) < 1e-12:
        raise CTReadError(f"{source}: the affine is singular (zero voxel spacing?): {world_from_voxel.tolist()}")


def _squeeze_to_3d(data: np.ndarray, source: str) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CTReadError(f"{source}: expected a 3-D volume, got an array of shape {data.shape}")
    return data


# ---------------------------------------------------------------------------------------------- DICOM
def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` holds DICOM: a Part 10 file (128-byte preamble then ``DICM``), or a file
    without the preamble that pydicom reads with ``force=True`` into a dataset naming its SOP class,
    modality or series (what older scanners and some exports write)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return _forced_dicom(Path(path), stop_before_pixels=True) is not None


_DICOM_IDENTIFYING_KEYWORDS = ("SOPClassUID", "Modality", "SeriesInstanceUID")
"""A dataset read with ``force=True`` counts as DICOM only if it names one of these."""


def _forced_dicom(path: Path, *, stop_before_pixels: bool):
    """The dataset of a preamble-less DICOM file, or ``None`` when the content is not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        if any(keyword in ds for keyword in _DICOM_IDENTIFYING_KEYWORDS):
            return ds
    except Exception:  # forced reads of non-DICOM bytes fail in many ways inside pydicom
        return None
    return None


def _read_failure(path: Path, exc: OSError) -> CTReadError:
    return CTReadError(f"{str(path)!r} cannot be read: {exc.strerror or exc}")


def _series_files(folder: Path) -> list[Path]:
    files = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if entry.name.lower().endswith(IGNORED_SUFFIXES):
            continue
        files.append(entry)
    return files


def _read_dicom_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=False)
    except InvalidDicomError:
        ds = _forced_dicom(path, stop_before_pixels=False)
        if ds is not None:
            return ds
        if volume_format(path):
            raise CTReadError(f"{str(path)!r} is a {volume_format(path)} volume file, not a DICOM slice: pass the "
                              "file itself, not its folder") from None
        raise CTReadError(f"{str(path)!r} is not a DICOM file (no 'DICM' marker, and not DICOM without one)") from None
    except PermissionError as exc:
        raise _read_failure(path, exc) from None
    except Exception as exc:  # truncated files raise EOFError/OSError/struct errors deep inside pydicom
        raise CTReadError(f"{str(path)!r} is a truncated or corrupt DICOM file: {exc}") from None


def _float_list(dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    value = getattr(dataset, keyword, None)
    if value is None:
        raise CTReadError(f"{str(path)!r} has no {keyword}; cannot place the slice in space")
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise CTReadError(f"{str(path)!r}: {keyword} is not numeric: {value!r}") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise CTReadError(f"{str(path)!r}: {keyword} must be {count} finite numbers, got {value!r}")
    return values


def _load_dicom_series(folder: Path) -> CTVolume:
    files = _series_files(folder)
    if not files:
        raise CTReadError(f"folder {str(folder)!r} contains no DICOM files")
    datasets = []
    for path in files:
        ds = _read_dicom_header(path)
        if str(getattr(ds, "SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY_SOP_CLASS:
            continue
        if "SeriesInstanceUID" not in ds:
            raise CTReadError(
                f"{str(path)!r} has no SeriesInstanceUID: a truncated file or not a CT image slice"
            )
        datasets.append((path, ds))
    if not datasets:
        raise CTReadError(f"folder {str(folder)!r} contains no DICOM image files")

    by_series: dict[str, list] = defaultdict(list)
    for path, ds in datasets:
        by_series[str(ds.SeriesInstanceUID)].append((path, ds))
    if len(by_series) > 1:
        listing = "; ".join(
            f"{uid} ({len(items)} files, e.g. {items[0][0].name!r}"
            f"{', ' + repr(str(items[0][1].get('SeriesDescription', ''))) if items[0][1].get('SeriesDescription') else ''})"
            for uid, items in sorted(by_series.items())
        )
        raise CTReadError(
            f"folder {str(folder)!r} mixes {len(by_series)} DICOM series; put each series in its own folder: {listing}"
        )
    (series_uid, items), = by_series.items()

    for path, ds in items:
        if "PixelData" not in ds:
            raise CTReadError(f"{str(path)!r} has no pixel data (a truncated file or not an image)")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise CTReadError(
                f"{str(path)!r} is a multi-frame DICOM ({frames} frames); only series of single-frame slices are supported"
            )
    if len(items) < MIN_SLICES:
        raise CTReadError(
            f"folder {str(folder)!r} holds a single DICOM slice ({items[0][0].name!r}): a 2-D image, not a CT "
            f"volume (need at least {MIN_SLICES} slices)"
        )

    first_path, first = items[0]
    orientation = _float_list(first, "ImageOrientationPatient", 6, first_path)
    spacing_rc = _float_list(first, "PixelSpacing", 2, first_path)
    if np.any(spacing_rc <= 0):
        raise CTReadError(f"{str(first_path)!r}: PixelSpacing must be positive, got {spacing_rc.tolist()}")
    shape_rc = (int(first.Rows), int(first.Columns))
    row_cosine, col_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, col_cosine)
    if not math.isclose(np.linalg.norm(normal), 1.0, abs_tol=1e-3):
        raise CTReadError(f"{str(first_path)!r}: ImageOrientationPatient is not two orthonormal vectors: {orientation.tolist()}")

    positions = []
    for path, ds in items:
        if not np.allclose(_float_list(ds, "ImageOrientationPatient", 6, path), orientation, atol=ORIENTATION_ATOL):
            raise CTReadError(f"{str(path)!r}: ImageOrientationPatient differs from {first_path.name!r}")
        if not np.allclose(_float_list(ds, "PixelSpacing", 2, path), spacing_rc, atol=ORIENTATION_ATOL):
            raise CTReadError(f"{str(path)!r}: PixelSpacing differs from {first_path.name!r}")
        if (int(ds.Rows), int(ds.Columns)) != shape_rc:
            raise CTReadError(f"{str(path)!r}: image size {ds.Rows}x{ds.Columns} differs from {shape_rc[0]}x{shape_rc[1]}")
        positions.append(_float_list(ds, "ImagePositionPatient", 3, path))
    positions_arr = np.stack(positions)
    along_normal = positions_arr @ normal
    order = np.argsort(along_normal, kind="stable")
    positions_arr = positions_arr[order]
    items = [items[i] for i in order]
    gaps = np.diff(along_normal[order])
    if np.any(gaps <= SPACING_ATOL_MM):
        k = int(np.argmin(gaps))
        raise CTReadError(
            f"folder {str(folder)!r}: slices {items[k][0].name!r} and {items[k + 1][0].name!r} share the same position "
            f"along the slice normal ({along_normal[order][k]:.3f} mm)"
        )
    count = len(items)
    step = (positions_arr[-1] - positions_arr[0]) / (count - 1)
    step_mm = float(np.linalg.norm(step))
    expected = positions_arr[0] + np.arange(count)[:, None] * step
    deviation = np.linalg.norm(positions_arr - expected, axis=1)
    tolerance = SPACING_ATOL_MM + SPACING_RTOL * step_mm
    if np.any(deviation > tolerance):
        raise CTReadError(
            f"folder {str(folder)!r}: inconsistent slice spacing: gaps along the slice normal range from "
            f"{gaps.min():.4f} to {gaps.max():.4f} mm (worst slice {items[int(np.argmax(deviation))][0].name!r} is "
            f"{deviation.max():.4f} mm off an even {step_mm:.4f} mm grid, tolerance {tolerance:.4f} mm); "
            "a slice may be missing"
        )

    slices = []
    for path, ds in items:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise CTReadError(f"{str(path)!r}: cannot decode pixel data: {exc}") from None
        if pixels.shape != shape_rc:
            raise CTReadError(f"{str(path)!r}: pixel data has shape {pixels.shape}, expected {shape_rc}")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    # a[i, j, k] = slice k, column i, row j: i follows the row cosine, j the column cosine.
    hu = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))

    lps_from_voxel = np.eye(4)
    lps_from_voxel[:3, 0] = row_cosine * spacing_rc[1]
    lps_from_voxel[:3, 1] = col_cosine * spacing_rc[0]
    lps_from_voxel[:3, 2] = step
    lps_from_voxel[:3, 3] = positions_arr[0]
    world_from_voxel = LPS_FROM_RAS @ lps_from_voxel
    _check_volume(hu, world_from_voxel, str(folder))
    thickness = getattr(first, "SliceThickness", None)
    meta = {
        "format": "dicom",
        "source": str(folder),
        "series_instance_uid": series_uid,
        "modality": str(getattr(first, "Modality", "")),
        "slice_thickness_mm": float(thickness) if thickness not in (None, "") else None,
        "slice_spacing_mm": step_mm,
        "num_slices": count,
    }
    return CTVolume(hu=hu, world_from_voxel=world_from_voxel, meta=meta)


# ------------------------------------------------------------------------------------- file formats
def volume_format(path: str | os.PathLike) -> str | None:
    """The format of a volume file from its name: ``'nifti'``, ``'nrrd'``, ``'itk'`` or ``None``."""
    name = Path(path).name.lower()
    for suffix, kind in _FILE_FORMATS.items():
        if name.endswith(suffix):
            return kind
    return None


def _load_nifti(path: Path) -> CTVolume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except PermissionError as exc:
        raise _read_failure(path, exc) from None
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise CTReadError(f"{str(path)!r} is not a readable NIfTI file: {reason}") from None
    data = _squeeze_to_3d(data, str(path))
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_volume(data, affine, str(path))
    zooms = image.header.get_zooms()
    meta = {"format": "nifti", "source": str(path), "slice_thickness_mm": None, "header_zooms_mm": [float(z) for z in zooms[:3]]}
    return CTVolume(hu=np.ascontiguousarray(data, dtype=np.float32), world_from_voxel=affine, meta=meta)


_SPACE_AXIS_SIGN = {"right": 1.0, "left": -1.0, "anterior": 1.0, "posterior": -1.0, "superior": 1.0, "inferior": -1.0}
_SPACE_ABBREVIATIONS = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}


def _ras_from_nrrd_space(space: str | None, source: str) -> np.ndarray:
    """Diagonal ``(4, 4)`` taking NRRD ``space`` coordinates to RAS+ (identity when absent)."""
    if not space:
        return np.eye(4)
    text = space.strip().lower()
    words = text.split("-") if "-" in text else [_SPACE_ABBREVIATIONS.get(ch.upper(), ch) for ch in text]
    if len(words) != 3 or any(w not in _SPACE_AXIS_SIGN for w in words):
        raise CTReadError(f"{source}: unsupported NRRD space {space!r} (expected e.g. 'left-posterior-superior')")
    return np.diag([_SPACE_AXIS_SIGN[w] for w in words] + [1.0])


def _load_nrrd(path: Path) -> CTVolume:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as exc:
        raise CTReadError(f"{str(path)!r} is not a readable NRRD file: {exc}") from None
    data = _squeeze_to_3d(np.asarray(data), str(path))
    directions = header.get("space directions")
    meta: dict[str, Any] = {"format": "nrrd", "source": str(path), "slice_thickness_mm": None}
    space_from_voxel = np.eye(4)
    if directions is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in directions if d is not None and np.all(np.isfinite(np.asarray(d, dtype=np.float64)))]
        if len(rows) != 3:
            raise CTReadError(f"{str(path)!r}: 'space directions' must give 3 spatial axes, got {directions!r}")
        space_from_voxel[:3, :3] = np.stack(rows, axis=1)
    else:
        spacings = header.get("spacings")
        space_from_voxel[:3, :3] = np.diag(np.asarray(spacings, dtype=np.float64)[:3]) if spacings is not None else np.eye(3)
        meta["orientation_assumed"] = "no 'space directions' in the header: axes taken as RAS"
    origin = header.get("space origin")
    if origin is not None:
        space_from_voxel[:3, 3] = np.asarray(origin, dtype=np.float64)
    world_from_voxel = _ras_from_nrrd_space(header.get("space"), str(path)) @ space_from_voxel
    hu = np.ascontiguousarray(data, dtype=np.float32)
    _check_volume(hu, world_from_voxel, str(path))
    return CTVolume(hu=hu, world_from_voxel=world_from_voxel, meta=meta)


def _load_itk(path: Path) -> CTVolume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise CTReadError(f"{str(path)!r} is not a readable MHA/MHD file: {str(exc).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(
            f"{str(path)!r}: expected a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    # SimpleITK arrays are indexed [z, y, x]; transpose so that a[i, j, k] has i = ITK index 0.
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps_from_voxel = np.eye(4)
    lps_from_voxel[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps_from_voxel[:3, 3] = image.GetOrigin()
    world_from_voxel = LPS_FROM_RAS @ lps_from_voxel
    hu = np.ascontiguousarray(data, dtype=np.float32)
    _check_volume(hu, world_from_voxel, str(path))
    return CTVolume(hu=hu, world_from_voxel=world_from_voxel, meta={"format": "itk", "source": str(path), "slice_thickness_mm": None})


def load_ct(path: str | os.PathLike) -> CTVolume:
    """Load a CT volume in HU with its RAS+ mm affine.

    Args:
        path: a folder holding one DICOM series, or a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr`` or
            ``.mha``/``.mhd`` file.

    Returns:
        :class:`CTVolume` with ``hu`` float32 ``(I, J, K)`` and ``world_from_voxel`` float64 ``(4, 4)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CTReadError: (a ``ValueError``) unreadable, truncated or non-DICOM files, mixed series,
            missing pixel data, inconsistent slice spacing, 2-D images, NaN voxels, unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CT path {str(path)!r} does not exist")
    if path.is_dir():
        return _load_dicom_series(path)
    kind = volume_format(path)
    if kind == "nifti":
        return _load_nifti(path)
    if kind == "nrrd":
        return _load_nrrd(path)
    if kind == "itk":
        return _load_itk(path)
    if path.suffix.lower() == ".dcm" or is_dicom_file(path):
        raise CTReadError(
            f"{str(path)!r} is a single DICOM file; pass the folder holding the whole series instead"
        )
    raise CTReadError(
        f"{str(path)!r}: unknown CT format; expected a DICOM series folder or a file ending in "
        f"{', '.join(_FILE_FORMATS)}"
    )


def load_volume_tensor(path: str | os.PathLike):
    """Load a volume for the projector: voxel values as stored, no HU conversion.

    The values are those of :func:`load_ct` (after the file's own scaling, e.g. DICOM rescale
    slope/intercept or NIfTI ``scl_slope``), so a label map or a μ volume comes back unchanged.

    Args:
        path: any path accepted by :func:`load_ct`.

    Returns:
        ``(volume, world_from_voxel)``: float32 tensors of shape ``(1, 1, I, J, K)`` and
        ``(1, 4, 4)`` (voxel centre index -> world RAS+ mm).
    """
    import torch

    ct = load_ct(path)
    volume = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))[None, None]
    affine = torch.from_numpy(ct.world_from_voxel.astype(np.float32))[None]
    return volume, affine


# ------------------------------------------------------------------------------------------- writing
def write_nifti_array(array: np.ndarray, world_from_voxel: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 3-D array as NIfTI-1 atomically (temp file in the same folder, then ``os.replace``).

    Args:
        array: ``(I, J, K)`` numbers (bool arrays are written as uint8).
        world_from_voxel: ``(4, 4)`` affine, voxel centre -> world RAS+ mm (stored as sform and qform).
        path: output file ending in ``.nii`` or ``.nii.gz`` (gzip-compressed); parents are created.

    Returns:
        The path written.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI path must end with '.nii' or '.nii.gz', got {str(path)!r}")
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D (I, J, K), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = np.asarray(world_from_voxel, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"world_from_voxel must be a finite (4, 4) affine, got {affine!r}")
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"  # nibabel compresses by the name
    return atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=f".tmp{suffix}")


def save_nifti(volume: CTVolume, path: str | os.PathLike) -> Path:
    """Write ``volume.hu`` (float32 HU) and its affine to a NIfTI file atomically.

    Args:
        volume: the CT to write.
        path: output ``.nii`` or ``.nii.gz`` path.

    Returns:
        The path written.
    """
    if not isinstance(volume, CTVolume):
        raise ValueError(f"volume must be a CTVolume, got {type(volume).__name__}")
    return write_nifti_array(np.asarray(volume.hu, dtype=np.float32), volume.world_from_voxel, path)
