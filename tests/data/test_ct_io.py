"""CT input/output: DICOM series (against the DICOM standard's geometry and SimpleITK), NIfTI, NRRD, MHA."""

from __future__ import annotations

import math

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from support.dicom_series import write_axial_series, write_slice
from pydicom.uid import generate_uid

from xraysyn.data.ct_io import (
    CTReadError,
    CTVolume,
    load_ct,
    load_volume_tensor,
    save_nifti,
    write_nifti_array,
)

AIR_HU = -1000.0


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def _blank_slices(count=4, rows=6, cols=5) -> np.ndarray:
    return np.full((count, rows, cols), AIR_HU)


# ------------------------------------------------------------------------------------------- DICOM
def test_dicom_bright_voxel_lands_at_its_ras_position(tmp_path):
    """A voxel placed patient-left, anterior and superior (LPS x > 0, y < 0, z > 0) must come back at
    RAS x < 0 (left), y > 0 (anterior), z > 0 (superior) with exactly the expected millimetres."""
    slices = _blank_slices()
    row, col, k = 2, 3, 2
    slices[k, row, col] = 1000.0
    origin_lps, spacing_rc, step = (5.0, -20.0, 30.0), (0.8, 0.7), 1.25
    write_axial_series(tmp_path / "s", slices, origin_lps=origin_lps, pixel_spacing=spacing_rc, slice_step=step)
    ct = load_ct(tmp_path / "s")
    # DICOM PS3.3 C.7.6.2.1.1: position = IPP + col * spacing[1] * row_cosine + row * spacing[0] * col_cosine.
    expected_lps = np.array([origin_lps[0] + col * spacing_rc[1], origin_lps[1] + row * spacing_rc[0], origin_lps[2] + k * step])
    expected_ras = expected_lps * np.array([-1.0, -1.0, 1.0])
    assert expected_ras[0] < 0 and expected_ras[1] > 0 and expected_ras[2] > 0  # left, anterior, superior
    bright = np.unravel_index(np.argmax(ct.hu), ct.hu.shape)
    np.testing.assert_allclose(_world(ct.world_from_voxel, bright), expected_ras, atol=1e-6)
    assert ct.hu[bright] == pytest.approx(1000.0)
    assert ct.shape == (5, 6, 4)  # (columns, rows, slices)
    np.testing.assert_allclose(ct.spacing_mm, (0.7, 0.8, 1.25))
    assert ct.meta["slice_thickness_mm"] == pytest.approx(1.25)
    assert ct.hu.dtype == np.float32 and ct.world_from_voxel.dtype == np.float64


def test_dicom_rescale_slope_intercept(tmp_path):
    rng = np.random.default_rng(1)
    slices = np.rint(rng.uniform(-1000, 2000, size=(3, 4, 4)) / 2) * 2  # representable with slope 2
    write_axial_series(tmp_path / "s", slices, slope=2.0, intercept=-1000.0)
    ct = load_ct(tmp_path / "s")
    np.testing.assert_allclose(ct.hu, slices.transpose(2, 1, 0), atol=1e-3)


def test_dicom_oblique_series_matches_simpleitk(tmp_path):
    """An oblique series read by xraysyn agrees with SimpleITK/GDCM voxel by voxel and point by point."""
    angle = math.radians(20.0)
    row_cosine = np.array([math.cos(angle), math.sin(angle), 0.0])
    col_cosine = np.array([0.0, 0.0, -1.0])  # coronal-ish slices, rows going inferior
    normal = np.cross(row_cosine, col_cosine)
    origin = np.array([-3.0, 7.0, 11.0])
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 3000, size=(5, 4, 6)).astype(np.int16)
    uid = generate_uid()
    for k in rng.permutation(5):
        write_slice(tmp_path / f"x{k:02d}.dcm", stored[k], position_lps=origin + k * 1.5 * normal,
                    row_cosine=row_cosine, col_cosine=col_cosine, pixel_spacing=(0.9, 0.6), series_uid=uid,
                    slope=1.0, intercept=-1024.0)
    ct = load_ct(tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    reference = sitk.GetArrayFromImage(image).astype(np.float32)  # [k, j, i]
    np.testing.assert_allclose(ct.hu, reference.transpose(2, 1, 0))
    for ijk in [(0, 0, 0), (5, 3, 4), (2, 1, 3)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(_world(ct.world_from_voxel, ijk), lps * [-1, -1, 1], atol=1e-4)


def test_corrupt_dicom_file_is_named(tmp_path):
    paths = write_axial_series(tmp_path / "s", _blank_slices())
    paths[1].write_bytes(paths[1].read_bytes()[:300])  # truncated mid-header
    with pytest.raises(CTReadError, match=f"{paths[1].name}.*truncated"):
        load_ct(tmp_path / "s")


def test_truncated_pixel_data_is_named(tmp_path):
    paths = write_axial_series(tmp_path / "s", _blank_slices(rows=16, cols=16))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])
    with pytest.raises(CTReadError, match=f"{paths[2].name}.*pixel data"):
        load_ct(tmp_path / "s")


