"""Orientation convention, batch consistency, chunking invariance, precision, bad input."""

import math

import pytest
import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import ProjectorInputError, backproject, forward_project, forward_project_adjoint

GEOM = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(48, 48), pixel_spacing=2.0)
N = 32
SPACING = 2.0
AFFINE = torch.diag(torch.tensor([SPACING, SPACING, SPACING, 1.0]))
AFFINE[:3, 3] = -SPACING * (N - 1) / 2


def _ball(center_mm, radius_mm=6.0):
    ax = (torch.arange(N) - (N - 1) / 2) * SPACING
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")  # axis i = x (R), j = y (A), k = z (S)
    d2 = (x - center_mm[0]) ** 2 + (y - center_mm[1]) ** 2 + (z - center_mm[2]) ** 2
    return (d2 < radius_mm**2).float()[None, None]


def _centroid(img):
    img = img[0, 0]
    rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
    m = img.sum()
    return float((rows * img).sum() / m), float((cols * img).sum() / m)


def test_left_ball_appears_on_image_right_at_pa():
    left = _ball((-18.0, 0.0, 0.0))  # RAS: negative x is the patient's left
    sup = _ball((0.0, 0.0, 18.0))
    r_left, c_left = _centroid(forward_project(left, AFFINE, GEOM.poses(0.0), GEOM))
    r_sup, c_sup = _centroid(forward_project(sup, AFFINE, GEOM.poses(0.0), GEOM))
    centre = (GEOM.cols - 1) / 2
    assert c_left > centre + 5 and abs(r_left - centre) < 0.5  # patient's left on the image's right
    assert r_sup < centre - 5 and abs(c_sup - centre) < 0.5  # superior at the top (row 0)


def test_azimuth_moves_structures_in_documented_direction():
    """Growing azimuth (source toward the patient's right): anterior points move to lower columns,
    posterior to higher; the left ball swings toward the centre (it turns toward the detector)."""
    anterior = _ball((0.0, 18.0, 0.0))
    left = _ball((-18.0, 0.0, 0.0))
    cols_a, cols_l = [], []
    for az in (0.0, 15.0, 30.0, 45.0):
        cols_a.append(_centroid(forward_project(anterior, AFFINE, GEOM.poses(az), GEOM))[1])
        cols_l.append(_centroid(forward_project(left, AFFINE, GEOM.poses(az), GEOM))[1])
    assert all(b < a for a, b in zip(cols_a, cols_a[1:]))
    assert all(b < a for a, b in zip(cols_l, cols_l[1:]))
    # closed form for the anterior ball's centre: column offset = -y sin(az) * magnification
    az = math.radians(45.0)
    mag = GEOM.sdd / (GEOM.sid + 18.0 * math.cos(az))
    expected = (GEOM.cols - 1) / 2 - 18.0 * math.sin(az) * mag / GEOM.pixel_spacing[1]
    assert abs(cols_a[-1] - expected) < 0.3


def test_batch_equals_per_item_and_views_per_volume():
    vols = torch.cat([_ball((5.0, 0, 0)), _ball((0, -8.0, 4.0), 9.0)])
    poses = GEOM.poses(torch.tensor([0.0, 20.0, -30.0, 45.0]), torch.tensor([0.0, 5.0, 10.0, -5.0]))
    for backend in ("reference", "numba"):
        batched = forward_project(vols, AFFINE, poses, GEOM, backend=backend)
        assert batched.shape == (4, 1, 48, 48)
        for i in range(4):
            single = forward_project(vols[i // 2:i // 2 + 1], AFFINE, poses[i:i + 1], GEOM, backend=backend)
            torch.testing.assert_close(batched[i:i + 1], single)


def test_chunking_invariance_and_float64_agreement():
    vol = torch.rand(1, 2, 16, 16, 16)
    poses = GEOM.poses(torch.tensor([10.0, -50.0]))
    big = forward_project(vol, AFFINE, poses, GEOM, backend="reference")
    tiny = forward_project(vol, AFFINE, poses, GEOM, backend="reference", memory_budget_mib=0.05)
    torch.testing.assert_close(big, tiny)
    f64 = forward_project(vol.double(), AFFINE.double(), poses.double(), GEOM, backend="reference")
    torch.testing.assert_close(big.double(), f64, rtol=2e-4, atol=5e-4)
    half = forward_project(vol.to(torch.bfloat16), AFFINE, poses, GEOM)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, forward_project(vol.to(torch.bfloat16).float(), AFFINE, poses, GEOM))


def test_reference_chunks_keep_temporaries_under_the_budget(monkeypatch):
    """Every chunk the reference marches holds at most budget / bytes-per-sample samples."""
    from xraysyn.projector import reference

    seen = []
    original = reference._Samples.__init__

    def spy(self, origin, *args, **kwargs):
        original(self, origin, *args, **kwargs)
        seen.append(self.valid.numel())  # rays in the chunk x samples per ray

    monkeypatch.setattr(reference._Samples, "__init__", spy)
    budget_mib = 0.25
    vol = torch.rand(1, 2, 16, 16, 16)
    forward_project(vol, AFFINE, GEOM.poses(0.0), GEOM, backend="reference", memory_budget_mib=budget_mib,
                    num_samples=64)
    per_sample = reference._BYTES_PER_SAMPLE_BASE + reference._BYTES_PER_SAMPLE_PER_CHANNEL * 2
    assert len(seen) > 4  # the detector did not fit one chunk
    assert max(seen) * per_sample <= budget_mib * 2**20


@pytest.mark.parametrize("call,match", [
    (lambda: forward_project(torch.rand(1, 1, 8, 8), AFFINE, GEOM.poses(0.0), GEOM), "shape"),
    (lambda: forward_project(torch.rand(1, 1, 8, 8, 1), AFFINE, GEOM.poses(0.0), GEOM), "at least 2"),
    (lambda: forward_project(torch.full((1, 1, 4, 4, 4), float("nan")), AFFINE, GEOM.poses(0.0), GEOM), "non-finite"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), torch.diag(torch.tensor([0.0, 1, 1, 1])), GEOM.poses(0.0), GEOM),
     "spacing"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), torch.eye(3), GEOM.poses(0.0), GEOM), "world_from_voxel"),
    (lambda: forward_project(torch.rand(2, 1, 4, 4, 4), AFFINE, GEOM.poses([0.0, 1.0, 2.0]), GEOM), "views"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, torch.rand(1, 4, 4), GEOM), "orthonormal"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), GEOM, step_mm=0.0), "step_mm"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), GEOM, step_mm=1.0, num_samples=3),
     "either"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), "geometry"), "ConeBeamGeometry"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), GEOM, backend="cuda"), "backend"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4).long(), AFFINE, GEOM.poses(0.0), GEOM), "floating"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), GEOM,
                             isocenter=torch.tensor([0.0, float("inf"), 0.0])), "isocenter"),
    (lambda: backproject(torch.full((1, 1, *GEOM.detector_shape), float("inf")), AFFINE, GEOM.poses(0.0), GEOM,
                         (4, 4, 4)), "images contain non-finite"),
])
def test_bad_input_raises_one_clear_error(call, match):
    with pytest.raises(ProjectorInputError, match=match):
        call()


