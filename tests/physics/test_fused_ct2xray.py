"""CT2Xray fused into the ray march (one Triton kernel each way) against the separate steps: the torch
reference projector, thickness units and the torch attenuation. Values and density gradients (through
all three outputs), packed volume layouts, three materials, and the routing of ``ct2xray``.

Without a GPU the kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``), tiny sizes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from support.projector_truth import assert_close_to_scale as _assert_close
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics import ct2xray, tube_spectrum
from xraysyn.physics.fused_ct2xray import project_and_attenuate
from xraysyn.physics.materials import AIR, BONE, TISSUE
from xraysyn.projector import triton_backend
from xraysyn.projector.triton_backend import TritonBackend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not triton_backend.available(), reason="Triton cannot run here")
FAST = "triton"  # the projector backend whose presence routes to the fused kernels
GEOMETRY = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 7), pixel_spacing=(9.0, 8.0))


def _setup(materials, seed=0, batch=2, views=2, shape=(6, 5, 7)):
    gen = torch.Generator().manual_seed(seed)
    densities = (torch.rand(batch, len(materials), *shape, generator=gen) * 2.0).to(DEVICE)
    affine = torch.diag(torch.tensor([5.0, 6.0, 4.5, 1.0]))
    affine[0, 1] = 0.5
    poses = GEOMETRY.poses(torch.rand(batch * views, generator=gen) * 360 - 180,
                           torch.rand(batch * views, generator=gen) * 40 - 20).to(DEVICE)
    return densities, affine.to(DEVICE), poses


def _outputs_and_grad(densities, affine, poses, materials, weights, fused, backend):
    leaf = densities.detach().clone().requires_grad_(True)
    spectrum = tube_spectrum(90.0)
    thick, i_atten, line = project_and_attenuate(leaf, affine, poses, GEOMETRY, spectrum, materials=materials,
                                                 fused=fused, backend=backend, step_mm=2.5)
    loss = (weights[0] * thick).sum() + (weights[1] * i_atten).sum() + (weights[2] * line).sum()
    loss.backward()
    return thick.detach(), i_atten.detach(), line.detach(), leaf.grad


@pytest.mark.parametrize("layout", ["plain", "reuse+carry", "packed2", "packed4"])
@pytest.mark.parametrize("materials", [(BONE, TISSUE), (BONE, TISSUE, AIR), (TISSUE,)], ids=["2mat", "3mat", "1mat"])
def test_fused_maps_and_gradients_match_separate_steps(materials, layout, monkeypatch):
    forward_pack = adjoint_pack = {"packed2": 2, "packed4": 4}.get(layout, 1)
    if forward_pack > 1 and len(materials) == 3:
        pytest.skip("three channels are not packed (not a power of two)")
    monkeypatch.setattr(TritonBackend, "FORWARD_PACK", forward_pack)
    monkeypatch.setattr(TritonBackend, "ADJOINT_PACK", adjoint_pack)
    monkeypatch.setattr(TritonBackend, "REUSE_CORNERS", layout == "reuse+carry")
    monkeypatch.setattr(TritonBackend, "CARRY_CORNERS", layout == "reuse+carry")
    densities, affine, poses = _setup(materials, seed=len(materials) + forward_pack)
    n = poses.shape[0]
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(n, len(materials), *GEOMETRY.detector_shape, generator=gen).to(DEVICE),
               torch.randn(n, 1, *GEOMETRY.detector_shape, generator=gen).to(DEVICE),
               torch.randn(n, 1, *GEOMETRY.detector_shape, generator=gen).to(DEVICE)]
    fused = _outputs_and_grad(densities, affine, poses, materials, weights, True, FAST)
    separate = _outputs_and_grad(densities, affine, poses, materials, weights, False, "reference")
    assert float(separate[1].min()) < 0.9, "the test must attenuate noticeably"
    for a, b in zip(fused, separate):
        _assert_close(a, b)


@pytest.mark.parametrize("carry", [False, True], ids=["autotuner-picks-off", "autotuner-picks-on"])
def test_fused_adjoint_left_to_the_autotuner_matches_separate_steps(carry, monkeypatch):
    """One material, 4 slots, on an autotuned backend: the fused adjoint goes through the kernel object tuned
    over the plane carry, leaves CARRY to it, and gives the separate steps' gradient whichever it picks."""
    from support.autotuner import ChosenConfig

    from xraysyn.physics import fused_ct2xray
    from xraysyn.physics import fused_ct2xray_kernels as k

    forward = ChosenConfig(k.march_attenuate_kernel, {"BLOCK_R": 64, "UNROLL": 1})
    adjoint = ChosenConfig(k.march_attenuate_adjoint_kernel, {"BLOCK_R": 64, "CARRY": carry})
    monkeypatch.setattr(fused_ct2xray, "_KERNELS", fused_ct2xray._FusedKernels(forward, None, True, adjoint))
    monkeypatch.setattr(TritonBackend, "FORWARD_PACK", 4)
    monkeypatch.setattr(TritonBackend, "ADJOINT_PACK", 4)
    densities, affine, poses = _setup((TISSUE,), seed=11)
    n = poses.shape[0]
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(n, 1, *GEOMETRY.detector_shape, generator=gen).to(DEVICE) for _ in range(3)]
    fused = _outputs_and_grad(densities, affine, poses, (TISSUE,), weights, True, FAST)
    separate = _outputs_and_grad(densities, affine, poses, (TISSUE,), weights, False, "reference")
    assert [(m["PACK"], "CARRY" in m) for m in adjoint.launched] == [(4, False)]
    for a, b in zip(fused, separate):
        _assert_close(a, b)