def test_non_dicom_file_in_series_is_named(tmp_path):
    write_axial_series(tmp_path / "s", _blank_slices())
    (tmp_path / "s" / "notes.bin").write_bytes(b"hello, not a DICOM file" * 20)
    (tmp_path / "s" / "annotation.xml").write_text("<xml/>")  # LIDC-style sidecar: ignored
    with pytest.raises(CTReadError, match="notes.bin.*not a DICOM"):
        load_ct(tmp_path / "s")


def test_mixed_series_error_lists_both(tmp_path):
    uid_a, uid_b = generate_uid(), generate_uid()
    write_axial_series(tmp_path / "s", _blank_slices(), series_uid=uid_a, name_prefix="A")
    write_axial_series(tmp_path / "s", _blank_slices(), series_uid=uid_b, name_prefix="B")
    with pytest.raises(CTReadError, match="mixes 2 DICOM series") as info:
        load_ct(tmp_path / "s")
    assert uid_a in str(info.value) and uid_b in str(info.value)


def test_missing_pixel_data(tmp_path):
    uid = generate_uid()
    for k in range(3):
        write_slice(tmp_path / f"{k}.dcm", np.zeros((4, 4), np.int16), position_lps=(0, 0, k), series_uid=uid,
                    include_pixels=(k != 1))
    with pytest.raises(CTReadError, match="1.dcm.*no pixel data"):
        load_ct(tmp_path)


def test_missing_slice_is_inconsistent_spacing(tmp_path):
    paths = write_axial_series(tmp_path / "s", _blank_slices(count=6), shuffle_seed=None)
    paths[3].unlink()
    with pytest.raises(CTReadError, match="inconsistent slice spacing"):
        load_ct(tmp_path / "s")


