"""CT2Xray's projection + attenuation: the composition of the public projector and the attenuation (bit for
bit), no second finite scan of the thicknesses, the Triton attenuation against the torch one, clear errors,
and physics reaching the projector through its public API only."""

import ast
import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from support.projector_truth import assert_close_to_scale
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics import attenuate, ct2xray, material_density_volumes, project_and_attenuate, tube_spectrum
from xraysyn.physics.attenuation import triton_runs_on
from xraysyn.physics.materials import AIR, BONE, TISSUE
from xraysyn.physics.units import MM_PER_CM
from xraysyn.projector import ProjectorInputError, forward_project

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GEOMETRY = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 7), pixel_spacing=(9.0, 8.0))
PHYSICS = pathlib.Path(__file__).resolve().parents[2] / "src" / "xraysyn" / "physics"


def _setup(materials, seed=0, batch=2, views=2, shape=(6, 5, 7)):
    gen = torch.Generator().manual_seed(seed)
    densities = (torch.rand(batch, len(materials), *shape, generator=gen) * 2.0).to(DEVICE)
    affine = torch.diag(torch.tensor([5.0, 6.0, 4.5, 1.0]))
    affine[0, 1] = 0.5
    poses = GEOMETRY.poses(torch.rand(batch * views, generator=gen) * 360 - 180,
                           torch.rand(batch * views, generator=gen) * 40 - 20).to(DEVICE)
    return densities, affine.to(DEVICE), poses


@pytest.mark.parametrize("materials", [(BONE, TISSUE), (BONE, TISSUE, AIR)], ids=["2mat", "3mat"])
def test_equals_projection_then_attenuation_bit_for_bit(materials):
    densities, affine, poses = _setup(materials, seed=len(materials))
    spectrum = tube_spectrum(90.0)
    thickness, i_atten, line = project_and_attenuate(densities, affine, poses, GEOMETRY, spectrum,
                                                     materials=materials, step_mm=2.5, implementation="torch")
    expected_t = forward_project(densities, affine, poses, GEOMETRY, step_mm=2.5) / MM_PER_CM
    expected_i, expected_line = attenuate(expected_t, spectrum, materials=materials, implementation="torch")
    assert float(i_atten.min()) < 0.9, "the test must attenuate noticeably"
    for got, want in ((thickness, expected_t), (i_atten, expected_i), (line, expected_line)):
        assert torch.equal(got, want)


def test_ct2xray_is_the_density_volumes_projected_and_attenuated():
    gen = torch.Generator().manual_seed(1)
    ct = (torch.rand(1, 1, 6, 5, 7, generator=gen) * 1800 - 900).to(DEVICE)
    mask = (ct > 300).float()
    _, affine, poses = _setup((BONE, TISSUE))
    result = ct2xray(ct, mask, affine, poses[:2], GEOMETRY, air_threshold_hu=-500.0, num_samples=9)
    densities = material_density_volumes(ct, mask, air_threshold_hu=-500.0)
    thickness, i_atten, line = project_and_attenuate(densities, affine, poses[:2], GEOMETRY, tube_spectrum(120.0),
                                                     materials=(BONE, TISSUE, AIR), num_samples=9)
    assert result.materials == (BONE, TISSUE, AIR)
    for got, want in ((result.thickness, thickness), (result.i_atten, i_atten), (result.line_integral, line),
                      (result.image, i_atten.amax(dim=(-2, -1), keepdim=True) - i_atten)):
        assert torch.equal(got, want)


def test_the_volume_is_scanned_not_the_thicknesses(monkeypatch):
    """Projections of a volume checked finite are finite: the attenuation runs without a second scan, and a NaN
    in the densities still raises (from the projector)."""
    import importlib

    module = importlib.import_module("xraysyn.physics.ct2xray")

    seen = []
    attenuate_with_coefficients = module.attenuate_with_coefficients
    monkeypatch.setattr(module, "attenuate_with_coefficients",
                        lambda *a, **k: seen.append(k["check_finite"]) or attenuate_with_coefficients(*a, **k))
    densities, affine, poses = _setup((BONE, TISSUE))
    project_and_attenuate(densities, affine, poses, GEOMETRY, tube_spectrum(90.0))
    assert seen == [False]
    densities[0, 1, 2, 2, 2] = float("nan")
    with pytest.raises(ProjectorInputError, match="non-finite"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, tube_spectrum(90.0))


@pytest.mark.skipif(not triton_runs_on(DEVICE), reason="Triton cannot run here")
def test_triton_attenuation_matches_torch_in_values_and_density_gradients():
    materials = (BONE, TISSUE)
    densities, affine, poses = _setup(materials, seed=4)
    gen = torch.Generator().manual_seed(7)
    n = poses.shape[0]
    weights = [torch.randn(n, 2, *GEOMETRY.detector_shape, generator=gen).to(DEVICE),
               torch.randn(n, 1, *GEOMETRY.detector_shape, generator=gen).to(DEVICE),
               torch.randn(n, 1, *GEOMETRY.detector_shape, generator=gen).to(DEVICE)]
    out = {}
    for implementation in ("triton", "torch"):
        leaf = densities.detach().clone().requires_grad_(True)
        outputs = project_and_attenuate(leaf, affine, poses, GEOMETRY, tube_spectrum(90.0), step_mm=2.5,
                                        implementation=implementation)
        sum((w * o).sum() for w, o in zip(weights, outputs)).backward()
        out[implementation] = [o.detach() for o in outputs] + [leaf.grad]
    for got, want in zip(out["triton"], out["torch"]):
        assert_close_to_scale(got, want)


def test_bad_inputs_raise_one_clear_error():
    densities, affine, poses = _setup((BONE, TISSUE))
    spectrum = tube_spectrum(90.0)
    with pytest.raises(ValueError, match="one channel per material"):
        project_and_attenuate(densities[:, :1], affine, poses, GEOMETRY, spectrum)
    with pytest.raises(ValueError, match="both mass_attenuation and log_weights"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, spectrum, mass_attenuation=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mass_attenuation must have shape \(M, E\) = \(2, 3\)"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, None, mass_attenuation=torch.ones(3, 3),
                              log_weights=torch.zeros(3))
    with pytest.raises(ValueError, match="spectrum must be a Spectrum"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, None)
    with pytest.raises(ValueError, match="implementation must be one of"):
        ct2xray(torch.zeros(1, 1, 6, 5, 7, device=DEVICE), torch.zeros(1, 1, 6, 5, 7, device=DEVICE), affine,
                poses[:1], GEOMETRY, implementation="fused")


def test_physics_reaches_the_projector_through_its_public_api_only():
    """No module of xraysyn.physics imports a private name, or a module other than the package, of the
    projector (the public API is ``xraysyn.projector``'s ``__all__``)."""
    import xraysyn.projector as projector

    public = set(projector.__all__)
    found = []
    for path in sorted(PHYSICS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xraysyn.projector"):
                names = {alias.name for alias in node.names}
                if node.module != "xraysyn.projector" or not names <= public:
                    found.append(f"{path.name}: from {node.module} import {sorted(names)}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("xraysyn.projector")]
    assert not found, found
    assert any("from xraysyn.projector import" in p.read_text() for p in PHYSICS.rglob("*.py"))