def test_only_one_gradient_output_and_low_precision_densities():
    """Gradients through I_atten alone (no thickness gradient), and bf16 densities read as stored."""
    materials = (BONE, TISSUE)
    densities, affine, poses = _setup(materials, seed=3)
    spectrum = tube_spectrum(120.0)
    results = []
    for fused, backend, dens in ((True, FAST, densities.bfloat16()), (False, "reference", densities.bfloat16().float())):
        leaf = dens.detach().clone().requires_grad_(True)
        _, i_atten, _ = project_and_attenuate(leaf, affine, poses, GEOMETRY, spectrum, fused=fused, backend=backend,
                                              num_samples=9)
        i_atten.square().sum().backward()
        results.append((i_atten.detach(), leaf.grad.float()))
    _assert_close(results[0][0], results[1][0])
    _assert_close(results[0][1], results[1][1], rtol=1e-2)  # bf16 gradient storage


@pytest.mark.parametrize("by_default", [True, False], ids=["fused-by-default", "separate-by-default"])
def test_ct2xray_routes_to_the_fused_kernels(by_default, monkeypatch):
    from xraysyn.physics import fused_ct2xray

    monkeypatch.setattr(fused_ct2xray, "FUSED_BY_DEFAULT", by_default)
    calls = []
    apply = fused_ct2xray.ProjectAttenuate.apply
    monkeypatch.setattr(fused_ct2xray.ProjectAttenuate, "apply", lambda *a: calls.append(1) or apply(*a))
    gen = torch.Generator().manual_seed(1)
    ct = (torch.rand(1, 1, 6, 5, 7, generator=gen) * 1800 - 900).to(DEVICE)
    mask = (ct > 300).float()
    affine = torch.diag(torch.tensor([5.0, 6.0, 4.5, 1.0])).to(DEVICE)
    poses = GEOMETRY.poses(torch.tensor([20.0])).to(DEVICE)
    fast = ct2xray(ct, mask, affine, poses, GEOMETRY, backend=FAST, air_threshold_hu=-500.0)
    assert len(calls) == by_default
    forced = ct2xray(ct, mask, affine, poses, GEOMETRY, backend=FAST, air_threshold_hu=-500.0, fused=True)
    assert len(calls) == by_default + 1
    slow = ct2xray(ct, mask, affine, poses, GEOMETRY, backend="reference", air_threshold_hu=-500.0)
    assert len(calls) == by_default + 1
    for name in ("image", "i_atten", "line_integral", "thickness"):
        _assert_close(getattr(forced, name), getattr(slow, name))
    for name in ("image", "i_atten", "line_integral", "thickness"):
        _assert_close(getattr(fast, name), getattr(slow, name))
    assert fast.materials == slow.materials == (BONE, TISSUE, AIR)