def test_single_slice_is_a_2d_image(tmp_path):
    paths = write_axial_series(tmp_path / "s", _blank_slices(count=1))
    with pytest.raises(CTReadError, match="2-D image"):
        load_ct(tmp_path / "s")
    with pytest.raises(CTReadError, match="single DICOM file"):
        load_ct(paths[0])


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(CTReadError, match="no DICOM"):
        load_ct(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_ct(tmp_path / "nope.nii.gz")


# -------------------------------------------------------------------------------- other file formats
def _oblique_affine() -> np.ndarray:
    angle = math.radians(15.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.0])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def test_nifti_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1000, 1500, size=(5, 6, 7)).astype(np.float32)
    affine = _oblique_affine()
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "a.nii.gz")
    ct = load_ct(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(ct.hu, hu)
    np.testing.assert_allclose(ct.world_from_voxel, affine, atol=1e-5)
    out = save_nifti(ct, tmp_path / "sub" / "b.nii.gz")
    again = nib.load(out)
    np.testing.assert_array_equal(np.asarray(again.dataobj), hu)
    np.testing.assert_allclose(again.affine, affine, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["b.nii.gz"]  # no temp files left


def test_nifti_bad_inputs(tmp_path):
    hu = np.zeros((4, 4, 4), np.float32)
    hu[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(CTReadError, match="1 voxels are NaN"):
        load_ct(tmp_path / "nan.nii")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(CTReadError, match="2-D image"):
        load_ct(tmp_path / "flat.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CTReadError, match="junk.nii.gz"):
        load_ct(tmp_path / "junk.nii.gz")
    (tmp_path / "vol.xyz").write_bytes(b"??")
    with pytest.raises(CTReadError, match="unknown CT format"):
        load_ct(tmp_path / "vol.xyz")
    ct = CTVolume(hu=np.zeros((2, 2, 2), np.float32), world_from_voxel=np.eye(4))
    with pytest.raises(ValueError, match="must end with"):
        save_nifti(ct, tmp_path / "out.nrrd")
    assert not (tmp_path / "out.nrrd").exists()


def test_nrrd_lps_header(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
    directions = np.array([[0.0, 0.8, 0.0], [-0.6, 0.0, 0.0], [0.0, 0.0, 2.5]])  # rows: axis vectors in LPS mm
    origin = np.array([10.0, -5.0, 100.0])
    header = {"space": "left-posterior-superior", "space directions": directions, "space origin": origin}
    nrrd.write(str(tmp_path / "a.nrrd"), data, header, index_order="F")
    ct = load_ct(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(ct.hu, data.astype(np.float32))
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        # NRRD spec: position = space origin + sum_a index_a * space_direction_a (here LPS).
        lps = origin + directions.T @ np.array(ijk, dtype=float)
        np.testing.assert_allclose(_world(ct.world_from_voxel, ijk), lps * [-1, -1, 1], atol=1e-9)


def test_mha_round_trip_against_simpleitk(tmp_path):
    rng = np.random.default_rng(5)
    array_kji = rng.integers(-1000, 2000, size=(3, 4, 5)).astype(np.int16)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((1.0, 2.0, -3.0))
    angle = math.radians(30.0)
    image.SetDirection((math.cos(angle), 0, math.sin(angle), 0, 1, 0, -math.sin(angle), 0, math.cos(angle)))
    sitk.WriteImage(image, str(tmp_path / "a.mha"))
    ct = load_ct(tmp_path / "a.mha")
    np.testing.assert_array_equal(ct.hu, array_kji.transpose(2, 1, 0).astype(np.float32))
    for ijk in [(0, 0, 0), (4, 3, 2), (2, 1, 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(_world(ct.world_from_voxel, ijk), lps * [-1, -1, 1], atol=1e-9)


def test_load_volume_tensor_and_mask_writer(tmp_path):
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    affine = _oblique_affine()
    write_nifti_array(mask, affine, tmp_path / "m.nii")
    volume, world_from_voxel = load_volume_tensor(tmp_path / "m.nii")
    assert volume.shape == (1, 1, 3, 4, 5) and volume.dtype == torch.float32
    assert world_from_voxel.shape == (1, 4, 4)
    assert volume[0, 0, 1, 2, 3] == 1 and volume.sum() == 1
    np.testing.assert_allclose(world_from_voxel[0].double().numpy(), affine, atol=1e-4)


def test_dicom_without_the_preamble_reads_like_with_it(tmp_path):
    from xraysyn.data.ct_io import is_dicom_file, load_ct

    slices = np.arange(4 * 6 * 5, dtype=np.float64).reshape(4, 6, 5) - 500.0
    paths = write_axial_series(tmp_path / "with", slices, pixel_spacing=(2.0, 2.0), slice_step=2.0)
    (tmp_path / "without").mkdir()
    for path in paths:  # drop the 128-byte preamble and the 'DICM' marker, as older exports do
        (tmp_path / "without" / path.name).write_bytes(path.read_bytes()[132:])
    assert all(is_dicom_file(p) for p in (tmp_path / "without").iterdir())
    with_preamble, without = load_ct(tmp_path / "with"), load_ct(tmp_path / "without")
    np.testing.assert_array_equal(with_preamble.hu, without.hu)
    np.testing.assert_array_equal(with_preamble.world_from_voxel, without.world_from_voxel)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    assert not is_dicom_file(tmp_path / "junk.dcm")


def test_unreadable_inputs_name_the_reason(tmp_path):
    from xraysyn.data.ct_io import CTReadError, load_ct, write_nifti_array

    (tmp_path / "niftis").mkdir()
    write_nifti_array(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "niftis" / "one.nii.gz")
    with pytest.raises(CTReadError, match="volume file, not a DICOM slice: pass the file itself"):
        load_ct(tmp_path / "niftis")
    huge_header = tmp_path / "huge.nii"
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((30000, 30000, 30000))  # a header promising 108 TB of voxels
    huge_header.write_bytes(image.header.binaryblock + b"\0" * 40)
    with pytest.raises(CTReadError, match=r"is not a readable NIfTI file: \S"):
        load_ct(huge_header)
