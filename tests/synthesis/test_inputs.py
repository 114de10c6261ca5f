"""Input coercion and bad-input recognition of the synthesis pipeline (xraysyn.synthesis.inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.uid import generate_uid

from support.dicom_series import write_slice
from xraysyn.data.phantom import make_chest_phantom
from xraysyn.data.radiograph import Radiograph, RadiographReadError, load_radiograph
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics import drr
from xraysyn.synthesis.inputs import (
    FRONTAL_SCORE_THRESHOLD,
    MIN_SYNTHESIS_SIDE,
    InputImageError,
    as_radiograph,
    check_frontal_chest,
    expand_input_paths,
    frontal_view_score,
    prepare_inputs,
)

SIDE = MIN_SYNTHESIS_SIDE
#: Field of view (mm) of the test phantom and of its simulated detector at the isocenter.
FIELD_OF_VIEW_MM = 384.0


def _ramp(rows: int = SIDE, cols: int = SIDE + 8) -> np.ndarray:
    """A non-constant float64 image with known min (-3) and max (5)."""
    return np.linspace(-3.0, 5.0, rows * cols).reshape(rows, cols)


def _expected(values: np.ndarray) -> np.ndarray:
    """Closed-form min-max normalisation in float64."""
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) / (values.max() - values.min())


@pytest.fixture(scope="module")
def phantom_views() -> dict[str, np.ndarray]:
    """Frontal (azimuth 0) and lateral (azimuth 90) DRRs of a 64³ chest phantom, bright = attenuating."""
    size = 64
    phantom = make_chest_phantom((size,) * 3, seed=0)
    geometry = ConeBeamGeometry(detector_shape=(size, size), pixel_spacing=FIELD_OF_VIEW_MM * 1.2 / size)
    poses = geometry.poses(torch.tensor([0.0, 90.0], dtype=torch.float64), dtype=torch.float32)
    line = drr(torch.from_numpy(phantom.hu)[None, None], torch.from_numpy(phantom.world_from_voxel).float(),
               poses, geometry)
    return {"frontal": line[0, 0].numpy(), "lateral": line[1, 0].numpy()}


# ------------------------------------------------------------------------------------------ arrays accepted
@pytest.mark.parametrize("make", [
    lambda x: x,                                            # (H, W) float64
    lambda x: x[None].astype(np.float32),                   # (1, H, W)
    lambda x: torch.from_numpy(x)[None, None],              # (1, 1, H, W) tensor
    lambda x: torch.from_numpy(x).requires_grad_(True),     # tensor with gradients
    lambda x: np.repeat(x[..., None], 3, axis=-1),          # grayscale stored as RGB
    lambda x: np.concatenate([np.repeat(x[..., None], 3, -1), np.zeros(x.shape + (1,))], -1),  # RGBA
    lambda x: torch.from_numpy(x)[None].expand(3, *x.shape),  # (3, H, W) torch layout
], ids=["hw", "1hw", "11hw_tensor", "grad_tensor", "hw3", "hw4", "3hw_tensor"])
def test_arrays_are_min_max_normalised(make):
    values = _ramp()
    radiograph = as_radiograph(make(values), name="array #2")
    assert isinstance(radiograph, Radiograph)
    assert radiograph.image.dtype == np.float32 and radiograph.image.shape == values.shape
    np.testing.assert_allclose(radiograph.image, _expected(values), atol=1e-6)
    assert radiograph.meta == {"source": "array #2", "format": "array"}
    assert radiograph.pixel_spacing_mm is None


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int64, np.float16])
def test_any_real_numpy_dtype(dtype):
    values = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) % 200).astype(dtype)
    radiograph = as_radiograph(values)
    np.testing.assert_allclose(radiograph.image, _expected(values.astype(np.float64)), atol=1e-6)
    assert radiograph.meta["source"] == "array"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int32])
def test_any_real_tensor_dtype(dtype):
    values = (torch.arange(SIDE * SIDE).reshape(SIDE, SIDE) % 100).to(dtype)
    radiograph = as_radiograph(values)
    np.testing.assert_allclose(radiograph.image, _expected(values.float().numpy()), atol=1e-6)


# ------------------------------------------------------------------------------------------ arrays refused
@pytest.mark.parametrize("value, fragment", [
    (np.zeros(SIDE), "not one radiograph"),
    (np.zeros((2, SIDE, SIDE)), "not one radiograph"),
    (np.zeros((1, 2, SIDE, SIDE)), "not one radiograph"),
    (np.zeros((1, 1, 1, SIDE, SIDE)), "not one radiograph"),
    (np.random.default_rng(0).random((SIDE, SIDE, 3)), "differing channels"),
    (torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)), "differing channels"),
    (np.ones((SIDE, SIDE), dtype=bool), "dtype bool"),
    (torch.ones(SIDE, SIDE, dtype=torch.bool), "dtype torch.bool"),
    (np.ones((SIDE, SIDE), dtype=np.complex64), "dtype complex64"),
    (torch.ones(SIDE, SIDE, dtype=torch.complex64), "dtype torch.complex64"),
    (np.full((SIDE, SIDE), "a"), "is not an image"),
    (np.full((SIDE, SIDE), 7.0), "constant"),
    (_ramp(SIDE - 1, 200), "too small"),
    (_ramp(200, SIDE - 1), "too small"),
])
def test_bad_arrays_are_refused_naming_the_input(value, fragment):
    with pytest.raises(InputImageError, match=fragment) as info:
        as_radiograph(value, name="array #3")
    assert str(info.value).startswith("array #3: ")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    values = _ramp()
    values[5, 7] = bad
    with pytest.raises(InputImageError, match="array #0: image contains NaN or infinite"):
        as_radiograph(values, name="array #0")


def test_other_types_are_refused():
    with pytest.raises(InputImageError, match="list is not a radiograph"):
        as_radiograph([[1.0, 2.0]])


def test_error_is_a_value_error():
    assert issubclass(InputImageError, ValueError)


# ------------------------------------------------------------------------------------------ Radiograph, paths
def test_radiograph_is_returned_as_it_is():
    radiograph = Radiograph(image=_expected(_ramp()).astype(np.float32), meta={"source": "scan.png"})
    assert as_radiograph(radiograph) is radiograph


def test_small_radiograph_is_refused_with_its_source():
    radiograph = Radiograph(image=np.eye(8, dtype=np.float32), meta={"source": "tiny.png"})
    with pytest.raises(InputImageError, match="^tiny.png: .*too small"):
        as_radiograph(radiograph)


def _write_png(path, values: np.ndarray):
    Image.fromarray((255 * _expected(values)).round().astype(np.uint8)).save(path)
    return path


def test_path_is_read_like_load_radiograph(tmp_path):
    path = _write_png(tmp_path / "scan.png", _ramp())
    radiograph = as_radiograph(path)
    np.testing.assert_array_equal(radiograph.image, load_radiograph(path).image)
    assert radiograph.meta["source"] == str(path)
    assert as_radiograph(str(path)).image.shape == _ramp().shape


def test_small_file_is_refused(tmp_path):
    path = _write_png(tmp_path / "small.png", _ramp(16, 16))
    with pytest.raises(InputImageError, match="small.png: .*too small"):
        as_radiograph(path)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(InputImageError, match="nothing.png: file does not exist"):
        as_radiograph(tmp_path / "nothing.png")
    with pytest.raises(InputImageError, match="is a folder"):
        as_radiograph(tmp_path)


def test_read_errors_become_input_errors(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(InputImageError, match="broken.png") as info:
        as_radiograph(path)
    assert isinstance(info.value.__cause__, RadiographReadError)


def test_ct_slice_is_refused_with_its_modality(tmp_path):
    path = write_slice(tmp_path / "slice.dcm", np.arange(SIDE * SIDE, dtype=np.int16).reshape(SIDE, SIDE),
                       position_lps=(0.0, 0.0, 0.0), series_uid=generate_uid())
    with pytest.raises(InputImageError, match=r"slice.dcm: DICOM Modality 'CT' is not a projection radiograph"):
        as_radiograph(path)


# ------------------------------------------------------------------------------------------ folders
def test_folder_expansion(tmp_path):
    values = _ramp()
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    _write_png(tmp_path / "b.png", values)
    _write_png(tmp_path / "sub" / "a.PNG", values)
    _write_png(tmp_path / ".hidden.png", values)
    _write_png(tmp_path / ".git" / "x.png", values)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no suffix and no DICOM")
    pixels = np.zeros((SIDE, SIDE), dtype=np.int16)
    write_slice(tmp_path / "IM0001", pixels, position_lps=(0, 0, 0), series_uid=generate_uid())
    write_slice(tmp_path / "1.2.840.5", pixels, position_lps=(0, 0, 1), series_uid=generate_uid())
    single = _write_png(tmp_path / "single.png", values)
    expanded = expand_input_paths([single, tmp_path])
    assert expanded[0] == single
    assert expanded[1:] == sorted([tmp_path / "b.png", tmp_path / "sub" / "a.PNG", tmp_path / "IM0001",
                                   tmp_path / "1.2.840.5", single])
    assert expand_input_paths(single) == [single]


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputImageError, match="empty: folder holds no radiograph"):
        expand_input_paths([tmp_path / "empty"])
    with pytest.raises(InputImageError, match="gone: does not exist"):
        expand_input_paths([tmp_path / "gone"])


# ------------------------------------------------------------------------------------------ the view check
def test_frontal_accepted_lateral_refused(phantom_views):
    frontal, lateral = phantom_views["frontal"], phantom_views["lateral"]
    assert frontal_view_score(frontal) > FRONTAL_SCORE_THRESHOLD
    assert frontal_view_score(lateral) < FRONTAL_SCORE_THRESHOLD
    check_frontal_chest(as_radiograph(frontal, name="front"))
    with pytest.raises(InputImageError, match="^side view: does not look like a frontal"):
        check_frontal_chest(as_radiograph(lateral), name="side view")


def test_inverted_frontal_is_refused(phantom_views):
    with pytest.raises(InputImageError, match="array: does not look like a frontal"):
        check_frontal_chest(as_radiograph(-phantom_views["frontal"]))


def test_score_ignores_the_display_transform(phantom_views):
    """Ranks: any strictly increasing display map gives the same score (up to float rounding)."""
    image = _expected(phantom_views["frontal"])
    score = frontal_view_score(image)
    for display in (np.sqrt, lambda x: 1.0 - np.exp(-3.0 * x), lambda x: 7.0 * x - 2.0):
        assert frontal_view_score(display(image)) == pytest.approx(score, abs=1e-6)
    assert frontal_view_score(torch.from_numpy(image)) == pytest.approx(score, abs=1e-12)


def test_score_needs_a_finite_2d_image():
    with pytest.raises(ValueError, match="finite 2-D"):
        frontal_view_score(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="finite 2-D"):
        frontal_view_score(np.full((8, 8), np.nan))


# ------------------------------------------------------------------------------------------ batches
def test_prepare_inputs_goes_on_past_bad_inputs(tmp_path, phantom_views):
    frontal = phantom_views["frontal"]
    folder = tmp_path / "folder"
    folder.mkdir()
    good_file = _write_png(folder / "front.png", frontal)
    (tmp_path / "nothing").mkdir()
    items = [frontal, np.zeros((SIDE, SIDE)), folder, tmp_path / "missing.png", tmp_path / "nothing",
             phantom_views["lateral"]]
    results = prepare_inputs(items)
    names = [name for name, _ in results]
    assert names == ["array #0", "array #1", str(good_file), str(tmp_path / "missing.png"),
                     str(tmp_path / "nothing"), "array #5"]
    kinds = [type(value).__name__ for _, value in results]
    assert kinds == ["Radiograph", "InputImageError", "Radiograph", "InputImageError", "InputImageError",
                     "InputImageError"]
    for name, value in results:
        if isinstance(value, InputImageError):
            assert str(value).startswith(name + ": ")
    assert "constant" in str(results[1][1]) and "frontal" in str(results[5][1])


def test_prepare_inputs_without_view_check_and_single_item(phantom_views):
    lateral = phantom_views["lateral"]
    ((name, value),) = prepare_inputs(lateral, check_view=False)
    assert name == "array #0" and isinstance(value, Radiograph)
    ((_, refused),) = prepare_inputs([lateral])
    assert isinstance(refused, InputImageError)


def test_a_folder_whose_files_all_fail_alike_is_one_error(tmp_path):
    """A CT series given as radiographs: one message for the folder, not one per slice."""
    from support.dicom_cr import write_cr

    series = tmp_path / "ct_series"
    series.mkdir()
    for i in range(3):
        write_cr(series / f"slice{i}.dcm", np.random.default_rng(i).uniform(size=(70, 70)), extra={"Modality": "CT"})
    (entry,) = prepare_inputs([series])
    assert entry[0] == str(series) and isinstance(entry[1], InputImageError)
    assert str(entry[1]).startswith(f"{series}: all 3 files:") and "'CT'" in str(entry[1])