def test_fused_true_without_triton_backend_is_one_clear_error():
    densities, affine, poses = _setup((BONE, TISSUE))
    with pytest.raises(ValueError, match="fused=True"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, tube_spectrum(90.0), fused=True,
                              backend="reference")
    with pytest.raises(ValueError, match="one channel per material"):
        project_and_attenuate(densities[:, :1], affine, poses, GEOMETRY, tube_spectrum(90.0))


@pytest.mark.parametrize("backend", ["reference", FAST])
def test_separate_steps_scan_the_volume_not_the_thicknesses(backend, monkeypatch):
    """The separate steps attenuate without scanning the thickness maps again (the densities were checked
    finite before projecting them, which still raises for NaN)."""
    from xraysyn.physics import fused_ct2xray
    from xraysyn.projector import ProjectorInputError

    seen = []
    attenuate = fused_ct2xray.attenuate
    monkeypatch.setattr(fused_ct2xray, "attenuate",
                        lambda *a, **k: seen.append(k.get("check_finite", True)) or attenuate(*a, **k))
    densities, affine, poses = _setup((BONE, TISSUE))
    project_and_attenuate(densities, affine, poses, GEOMETRY, tube_spectrum(90.0), fused=False, backend=backend)
    assert seen == [False]
    densities[0, 1, 2, 2, 2] = float("nan")
    with pytest.raises(ProjectorInputError, match="non-finite"):
        project_and_attenuate(densities, affine, poses, GEOMETRY, tube_spectrum(90.0), fused=False, backend=backend)


def test_fused_kernels_compile_for_sm90():
    from support.triton_compile import compile_ptx

    module = "xraysyn.physics.fused_ct2xray_kernels"
    ints = {"nsamp_ptr": "*i32", "vidx_ptr": "*i64"}
    specs = []
    for channels, vec, pack in ((2, 2, 1), (2, 4, 2), (1, 4, 4), (3, 1, 1)):
        block_c = 1 << max(0, channels - 1).bit_length()
        common = {"BLOCK_R": 128, "BLOCK_C": block_c, "ACC": "tl.float32", "VEC": vec, "TILE_W": 8, "PACK": pack,
                  "N_MAT": channels, "BLOCK_E": 32, "N_CHUNKS": 4}
        specs.append({"module": module, "kernel": "march_attenuate_kernel",
                      "constexprs": {**common, "UNROLL": 2, "REUSE": pack == 1 and channels == 2,
                                     "BRICK": 4 * (channels != 2 or pack != 1)},
                      "pointer_types": {**ints, "occ_ptr": "*u8"}, "aligned": ["vol_ptr"]})
        specs.append({"module": module, "kernel": "march_attenuate_adjoint_kernel",
                      "constexprs": {**common, "MERGE_RUNS": True, "HAS_GRAD_THICK": channels != 1, "CARRY": True},
                      "pointer_types": ints, "aligned": ["grad_ptr"]})
    for ptx in compile_ptx(specs):
        assert ".entry" in ptx


@pytest.mark.cuda
def test_cuda_fused_ct2xray_matches_separate_steps():
    materials = (BONE, TISSUE)
    gen = torch.Generator().manual_seed(0)
    densities = (torch.rand(2, 2, 40, 48, 36, generator=gen) * 2).cuda()
    affine = torch.diag(torch.tensor([2.0, 1.8, 2.2, 1.0])).cuda()
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(61, 67), pixel_spacing=(3.1, 2.9))
    poses = geometry.poses(torch.tensor([-30.0, 0.0, 45.0, 90.0])).cuda()
    spectrum = tube_spectrum(120.0)
    out = []
    for fused, backend in ((True, "auto"), (False, "reference")):
        leaf = densities.clone().requires_grad_(True)
        thick, i_atten, line = project_and_attenuate(leaf, affine, poses, geometry, spectrum, materials=materials,
                                                     fused=fused, backend=backend, step_mm=0.9)
        (thick.sum() * 1e-2 + i_atten.square().sum() + line.sum()).backward()
        out.append((thick.detach(), i_atten.detach(), line.detach(), leaf.grad))
    for a, b in zip(*out):
        _assert_close(a, b)
