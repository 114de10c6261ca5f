"""XraySyn end to end on CPU: tiny random exports (shapes, loading, errors, suppression identities) and the shipped
weights (the input view reproduces the input, orientation is kept, suppression removes bone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.tiny_xraysyn import prior_export, refine_export, simulated_frontal, write_export
from xraysyn.data.radiograph import Radiograph
from xraysyn.metrics import psnr
from xraysyn.synthesis.inputs import InputImageError
from xraysyn.synthesis.model import XraySyn, pretrained_path
from xraysyn.train.export import ExportError

#: Input-view PSNR floors (dB; windowed −log I against the windowed input) of the shipped weights on simulated
#: phantom radiographs, measured 2026-12-07: 2DRN 14.2 / 15.2 dB, the 3DPN's own view 25.3 / 29.0 dB (seeds 5, 9;
#: the 2DRN was trained on real radiographs only, whose display differs from the simulated one).
SHIPPED_INPUT_VIEW_PSNR_FLOOR_DB = 13.0
SHIPPED_3DPN_INPUT_VIEW_PSNR_FLOOR_DB = 22.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> XraySyn:
    path = write_export(refine_export(), tmp_path_factory.mktemp("tiny") / "tiny.pt")
    return XraySyn.from_pretrained(path)


@pytest.fixture(scope="module")
def shipped() -> XraySyn:
    return XraySyn.from_pretrained()


@pytest.fixture(scope="module")
def frontal() -> np.ndarray:
    return simulated_frontal(128, seed=5)


def test_synthesize_shapes_table(tiny, frontal):
    s, d = tiny.image_size, tiny.prior.volume_size
    result = tiny.synthesize([frontal, frontal[::2, ::2].copy()], [-9.0, 0.0, 9.0], [0.0, 2.0, -2.0])
    assert (s, d) == (32, 16)
    expected = {"views": (2, 3, s, s), "bone_thickness": (2, 3, s, s), "tissue_thickness": (2, 3, s, s),
                "unrefined": (2, 3, s, s), "input_view": (2, s, s), "input_thickness": (2, 2, s, s),
                "input_display": (2, s, s), "input_crop": (2, s, s), "ct_hu": (2, d, d, d),
                "bone_probability": (2, d, d, d), "world_from_voxel": (4, 4)}
    assert {k: tuple(getattr(result, k).shape) for k in expected} == expected
    assert result.names == ["array #0", "array #1"]
    assert result.elevation_deg.tolist() == [0.0, 2.0, -2.0]
    assert 0.0 <= float(result.views.min()) and float(result.views.max()) <= 1.0
    assert float(result.bone_thickness.min()) >= 0.0 and result.bone_mask.dtype == torch.bool
    assert len(result.crops) == 2 and result.crops[1].crop_rows == 64


def test_batching_does_not_change_the_results(tiny, frontal):
    images = [frontal, np.ascontiguousarray(frontal.T), np.ascontiguousarray(frontal[::-1])]
    together = tiny.synthesize(images, [-4.0, 4.0], check_view=False, batch_size=3)
    alone = tiny.synthesize(images, [-4.0, 4.0], check_view=False, batch_size=1)
    torch.testing.assert_close(together.views, alone.views, rtol=0, atol=1e-5)
    torch.testing.assert_close(together.ct_hu, alone.ct_hu, rtol=0, atol=1e-3)


def test_refining_views_in_passes_does_not_change_the_results(tiny, frontal, monkeypatch):
    """The CPU's 2DRN passes (1 view, 2 views, every view at once) give the same views and thickness maps."""
    from xraysyn.synthesis import model as model_module

    azimuths = [-9.0, -3.0, 3.0, 9.0]  # + the input view: 5 maps per radiograph, split unevenly into passes of 2
    h = tiny.refine.config.thickness_size
    results = []
    for views_per_pass in (1, 2, 10**6):
        monkeypatch.setattr(model_module, "CPU_REFINE_PIXELS_PER_PASS", views_per_pass * h * h)
        calls = []
        monkeypatch.setattr(tiny.refine, "forward", _counting(tiny.refine.forward, calls))
        results.append(tiny.synthesize([frontal, frontal.T.copy()], azimuths, check_view=False, batch_size=2))
        assert calls == ([1] * 10 if views_per_pass == 1 else [2, 2, 2, 2, 2] if views_per_pass == 2 else [10])
    for other in results[1:]:
        torch.testing.assert_close(other.views, results[0].views, rtol=0, atol=1e-5)
        torch.testing.assert_close(other.bone_thickness, results[0].bone_thickness, rtol=1e-5, atol=1e-5)


