"""Volumes marked static keep their NaN/inf check and the Triton backend's marched copy between calls, and
give them up as soon as the volume changes (Triton interpreter without a GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import (
    ProjectorInputError,
    forward_project,
    mark_static_volume,
    unmark_static_volume,
)
from xraysyn.projector import triton as triton_pkg
from xraysyn.projector.triton import TritonBackend
from xraysyn.projector.triton import layout as triton_layout

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_pkg.available(), reason="Triton cannot run here")
GEOMETRY = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 5), pixel_spacing=(6.0, 7.0))
AFFINE = torch.diag(torch.tensor([4.0, 3.5, 3.0, 1.0]))


@pytest.fixture
def counted(monkeypatch):
    """Counts of the volume scans (``torch.aminmax``, or a packing pass that also scans into a finite probe)
    and of the marched copies the Triton path makes."""
    counts = {"scan": 0, "pack": 0, "channels_last": 0}
    aminmax, pack, channels_last = torch.aminmax, triton_layout.pack_corners, triton_layout._channels_last

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    def counting_pack(volume, slots, finite_probe=None, *marking):
        counts["pack"] += 1
        counts["scan"] += finite_probe is not None
        return pack(volume, slots, finite_probe, *marking)

    monkeypatch.setattr(torch, "aminmax", counting("scan", aminmax))
    monkeypatch.setattr(triton_layout, "pack_corners", counting_pack)
    monkeypatch.setattr(triton_layout, "_channels_last", counting("channels_last", channels_last))
    return counts


def _project(volume, **kwargs):
    poses = GEOMETRY.poses(torch.tensor([25.0, -40.0])).to(DEVICE)
    return forward_project(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, **kwargs)


def _reference(volume):
    return _project(volume.detach().clone(), backend="reference")


@pytest.mark.parametrize("layout", ["packed", "channels-last"])
def test_marked_volume_is_prepared_once_per_version(layout, counted, triton_config):
    if layout == "channels-last":
        triton_config(forward_pack=1)
    volume = torch.rand(1, 2, 5, 6, 4, device=DEVICE)
    copies = "pack" if layout == "packed" else "channels_last"
    assert mark_static_volume(volume) is volume
    first = _project(volume, backend="triton")
    second = _project(volume, backend="triton")
    assert counted["scan"] == 1 and counted[copies] == 1, counted
    torch.testing.assert_close(second, first, rtol=0, atol=0)

    with torch.no_grad():
        volume[0, 1, 2] *= 3.0  # an in-place write through a view bumps the version: prepared afresh
    changed = _project(volume, backend="triton")
    assert counted["scan"] == 2 and counted[copies] == 2, counted
    torch.testing.assert_close(changed, _reference(volume), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        volume[0, 1, 2] /= 3.0
    torch.testing.assert_close(first, _reference(volume), rtol=1e-4, atol=1e-5)
    assert not torch.equal(changed, first)

    with torch.no_grad():
        volume[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ProjectorInputError, match="non-finite"):
        _project(volume, backend="triton")
    scans = counted["scan"]
    with pytest.raises(ProjectorInputError, match="non-finite"):  # the copy is kept, the check is not
        _project(volume, backend="triton")
    assert counted["scan"] == scans + 1, counted


def test_unmarked_volumes_are_prepared_every_call(counted):
    volume = torch.rand(1, 2, 5, 6, 4, device=DEVICE)
    _project(volume, backend="triton")
    _project(volume, backend="triton")
    assert counted["scan"] == 2 and counted["pack"] == 2
    mark_static_volume(volume)
    _project(volume, backend="triton")
    _project(volume, backend="triton")
    assert counted["scan"] == 3 and counted["pack"] == 3
    unmark_static_volume(volume)  # forgets: the next call scans and packs again
    _project(volume, backend="triton")
    assert counted["scan"] == 4 and counted["pack"] == 4
    assert unmark_static_volume(volume) is volume  # unmarking twice is harmless


def test_writes_that_bypass_the_version_counter_need_an_unmark(counted):
    """The documented limit: a write through ``.data`` is invisible to the version counter, so the kept copy
    is stale until the volume is unmarked."""
    volume = mark_static_volume(torch.rand(1, 1, 5, 6, 4, device=DEVICE))
    before = _project(volume, backend="triton")
    volume.data.mul_(2.0)
    assert torch.equal(_project(volume, backend="triton"), before)
    unmark_static_volume(volume)
    torch.testing.assert_close(_project(volume, backend="triton"), 2.0 * before, rtol=1e-5, atol=1e-6)


def test_gradients_through_a_marked_leaf_volume(counted):
    volume = mark_static_volume(torch.rand(1, 2, 5, 6, 4, device=DEVICE)).requires_grad_(True)
    for _ in range(2):
        volume.grad = None
        _project(volume, backend="triton").square().sum().backward()
    assert counted["pack"] == 1 and counted["scan"] == 1
    reference = volume.detach().clone().requires_grad_(True)
    _project(reference, backend="reference").square().sum().backward()
    torch.testing.assert_close(volume.grad, reference.grad, rtol=1e-4, atol=1e-5)


def test_inference_tensors_and_non_tensors(counted):
    with torch.inference_mode():
        volume = mark_static_volume(torch.rand(1, 1, 5, 6, 4, device=DEVICE))
        _project(volume, backend="triton")
        _project(volume, backend="triton")
    assert counted["pack"] == 2  # no version counter: nothing is reused
    with pytest.raises(TypeError, match="tensor"):
        mark_static_volume([1.0, 2.0])
