"""Writes tiny synthetic CT DICOM series for the data tests, straight from the DICOM standard's
geometry (PS3.3 C.7.6.2: pixel (row r, column c) of a slice lies at
``ImagePositionPatient + c * PixelSpacing[1] * row_cosine + r * PixelSpacing[0] * col_cosine``, LPS mm),
independently of xraysyn's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position_lps,
    row_cosine=(1.0, 0.0, 0.0),
    col_cosine=(0.0, 1.0, 0.0),
    pixel_spacing=(1.0, 1.0),
    slice_thickness: float = 1.0,
    series_uid: str,
    slope: float = 1.0,
    intercept: float = -1024.0,
    include_pixels: bool = True,
    description: str = "synthetic",
) -> Path:
    """One CT slice: ``pixels`` is ``(rows, cols)`` stored values (int16); HU = stored * slope + intercept."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImageOrientationPatient = [float(v) for v in (*row_cosine, *col_cosine)]
    ds.ImagePositionPatient = [float(v) for v in position_lps]
    ds.SliceThickness = float(slice_thickness)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if include_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_axial_series(
    folder: Path,
    slices_rc: np.ndarray,
    *,
    origin_lps=(-10.0, -12.0, 30.0),
    pixel_spacing=(0.8, 0.7),
    slice_step: float = 1.25,
    slice_thickness: float | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    shuffle_seed: int | None = 0,
    name_prefix: str = "IM",
) -> list[Path]:
    """Axial series: ``slices_rc[k]`` (rows, cols) are **HU** at ``z = origin_z + k * slice_step``.

    Files are written in a shuffled order with shuffled names so that the loader must sort them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    count = len(slices_rc)
    order = np.arange(count)
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    paths = []
    for file_index, k in enumerate(order):
        stored = np.rint((np.asarray(slices_rc[k], dtype=np.float64) - intercept) / slope).astype(np.int16)
        position = (origin_lps[0], origin_lps[1], origin_lps[2] + k * slice_step)
        paths.append(
            write_slice(
                folder / f"{name_prefix}{file_index:04d}.dcm",
                stored,
                position_lps=position,
                pixel_spacing=pixel_spacing,
                slice_thickness=slice_thickness if slice_thickness is not None else abs(slice_step),
                series_uid=series_uid,
                slope=slope,
                intercept=intercept,
            )
        )
    return paths


def read_back(path: Path):
    return pydicom.dcmread(path)