def test_view_progress_groups_the_views_and_runs_the_3dpn_once(tiny, frontal, monkeypatch):
    from xraysyn.synthesis import model as model_module

    monkeypatch.setattr(model_module, "VIEWS_PER_PROGRESS_STEP", 3)
    azimuths = [-9.0, -4.5, -1.0, 1.0, 4.5, 9.0]  # + the input view: 7 views, groups of 3, 3 and 1
    elevations = [0.0, 2.0, -2.0, 0.0, 3.0, -3.0]
    whole = tiny.synthesize([frontal, frontal.T.copy()], azimuths, elevations, check_view=False, batch_size=2)
    estimates, reported = [], []
    estimate = tiny._estimate
    monkeypatch.setattr(tiny, "_estimate", lambda crops: estimates.append(crops.shape[0]) or estimate(crops))
    grouped = tiny.synthesize([frontal, frontal.T.copy()], azimuths, elevations, check_view=False, batch_size=2,
                              view_progress=lambda done, total: reported.append((done, total)))
    assert estimates == [2] and reported == [(3, 7), (6, 7), (7, 7)]
    for key in ("views", "unrefined", "bone_thickness", "tissue_thickness", "view_window", "input_view"):
        torch.testing.assert_close(getattr(grouped, key), getattr(whole, key), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grouped.elevation_deg, whole.elevation_deg, rtol=0, atol=0)

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        tiny.synthesize(frontal, azimuths, check_view=False, view_progress=stop)


def _counting(forward, calls):
    def counted(thickness_ct, radiograph=None):
        calls.append(thickness_ct.shape[0])
        return forward(thickness_ct, radiograph)
    return counted


def test_inputs_of_every_kind_give_the_same_result(tiny, frontal, tmp_path):
    from PIL import Image

    path = tmp_path / "frontal.png"
    Image.fromarray((frontal * 65535).round().astype(np.uint16)).save(path)
    kinds = [str(path), Radiograph(frontal), frontal, torch.from_numpy(frontal), torch.from_numpy(frontal)[None, None]]
    views = [tiny.synthesize(item, [3.0]).views for item in kinds]
    for other in views[1:]:
        torch.testing.assert_close(other, views[0], rtol=0, atol=2e-4)  # the PNG is quantised to 16 bits


