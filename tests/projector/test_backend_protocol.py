"""Every projector backend implements the written protocol (projector/backend.py) and declares what it can do
consistently with what it has; the API reads the declarations."""

import pytest
import torch

from xraysyn.projector import api
from xraysyn.projector.backend import (
    REFERENCE_CAPABILITIES,
    Capabilities,
    ProjectorBackend,
    capabilities_of,
)
from xraysyn.projector.cpu_numba import NumbaBackend
from xraysyn.projector.rays import RaySet
from xraysyn.projector.triton import TritonBackend

BACKENDS = (NumbaBackend, TritonBackend)
OPTIONAL_METHODS = {"prepares_volumes": "prepare_volume", "builds_rays": "build_rays"}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_backends_implement_the_protocol_and_declare_what_they_have(backend):
    assert isinstance(backend, ProjectorBackend)
    caps = backend.capabilities
    assert isinstance(caps, Capabilities) and not caps.pose_gradients  # both compute volume gradients only
    for capability, method in OPTIONAL_METHODS.items():
        assert getattr(caps, capability) == callable(getattr(backend, method, None)), (capability, method)


def test_the_reference_is_declared_for_every_device_with_pose_gradients():
    assert capabilities_of(None) is REFERENCE_CAPABILITIES
    assert REFERENCE_CAPABILITIES.pose_gradients and set(REFERENCE_CAPABILITIES.devices) == {"cpu", "cuda"}
    assert capabilities_of(TritonBackend) is TritonBackend.capabilities


def test_capabilities_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        TritonBackend.capabilities.low_precision_volumes = False


def test_march_tensors_are_the_six_marched_fields_in_the_kernels_order():
    fields = [torch.full((1,), float(i)) for i in range(7)]
    rays = RaySet(*fields)
    assert [int(t) for t in rays.march_tensors()] == [0, 1, 2, 3, 4, 5]  # all but length (6)
    assert all(a is b for a, b in zip(rays.march_tensors(), fields))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
def test_backends_take_one_ray_set(backend):
    """forward(volume, rays, memory_budget_mib) and adjoint(grad_out, volume_shape, rays, memory_budget_mib):
    the protocol's parameters, by name, first in every backend's signature."""
    import inspect

    for method, names in (("forward", ["volume", "rays", "memory_budget_mib"]),
                          ("adjoint", ["grad_out", "volume_shape", "rays", "memory_budget_mib"])):
        assert list(inspect.signature(getattr(backend, method)).parameters)[:len(names)] == names, method
        protocol = list(inspect.signature(getattr(ProjectorBackend, method)).parameters)[1:]  # without self
        assert protocol == names


def test_the_api_hands_every_backend_one_ray_set(monkeypatch):
    """The public forward, its autograd node and the public adjoint give a backend the RaySet they built."""
    from xraysyn.geometry import ConeBeamGeometry

    seen = []

    class Recording:
        capabilities = Capabilities(devices=("cpu",))

        @staticmethod
        def forward(volume, rays, memory_budget_mib=512.0):
            seen.append(("forward", type(rays)))
            return torch.zeros(*rays.t_near.shape, volume.shape[1], dtype=volume.dtype)

        @staticmethod
        def adjoint(grad_out, volume_shape, rays, memory_budget_mib=512.0):
            seen.append(("adjoint", type(rays)))
            return torch.zeros(volume_shape, dtype=grad_out.dtype)

    monkeypatch.setattr(api, "_select_backend", lambda *args, **kwargs: Recording)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(3, 4), pixel_spacing=5.0)
    affine, poses = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0])), geometry.poses(torch.tensor([0.0]))
    volume = torch.rand(1, 1, 4, 4, 4, requires_grad=True)
    api.forward_project(volume, affine, poses, geometry, num_samples=2).sum().backward()
    api.forward_project_adjoint(torch.ones(1, 1, 3, 4), affine, poses, geometry, (4, 4, 4), num_samples=2)
    assert seen == [("forward", RaySet), ("adjoint", RaySet), ("adjoint", RaySet)]


def test_the_api_hands_low_precision_volumes_only_to_backends_that_declare_it(monkeypatch):
    """A backend declaring low_precision_volumes gets an fp16 volume as stored; one that does not gets float32
    (the declaration, not an attribute probe, decides)."""
    seen = []

    class Declared:
        capabilities = Capabilities(devices=("cpu",), low_precision_volumes=True)

        @staticmethod
        def forward(volume, rays, *budget, **kwargs):
            seen.append(volume.dtype)
            return torch.zeros(rays.t_near.shape + (volume.shape[1],))

        adjoint = None

    from xraysyn.geometry import ConeBeamGeometry

    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(3, 4), pixel_spacing=5.0)
    volume = torch.rand(1, 1, 4, 4, 4).half()
    for declared, expected in ((True, torch.float16), (False, torch.float32)):
        backend = Declared if declared else type("Undeclared", (), {
            "capabilities": Capabilities(devices=("cpu",)), "forward": Declared.forward, "adjoint": None})
        monkeypatch.setattr(api, "_select_backend", lambda *args, b=backend: b)
        api.forward_project(volume, torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0])),
                            geometry.poses(torch.tensor([0.0])), geometry, num_samples=2)
        assert seen[-1] == expected
