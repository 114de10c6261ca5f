"""Polychromatic attenuation, both implementations: values and gradients against closed forms, the float64
torch implementation (autograd through log-sum-exp) and gradcheck; the choice of implementation; the
remembered coefficients.

The torch implementation always runs; the Triton one runs through the CPU interpreter
(``TRITON_INTERPRET=1``, set before triton is imported) or on a GPU, and is skipped without triton.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from support.operator_checks import assert_gradcheck

from xraysyn.physics import (
    Spectrum,
    attenuate,
    tube_spectrum,
)
from xraysyn.physics.attenuation import resolve_implementation, triton_runs_on

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not (HAS_TRITON and triton_runs_on(DEVICE)), reason="Triton cannot run here"))]
# Triton computes in float32; the torch path in the input dtype (float64 here).
TOLERANCE = {"torch": 1e-12, "triton": 2e-6}


def _thickness(n=2, m=2, rows=5, cols=7, scale=20.0, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, m, rows, cols, generator=gen, dtype=dtype) * scale).to(DEVICE)


@pytest.mark.parametrize("impl", IMPLS)
def test_values_and_gradient_match_reference(impl):
    spectrum = tube_spectrum(120.0)  # ~100 energies: several Triton energy chunks with a masked tail
    t = _thickness()
    t_ref = t.clone().requires_grad_()
    t_new = t.clone().requires_grad_()
    i_ref, line_ref = attenuate(t_ref, spectrum, implementation="torch")
    i_new, line_new = attenuate(t_new, spectrum, implementation=impl)
    assert i_new.shape == line_new.shape == (2, 1, 5, 7)
    tol = TOLERANCE[impl]
    torch.testing.assert_close(line_new.double(), line_ref.detach(), rtol=tol, atol=0)
    torch.testing.assert_close(i_new.double(), i_ref.detach(), rtol=tol, atol=0)
    w_i, w_line = torch.rand_like(i_ref), torch.rand_like(line_ref)
    (i_ref * w_i + line_ref * w_line).sum().backward()
    (i_new * w_i + line_new * w_line).sum().backward()
    assert t_ref.grad.abs().max() > 0
    torch.testing.assert_close(t_new.grad.double(), t_ref.grad, rtol=10 * tol, atol=10 * tol * float(t_ref.grad.abs().max()))


@pytest.mark.parametrize("impl", IMPLS)
def test_monochromatic_closed_form(impl):
    """One energy: I = exp(−Σ μ t) and ∂I/∂t_m = −μ_m I exactly (Beer–Lambert)."""
    mu = torch.tensor([[0.30], [0.20], [0.15]], dtype=torch.float64, device=DEVICE)  # cm²/g, 3 materials
    t = _thickness(n=1, m=3, rows=4, cols=3, scale=5.0, seed=1).requires_grad_()
    i_atten, line = attenuate(t, Spectrum.monochromatic(60.0), mass_attenuation=mu,
                                    materials=("bone", "tissue", "air"), implementation=impl)
    optical = (t.detach() * mu[:, 0].view(1, 3, 1, 1)).sum(1, keepdim=True)
    tol = TOLERANCE[impl]
    torch.testing.assert_close(line.double(), optical, rtol=tol, atol=tol)
    torch.testing.assert_close(i_atten.double(), torch.exp(-optical), rtol=tol, atol=0)
    i_atten.sum().backward()
    expected = -mu[:, 0].view(1, 3, 1, 1) * torch.exp(-optical)
    torch.testing.assert_close(t.grad.double(), expected.expand_as(t), rtol=10 * tol, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_thick_bodies_stay_finite(impl):
    """Line integrals far beyond float32's exp range give finite values and gradients."""
    spectrum = Spectrum(np.array([40.0, 80.0, 120.0]), np.array([0.2, 0.5, 0.3]))
    t = torch.full((1, 2, 2, 2), 3000.0, dtype=torch.float32, device=DEVICE, requires_grad=True)
    _i_atten, line = attenuate(t, spectrum, implementation=impl)
    line.sum().backward()
    assert torch.isfinite(line).all() and line.min() > 100
    assert torch.isfinite(t.grad).all() and t.grad.abs().max() > 0
    _, line_ref = attenuate(t.detach(), spectrum, implementation="torch")
    torch.testing.assert_close(line, line_ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_thickness(impl):
    spectrum = Spectrum(np.linspace(30.0, 110.0, 40), np.linspace(1.0, 2.0, 40))
    channels_last = _thickness(seed=2).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    transposed = _thickness(seed=3, rows=6, cols=6).transpose(2, 3)
    for t in (channels_last, transposed):
        assert not t.is_contiguous()
        tt = t.clone().requires_grad_()  # clone keeps the strides
        _, line = attenuate(tt, spectrum, implementation=impl)
        line.sum().backward()
        tr = t.contiguous().requires_grad_()
        _, line_ref = attenuate(tr, spectrum, implementation="torch")
        line_ref.sum().backward()
        tol = TOLERANCE[impl]
        torch.testing.assert_close(line.double(), line_ref.detach(), rtol=tol, atol=0)
        torch.testing.assert_close(tt.grad.double(), tr.grad, rtol=10 * tol, atol=10 * tol)


def test_torch_path_gradcheck():
    spectrum = Spectrum(np.array([50.0, 70.0, 90.0]), np.array([0.3, 0.4, 0.3]))
    t = _thickness(n=1, rows=3, cols=2, scale=3.0).requires_grad_()
    assert_gradcheck(lambda x: attenuate(x, spectrum, implementation="torch"), (t,))


def test_bad_inputs_raise_one_clear_error(monkeypatch):
    spectrum = tube_spectrum(120.0)
    t = _thickness()
    with pytest.raises(ValueError, match="implementation must be one of"):
        attenuate(t, spectrum, implementation="cuda")
    with pytest.raises(ValueError, match="3 material channels but materials lists 2"):
        attenuate(_thickness(m=3), spectrum)
    with pytest.raises(ValueError, match=r"\(N, M, rows, cols\)"):
        attenuate(t[0], spectrum)
    with pytest.raises(ValueError, match="non-finite"):
        attenuate(t * float("nan"), spectrum)
    with pytest.raises(ValueError, match="mass_attenuation must have shape"):
        attenuate(t, spectrum, mass_attenuation=torch.ones(2, 3, dtype=t.dtype))
    with pytest.raises(ValueError, match="spectrum must be a Spectrum"):
        attenuate(t, [60.0])
    with pytest.raises(ValueError, match="energy_chunk"):
        attenuate(t, spectrum, implementation="torch", energy_chunk=0)
    if HAS_TRITON and triton_runs_on(DEVICE):
        with pytest.raises(ValueError, match="requires grad"):
            attenuate(t, Spectrum.monochromatic(60.0), implementation="triton",
                      mass_attenuation=torch.ones(2, 1, dtype=t.dtype, device=DEVICE, requires_grad=True))
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="implementation 'triton' needs"):
            attenuate(t, spectrum, implementation="triton")


