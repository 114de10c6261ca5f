import math

import pytest
import torch

from xraysyn.geometry import ConeBeamGeometry, carm_poses, parse_angles, pose_source_position, volume_center

from support.projector_truth import carm_frame


@pytest.mark.parametrize("az,el", [(0, 0), (90, 0), (-30, 10), (15, -20), (180, 45)])
def test_source_position_follows_documented_convention(az, el):
    pose = carm_poses(torch.tensor([float(az)], dtype=torch.float64), float(el), sid=1000.0)
    src = pose_source_position(pose)[0]
    expected, _, _ = carm_frame(az, el)
    torch.testing.assert_close(src, torch.as_tensor(expected * 1000.0), atol=1e-9, rtol=0)


def test_cardinal_views():
    pa, right, up = (pose_source_position(carm_poses(a, e, sid=1000.0, dtype=torch.float64))[0]
                     for a, e in [(0, 0), (90, 0), (0, 90)])
    torch.testing.assert_close(pa, torch.tensor([0.0, -1000.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    assert right[0] > 999  # positive azimuth: source toward the patient's right (+x in RAS)
    assert up[2] > 999  # positive elevation: source toward superior


def test_poses_are_rigid_and_detector_axes_match_convention():
    g = ConeBeamGeometry(detector_shape=(5, 7), pixel_spacing=(1.0, 2.0))
    poses = g.poses(torch.linspace(-40, 40, 5, dtype=torch.float64), torch.linspace(-20, 20, 5, dtype=torch.float64))
    rot = poses[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    assert torch.allclose(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64))
    # at PA, pixel row 0 points superior (+z) and column 0 to the patient's right (+x)
    d = g.pixel_directions(dtype=torch.float64)
    world = d @ g.poses(0.0, 0.0, dtype=torch.float64)[0, :3, :3]  # camera -> world (R^T applied as row vectors)
    assert world[0, 3, 2] > world[-1, 3, 2]
    assert world[2, 0, 0] > world[2, -1, 0]


def test_translation_moves_source():
    p = carm_poses(0.0, 0.0, sid=500.0, translation_mm=[1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(pose_source_position(p)[0], torch.tensor([1.0, -498.0, 3.0], dtype=torch.float64))


def test_camera_to_pixel_inverts_pixel_directions():
    g = ConeBeamGeometry(detector_shape=(4, 6), pixel_spacing=(0.5, 0.7), principal_point=(1.0, 2.5))
    d = g.pixel_directions(dtype=torch.float64)
    rc = g.camera_to_pixel(d * 0.37)  # any point on the ray projects to the same pixel
    rows, cols = torch.meshgrid(torch.arange(4.0, dtype=torch.float64), torch.arange(6.0, dtype=torch.float64),
                                indexing="ij")
    torch.testing.assert_close(rc, torch.stack([rows, cols], -1))


def test_volume_center():
    a = torch.tensor([[[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 1.0, 0], [0, 0, 0, 1]]])
    torch.testing.assert_close(volume_center(a, (11, 5, 3)), torch.tensor([[0.0, 11.0, 1.0]]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(sdd=900.0, sid=1000.0), "larger than sid"),
    (dict(sdd=1000.0, sid=1000.0), "larger than sid"),
    (dict(sdd=-1.0), "sdd"),
    (dict(detector_shape=(0, 10)), "at least one row"),
    (dict(pixel_spacing=(0.0, 1.0)), "pixel_spacing"),
    (dict(pixel_spacing=float("nan")), "pixel_spacing"),
])
def test_geometry_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConeBeamGeometry(**kwargs)


def test_parse_angles():
    assert parse_angles("-9:9:3") == [-9.0, 0.0, 9.0]
    assert parse_angles("5") == [5.0]
    assert parse_angles("1, 2,3") == [1.0, 2.0, 3.0]
    for bad in ["", "a", "1:2", "1:2:0", "nan"]:
        with pytest.raises(ValueError):
            parse_angles(bad)
    assert math.isclose(parse_angles("0:1:5")[1], 0.25)
