"""The checks the projector and physics tests make of a differentiable operator, written once.

* :func:`assert_adjoint_identity` — ``<A x, y> = <x, Aᵀ y>`` in float64: ``Aᵀ`` is the exact transpose of ``A``.
* :func:`assert_gradcheck` — autograd's gradients equal central finite differences (``torch.autograd.gradcheck``)
  on float64 inputs that require gradients.
* :func:`ct_away_from_kinks` — float64 HU and soft bone-mask volumes for gradchecks through CT2Xray, away
  from the non-differentiable points of the HU calibration and of the mask.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# HU in [100, 900): above the default (DeepDRR) calibration's kink at 0 HU, where its two lines meet
KINK_FREE_HU = (100.0, 800.0)  # (lowest, range)
# a soft mask in [0.1, 0.9): strictly inside (0, 1), where the material split is smooth
SOFT_MASK = (0.1, 0.8)  # (lowest, range)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def assert_adjoint_identity(forward: Callable[[torch.Tensor], torch.Tensor],
                            adjoint: Callable[[torch.Tensor], torch.Tensor],
                            x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-12) -> float:
    """``|<forward(x), y> − <x, adjoint(y)>| ≤ rtol · |<forward(x), y>|`` for float64 ``x`` (shaped as the
    operator's input) and ``y`` (shaped as its output), both operators computing in float64, and ``<forward(x),
    y> ≠ 0`` (else the check is empty). Returns ``<forward(x), y>``."""
    assert x.dtype == y.dtype == torch.float64, f"the identity is checked in float64, got {x.dtype} and {y.dtype}"
    ax, aty = forward(x), adjoint(y)
    assert ax.dtype == aty.dtype == torch.float64, f"forward and adjoint must stay in float64, got {ax.dtype}, {aty.dtype}"
    assert ax.shape == y.shape and aty.shape == x.shape, (
        f"forward(x) {tuple(ax.shape)} must be shaped as y {tuple(y.shape)}, adjoint(y) {tuple(aty.shape)} as x "
        f"{tuple(x.shape)}")
    lhs, rhs = _inner(ax, y), _inner(x, aty)
    assert lhs != 0, "the test must produce a non-zero <A x, y>"
    assert abs(lhs - rhs) <= rtol * abs(lhs), f"<A x, y> = {lhs!r} but <x, Aᵀ y> = {rhs!r} (rtol {rtol:g})"
    return lhs


def assert_gradcheck(function: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], *, eps: float = 1e-6,
                     atol: float = 1e-5, rtol: float = 1e-3) -> None:
    """``torch.autograd.gradcheck(function, inputs)`` (central differences of step ``eps``, tolerances
    ``atol``/``rtol``: gradcheck's own defaults), after checking that every input is float64 and requires
    gradients (a float32 gradcheck is noise; an input without gradients is silently not checked)."""
    inputs = tuple(inputs)
    for i, t in enumerate(inputs):
        assert t.dtype == torch.float64, f"input {i} must be float64 for a gradcheck, got {t.dtype}"
        assert t.requires_grad, f"input {i} must require gradients, or gradcheck skips it"
    assert torch.autograd.gradcheck(function, inputs, eps=eps, atol=atol, rtol=rtol)


def ct_away_from_kinks(shape, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hu, mask)`` float64 ``(1, 1, *shape)`` leaves requiring gradients: HU uniform in ``[100, 900)`` and a
    soft bone mask uniform in ``[0.1, 0.9)`` (drawn in that order from ``generator``, default torch's)."""
    lowest, span = KINK_FREE_HU
    hu = (lowest + span * torch.rand(1, 1, *shape, generator=generator, dtype=torch.float64)).requires_grad_()
    lowest, span = SOFT_MASK
    mask = (lowest + span * torch.rand(1, 1, *shape, generator=generator, dtype=torch.float64)).requires_grad_()
    return hu, mask