_IMAGES = torch.rand(1, 1, *GEOM.detector_shape)


def _adjoint(images=_IMAGES, poses=GEOM.poses(0.0), geometry=GEOM, **options):
    return forward_project_adjoint(images, AFFINE, poses, geometry, (4, 4, 4), **options)


def _bp(images=_IMAGES, poses=GEOM.poses(0.0), **options):
    return backproject(images, AFFINE, poses, GEOM, (4, 4, 4), **options)


@pytest.mark.parametrize("call,match", [
    (lambda: _adjoint(geometry="geometry"), "geometry must be a ConeBeamGeometry"),
    (lambda: _adjoint(step_mm=-1.0), "step_mm must be a positive number"),
    (lambda: _adjoint(step_mm=1.0, num_samples=3), "either step_mm or num_samples"),
    (lambda: _adjoint(num_samples=0), "num_samples must be a positive integer"),
    (lambda: _adjoint(memory_budget_mib=0), "memory_budget_mib must be positive"),
    (lambda: _adjoint(images=_IMAGES[0]), r"images must be a tensor of shape \(B \* V, C, rows, cols\)"),
    (lambda: _adjoint(images=_IMAGES[..., :-1]), "pixels but the detector"),
    (lambda: _adjoint(poses=GEOM.poses([0.0, 10.0])), "forward_project_adjoint takes one pose per image: 1 images"),
    (lambda: forward_project(torch.rand(1, 1, 4, 4, 4), AFFINE, GEOM.poses(0.0), GEOM, memory_budget_mib=-1.0),
     "memory_budget_mib must be positive"),
    (lambda: _bp(memory_budget_mib=0), "memory_budget_mib must be positive"),
    (lambda: _bp(images=_IMAGES[0]), r"images must be a tensor of shape \(B, C, rows, cols\)"),
    (lambda: _bp(images=_IMAGES[..., :-1, :]), "pixels but the detector"),
    (lambda: _bp(poses=GEOM.poses([0.0, 10.0])), "backproject takes one pose per image: 1 images but 2 poses"),
])
def test_the_adjoint_and_bp_share_the_forward_checks(call, match):
    """The public adjoint and BP run the same checks as the forward (one copy each, in api.py): one
    ProjectorInputError naming the argument."""
    with pytest.raises(ProjectorInputError, match=match):
        call()


def test_empty_detector_and_sdd_le_sid_rejected_by_geometry():
    with pytest.raises(ValueError, match="at least one row"):
        ConeBeamGeometry(detector_shape=(0, 0))
    with pytest.raises(ValueError, match="larger than sid"):
        ConeBeamGeometry(sdd=500.0, sid=1000.0)


def test_numba_backend_keeps_torch_thread_count():
    """numba's OpenMP layer shares torch's thread pool setting; a projection must not change it."""
    pytest.importorskip("numba")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 6), pixel_spacing=5.0)
        volume = torch.rand(1, 1, 6, 6, 6, requires_grad=True)
        forward_project(volume, torch.eye(4), geometry.poses(torch.tensor([10.0])), geometry,
                        backend="numba").sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