def test_bad_arguments(tiny, frontal):
    with pytest.raises(ValueError, match="azimuth_deg must be finite"):
        tiny.synthesize(frontal, [float("nan")])
    with pytest.raises(ValueError, match="elevation_deg has 2 values for 3 azimuths"):
        tiny.synthesize(frontal, [1.0, 2.0, 3.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="batch_size"):
        tiny.synthesize(frontal, 0.0, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        tiny.synthesize(frontal, 0.0, batch_size=True)
    with pytest.raises(ValueError, match="strength must be a number in"):
        tiny.suppress_bones(frontal, 1.5)
    with pytest.raises(InputImageError, match="constant"):
        tiny.synthesize(np.ones((128, 128), np.float32), 0.0)
    with pytest.raises(InputImageError, match="frontal"):
        tiny.synthesize(simulated_frontal(128, seed=5, azimuth_deg=90.0), 0.0)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ExportError, match="'nope' is neither a model file nor the name of shipped weights \\(shipped: cpu64\\)"):
        XraySyn.from_pretrained("nope")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ExportError, match="not an xraysyn model file"):
        XraySyn.from_pretrained(foreign)
    damaged = refine_export()
    damaged["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in damaged["state_dict"].items()}
    with pytest.raises(ExportError, match="do not match their SHA-256"):
        XraySyn.from_pretrained(write_export(damaged, tmp_path / "damaged.pt"))
    future = {**refine_export(), "format": "xraysyn-model-99", "xraysyn_version": "9.0"}
    with pytest.raises(ExportError, match="has format 'xraysyn-model-99', made by xraysyn 9.0"):
        XraySyn.from_pretrained(write_export(future, tmp_path / "future.pt"))
    baseline = {**prior_export(), "stage": "x2ct", "model_class": "FrontalX2CT"}
    with pytest.raises(ExportError, match="evaluate simulated"):
        XraySyn.from_pretrained(write_export(baseline, tmp_path / "x2ct.pt"))
    with pytest.raises(ExportError, match="without its 3DPN"):
        XraySyn.from_pretrained(write_export(refine_export(embed=False), tmp_path / "bare.pt"))


def test_stage2_export_without_embedded_prior_takes_it_by_path(tmp_path, frontal):
    from xraysyn.train.export import file_sha256

    prior = write_export(prior_export(), tmp_path / "prior.pt")
    bare = refine_export(embed=False)
    bare["prior"] = {"path": str(prior), "file_sha256": file_sha256(prior)}
    model = XraySyn.from_pretrained(write_export(bare, tmp_path / "bare.pt"))
    embedded = XraySyn.from_pretrained(write_export(refine_export(), tmp_path / "embedded.pt"))
    torch.testing.assert_close(model.synthesize(frontal, 2.0).views, embedded.synthesize(frontal, 2.0).views)
    other = write_export(prior_export(seed=7), tmp_path / "other.pt")
    with pytest.raises(ExportError, match="not the one"):
        XraySyn.from_pretrained(tmp_path / "bare.pt", prior=other)


def test_a_3dpn_export_alone_gives_the_3dpn_views(tmp_path, frontal):
    model = XraySyn.from_pretrained(write_export(prior_export(), tmp_path / "prior.pt"))
    assert model.refine is None and model.name == "3DPN" and model.image_size == 16
    result = model.synthesize(frontal, [-5.0, 5.0])
    assert not result.refined
    torch.testing.assert_close(result.views, result.unrefined)


def test_suppression_at_strength_zero_is_the_input_and_keeps_full_resolution(tiny, frontal):
    wide = np.zeros((150, 200), np.float32)  # the centre crop is 150², the 25 columns each side stay as they are
    wide[:, 25:175] = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(frontal)[None, None], size=(150, 150),
                                                                  mode="bilinear", align_corners=False)[0, 0])
    wide[:, :25] = np.linspace(0, 0.3, 25)[None]
    none = tiny.suppress_bones(wide, 0.0)[0]
    assert none.suppressed.shape == (150, 200) and none.thickness.shape == (2, 150, 150)
    np.testing.assert_array_equal(none.suppressed, none.original)
    full = tiny.suppress_bones(wide, 1.0)[0]
    np.testing.assert_array_equal(full.suppressed[:, :25], full.original[:, :25])
    np.testing.assert_array_equal(full.suppressed[:, 175:], full.original[:, 175:])
    assert float(np.abs(full.suppressed[:, 25:175] - full.original[:, 25:175]).max()) > 0
    np.testing.assert_allclose(full.bone_image, full.original - full.suppressed, atol=1e-7)