def test_finite_check_can_be_left_to_a_caller_that_knows():
    """check_finite=False (CT2Xray of a volume already checked finite) skips the scan of the thicknesses: a NaN
    then propagates instead of raising — the caller's guarantee, not a silent fix."""
    spectrum = tube_spectrum(120.0)
    t = _thickness()
    t[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        attenuate(t, spectrum)
    with pytest.raises(ValueError, match="non-finite"):
        attenuate(t.cpu(), spectrum)
    i_atten, _ = attenuate(t, spectrum, check_finite=False)
    assert bool(torch.isnan(i_atten[0, 0, 2, 3])) and bool(torch.isfinite(i_atten[1]).all())
    i_atten, _ = attenuate(t.cpu(), spectrum, check_finite=False)
    assert bool(torch.isnan(i_atten[0, 0, 2, 3]))


def test_spectral_coefficients_are_remembered_by_value():
    """The μ/ρ matrix and log weights of a (table, materials, spectrum, dtype, device) are made once and
    equal the table's own lookup; other values (a changed table entry, another spectrum) give new ones."""
    from xraysyn.physics import MaterialTable
    from xraysyn.physics.attenuation import spectral_coefficients

    table = MaterialTable.default()
    spectrum = tube_spectrum(90.0)
    materials = ("cortical_bone_icrp", "soft_tissue_icrp")
    mu, log_w = spectral_coefficients(spectrum, materials, table, dtype=torch.float64)
    torch.testing.assert_close(mu, table.attenuation_matrix(materials, spectrum.energies_keV, dtype=torch.float64),
                               rtol=0, atol=0)
    torch.testing.assert_close(log_w, spectrum.log_weights(dtype=torch.float64), rtol=0, atol=0)
    again = spectral_coefficients(spectrum, list(materials), table, dtype=torch.float64)
    assert again[0] is mu and again[1] is log_w
    changed = MaterialTable(table.energies_keV.copy(), {**table.values, "soft_tissue_icrp":
                                                        table.values["soft_tissue_icrp"] * 2.0})
    mu2, _ = spectral_coefficients(spectrum, materials, changed, dtype=torch.float64)
    torch.testing.assert_close(mu2[1], mu[1] * 2.0)
    assert spectral_coefficients(tube_spectrum(120.0), materials, table, dtype=torch.float64)[1].shape != \
        log_w.shape or not torch.equal(spectral_coefficients(tube_spectrum(120.0), materials, table,
                                                            dtype=torch.float64)[1], log_w)
    assert spectral_coefficients(spectrum, materials, table, dtype=torch.float32)[0].dtype == torch.float32
    with pytest.raises(ValueError, match="not in the table"):
        spectral_coefficients(spectrum, ("unobtainium",), table)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90():
    """The real compiler (not only the interpreter) accepts the attenuation kernels."""
    from support.triton_compile import compile_ptx

    sizes = {"BLOCK_P": 128, "N_MAT": 2, "BLOCK_E": 32, "N_CHUNKS": 4}
    specs = [{"module": "xraysyn.physics.attenuation.triton_kernels", "kernel": name, "constexprs": sizes}
             for name in ("attenuation_forward_kernel", "attenuation_backward_kernel")]
    for ptx in compile_ptx(specs):
        assert "ex2.approx" in ptx  # the exponentials run on the special-function unit


def test_learned_coefficients_get_the_beer_lambert_gradient():
    """μ/ρ that requires grad takes the torch implementation under "auto": for one energy
    ∂I/∂μ_m = −t_m I (closed form), summed over the pixels."""
    t = _thickness(n=1, m=2, rows=3, cols=4, scale=4.0, seed=5)
    mu = torch.tensor([[0.25], [0.18]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert resolve_implementation("auto", t, mu) == "torch"
    i_atten, _ = attenuate(t, Spectrum.monochromatic(60.0), mass_attenuation=mu)
    i_atten.sum().backward()
    expected = -(t * i_atten.detach()).sum(dim=(0, 2, 3))
    torch.testing.assert_close(mu.grad[:, 0], expected, rtol=1e-12, atol=0)


def test_auto_takes_triton_only_for_cuda_tensors_that_are_not_float64(monkeypatch):
    from xraysyn.physics.attenuation import triton_function

    cpu32 = torch.zeros(1, 2, 2, 2)
    assert resolve_implementation("auto", cpu32) == "torch"  # CPU: torch, interpreter or not
    assert resolve_implementation("torch", cpu32) == "torch"
    with pytest.raises(ValueError, match="implementation must be one of"):
        resolve_implementation("fused", cpu32)
    cuda_like = type("CudaLike", (), {"is_cuda": True, "dtype": torch.float32, "device": torch.device("cuda")})()
    monkeypatch.setattr(triton_function, "_triton_installed", lambda: True)
    assert resolve_implementation("auto", cuda_like) == "triton"
    cuda_like.dtype = torch.float64
    assert resolve_implementation("auto", cuda_like) == "torch"
    cuda_like.dtype = torch.float16
    learned = torch.ones(2, 1, requires_grad=True)
    assert resolve_implementation("auto", cuda_like, learned) == "torch"
    monkeypatch.setattr(triton_function, "_triton_installed", lambda: False)
    assert resolve_implementation("auto", cuda_like) == "torch"
    with pytest.raises(ValueError, match="implementation 'triton' needs"):
        resolve_implementation("triton", cuda_like)


def test_log_attenuation_is_the_torch_implementation_of_attenuate():
    spectrum = tube_spectrum(90.0)
    t = _thickness(seed=4)
    from xraysyn.physics import log_attenuation

    log_i = log_attenuation(t, spectrum)
    i_atten, line = attenuate(t, spectrum, implementation="torch")
    assert torch.equal(line, -log_i) and torch.equal(i_atten, torch.exp(log_i))


@pytest.mark.cuda
def test_cuda_auto_uses_triton_and_matches_reference():
    spectrum = tube_spectrum(120.0)
    t = (torch.rand(4, 2, 129, 131, device="cuda") * 30).requires_grad_()
    assert resolve_implementation("auto", t) == "triton"
    _i_atten, line = attenuate(t, spectrum)
    line.sum().backward()
    t_ref = t.detach().double().requires_grad_()
    _, line_ref = attenuate(t_ref, spectrum)
    line_ref.sum().backward()
    torch.testing.assert_close(line.double(), line_ref.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(t.grad.double(), t_ref.grad, rtol=2e-5, atol=2e-5 * float(t_ref.grad.abs().max()))