def test_suppressed_views_follow_algorithm_1(tiny, frontal):
    """Bone-suppressed novel views: strength 0 gives the views; strength 0.7 equals Algorithm 1 (float64
    suppress_bone on each view's own display image and thickness maps) through the unsuppressed view's window;
    pixels without bone are unchanged."""
    import dataclasses

    from xraysyn.data.input_domain import WINDOW_HIGH_FRACTION, WINDOW_LOW_FRACTION
    from xraysyn.physics import radiograph_from_thickness
    from xraysyn.physics.suppression import suppress_bone

    result = tiny.synthesize([frontal, frontal.T.copy()], [-9.0, 0.0, 9.0], check_view=False)
    torch.testing.assert_close(result.suppressed_views(0.0), result.views, rtol=0, atol=1e-4)
    bone = result.bone_thickness.clamp_min(0.0)
    bone[..., :8, :] = 0.0  # a band without bone
    result = dataclasses.replace(result, bone_thickness=bone)
    ours = result.suppressed_views(0.7)
    n, v, s, _ = ours.shape
    thickness = torch.stack([result.bone_thickness, result.tissue_thickness], dim=2).reshape(n * v, 2, s, s).double()
    before = radiograph_from_thickness(thickness)
    after = suppress_bone(before.image, thickness, factor=0.7).suppressed_atten
    line_after = -torch.log(after).reshape(n * v, -1)
    low, high = result.view_window.reshape(n * v, 2, 1).unbind(1)  # the window of the synthesised views
    reference = ((line_after - low) / (high - low)).clamp(0, 1).reshape(n, v, s, s)
    torch.testing.assert_close(ours, reference.float(), rtol=0, atol=1e-5)
    # That window is the views' own: the 1 % and 99 % quantiles of their −log I.
    original = tiny.synthesize([frontal], [-9.0, 9.0], check_view=False)
    line = radiograph_from_thickness(torch.stack([original.bone_thickness, original.tissue_thickness], dim=2)
                                     .reshape(2, 2, s, s).double()).line_integral.reshape(2, -1)
    expected = torch.quantile(line, torch.tensor([WINDOW_LOW_FRACTION, WINDOW_HIGH_FRACTION],
                                                 dtype=torch.float64), dim=1).T
    torch.testing.assert_close(original.view_window[0], expected, rtol=1e-4, atol=1e-4)
    no_bone = result.bone_thickness == 0
    assert 0 < int(no_bone.sum()) < no_bone.numel()
    torch.testing.assert_close(ours[no_bone], result.suppressed_views(0.0)[no_bone], rtol=0, atol=0)
    removed = (result.suppressed_views(0.0) - ours)[~no_bone]  # bone removed: less attenuation where it was
    assert float(removed.min()) >= 0 and float(removed.mean()) > 0
    with pytest.raises(ValueError, match="strength"):
        result.suppressed_views(1.5)


def _bone_energy(image: np.ndarray, bone_thickness: np.ndarray) -> float:
    """The image's component along the bone map (zero-mean inner product): what bone contributes."""
    image, bone = image - image.mean(), bone_thickness - bone_thickness.mean()
    return float((image * bone).sum() / np.sqrt((bone * bone).sum()))


def test_shipped_weights_reproduce_the_input_view(shipped, frontal):
    result = shipped.synthesize(frontal, [0.0])
    reference = result.input_display[:, None].double()
    assert float(psnr(result.input_view[:, None].double(), reference, 1.0)[0]) > SHIPPED_INPUT_VIEW_PSNR_FLOOR_DB
    assert float(psnr(result.unrefined[:, :1].double(), reference, 1.0)[0]) > SHIPPED_3DPN_INPUT_VIEW_PSNR_FLOOR_DB


def test_shipped_weights_keep_the_patients_left_on_the_images_right(shipped, frontal):
    """A marker on the image's right (the patient's left in radiological display) changes the synthesised views
    mostly on the right, at the input view and at ±9°."""
    marked = frontal.copy()
    marked[60:76, 92:108] = 1.0
    base, moved = shipped.synthesize([frontal, marked], [-9.0, 9.0], batch_size=2).views.split(1)
    difference = (moved - base).abs()[0].numpy()
    half = difference.shape[-1] // 2
    for view in difference:
        assert view[:, half:].sum() > 1.5 * view[:, :half].sum()


def test_shipped_suppression_lowers_the_bone_energy(shipped, frontal):
    out = shipped.suppress_bones(frontal, 1.0)[0]
    bone = out.thickness[0]
    before, after = _bone_energy(out.original, bone), _bone_energy(out.suppressed, bone)
    assert before > 0 and after < before
    half = shipped.suppress_bones(frontal, 0.5)[0]
    assert after < _bone_energy(half.suppressed, bone) < before
    assert float(out.bone_image.min()) >= -1e-6  # bone only ever adds attenuation


def test_shipped_weights_file_is_package_data():
    path = pretrained_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
