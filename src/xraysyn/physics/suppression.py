"""Bone suppression by reversing CT2Xray (Algorithm 1 of the XraySyn supplement).

Given a radiograph ``I_in`` at view T and estimated thickness maps ``t_bone``, ``t_tissue``
(g/cm², e.g. from 3DPN + 2DRN):

1. invert and rescale ``I_in`` to the range of ``I_atten`` (eq. 6 of the estimates):
   ``I_inAtten = (max I_in − I_in) / max I_in · (max I_atten − min I_atten) + min I_atten``;
2. split it into per-energy parts with ``w_i = s_i exp(−Σ_m μ(m,E_i) t_m) / I_atten``
   (``s_i`` the normalised spectral weights; Σ_i w_i = 1);
3. solve each energy for the tissue thickness that reproduces its part exactly,
   ``t_tissue_recon(i) = (log s_i − log(w_i I_inAtten) − μ_bone(E_i) t_bone) / μ_tissue(E_i)``
   (computed in the equivalent, underflow-free form
   ``t_tissue + (log I_atten − log I_inAtten) / μ_tissue(E_i)``);
4. re-synthesise with the bone coefficient moved toward tissue,
   ``μ_bone' = (1 − factor) μ_bone + factor μ_tissue``:
   ``I_suppressed = Σ_i s_i exp(−μ_bone'(E_i) t_bone − μ_tissue(E_i) t_tissue_recon(i))``,
   and map it back to the input's display scale with the inverse of step 1. With step 3 substituted the
   sum is ``I_inAtten / I_atten · Σ_i s_i exp(−μ_bone'(E_i) t_bone − μ_tissue(E_i) t_tissue)``: two
   spectral sums per pixel, which is how it is computed (``t_tissue_recon`` only when asked for).

With ``factor = 0`` the input is reproduced exactly; with ``factor = 1`` bone is attenuated as
the same mass of soft tissue. The bone image is ``I_in − suppressed``. Arithmetic is float64
internally; results are returned in the input's dtype. Every step but the two per-view extremes
(``max I_in``, the range of ``I_atten``) is per pixel, so large images are processed in row bands
of at most :data:`MAX_BAND_ELEMENTS` per-energy values (a 2k² radiograph with 110 energy bins would
otherwise need several GB per intermediate); the result does not depend on the banding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xraysyn.physics.attenuation import log_attenuation
from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import DEFAULT_KVP, Spectrum, tube_spectrum

__all__ = ["BoneSuppressionResult", "suppress_bone", "suppress_bone_upsampled", "MAX_BAND_ELEMENTS"]

#: Per-energy values (images × energies × rows × cols) one row band holds at a time (float64: 32 MiB each).
MAX_BAND_ELEMENTS = 1 << 22


@dataclass
class BoneSuppressionResult:
    """Output of :func:`suppress_bone` for N images with E spectral bins.

    Attributes:
        t_tissue_recon: ``(N, E, rows, cols)`` per-energy reconstructed tissue thickness, g/cm²
            (``None`` when not kept).
        suppressed: ``(N, 1, rows, cols)`` bone-suppressed radiograph, same display scale as the input.
        bone_image: ``(N, 1, rows, cols)`` ``input − suppressed`` (what bone added to the radiograph).
        suppressed_atten: ``(N, 1, rows, cols)`` suppressed transmitted fraction (I_atten domain).
        energies_keV: ``(E,)`` the energies of the ``t_tissue_recon`` channels.
    """

    t_tissue_recon: torch.Tensor | None
    suppressed: torch.Tensor
    bone_image: torch.Tensor
    suppressed_atten: torch.Tensor
    energies_keV: torch.Tensor


def suppress_bone(image: torch.Tensor, thickness: torch.Tensor, spectrum: Spectrum | None = None, *,
                  factor: float = 1.0, materials=DEFAULT_MATERIALS,
                  table: MaterialTable | None = None, keep_tissue_recon: bool = True) -> BoneSuppressionResult:
    """Reverse CT2Xray to suppress bone in a radiograph (Algorithm 1).

    Args:
        image: ``(N, 1, rows, cols)`` radiograph as displayed (bright bone, dark air; e.g. a
            CT2Xray ``image`` or a real radiograph), non-negative with a positive maximum.
        thickness: ``(N, 2, rows, cols)`` estimated (bone, tissue) thickness maps in g/cm².
        spectrum: the spectrum assumed for the radiograph (default 120 kVp energy-integrating).
        factor: bone suppression strength in [0, 1]; 0 = unchanged, 1 = bone attenuates as tissue.
        materials: (bone, tissue) names in the μ/ρ table.
        table: μ/ρ table (default the shipped one).
        keep_tissue_recon: return the per-energy ``t_tissue_recon`` (``N·E`` maps; off for large images).

    Raises:
        ValueError: bad shapes, factor outside [0, 1], an image whose maximum is not positive, or
            thickness maps that give a constant I_atten (nothing to rescale the input to).
    """
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and 0.0 <= factor <= 1.0):
        raise ValueError(f"factor must be a number in [0, 1] (0 = no suppression, 1 = full), got {factor!r}")
    if len(materials) != 2:
        raise ValueError(f"materials must be (bone, tissue), got {tuple(materials)}")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (N, 1, rows, cols), got {shape}")
    if not isinstance(thickness, torch.Tensor) or thickness.dim() != 4 or thickness.shape[1] != 2:
        shape = tuple(thickness.shape) if isinstance(thickness, torch.Tensor) else type(thickness).__name__
        raise ValueError(f"thickness must be a tensor (N, 2, rows, cols) of (bone, tissue) g/cm², got {shape}")
    if thickness.shape[0] != image.shape[0] or thickness.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"thickness {tuple(thickness.shape)} does not match image {tuple(image.shape)} "
                         "(same N, rows, cols expected)")
    if not torch.isfinite(image).all():
        raise ValueError("image contains non-finite values")
    spectrum = spectrum if spectrum is not None else tube_spectrum(DEFAULT_KVP)
    table = table or MaterialTable.default()
    out_dtype = image.dtype
    work = torch.float64
    img = image.to(work)
    t = thickness.to(work)

    image_max = img.amax(dim=(-2, -1), keepdim=True)
    if bool((image_max <= 0).any()):
        raise ValueError("image must have a positive maximum in every view (a displayed radiograph)")
    mu = table.attenuation_matrix(tuple(materials), spectrum.energies_keV, dtype=work, device=img.device)
    mu_bone, mu_tissue = mu[0], mu[1]

    mu_suppressed = torch.stack([(1.0 - factor) * mu_bone + factor * mu_tissue, mu_tissue])
    rows = img.shape[-2]
    band = max(1, MAX_BAND_ELEMENTS // max(1, img.shape[0] * mu.shape[-1] * img.shape[-1]))
    bands = [slice(r, min(rows, r + band)) for r in range(0, rows, band)]

    def log_transmission(part: slice, coefficients: torch.Tensor) -> torch.Tensor:
        return log_attenuation(t[..., part, :], spectrum, mass_attenuation=coefficients, materials=tuple(materials))

    # Step 1: reference attenuation of the estimates (its range over each view) and the input rescaled to it.
    log_i_ref = torch.cat([log_transmission(part, mu) for part in bands], dim=-2)
    i_ref = torch.exp(log_i_ref)
    ref_max = i_ref.amax(dim=(-2, -1), keepdim=True)
    ref_min = i_ref.amin(dim=(-2, -1), keepdim=True)
    ref_range = ref_max - ref_min
    if bool((ref_range <= 0).any()):
        raise ValueError("the thickness maps give a constant I_atten over a view: Algorithm 1 needs contrast "
                         "in the reference to rescale the input radiograph")
    i_in_atten = (image_max - img) / image_max * ref_range + ref_min
    log_i_in = torch.log(i_in_atten.clamp_min(torch.finfo(work).tiny))
    # Steps 2-3: per energy the tissue thickness reproducing w_i · I_inAtten exactly,
    # t_tissue_recon(i) = t_tissue + (log I_atten − log I_inAtten) / μ_tissue(E_i).
    recon_parts = []
    if keep_tissue_recon:
        for part in bands:
            recon_parts.append((t[:, 1:2, part] + (log_i_ref[..., part, :] - log_i_in[..., part, :])
                                / mu_tissue.view(1, -1, 1, 1)).to(out_dtype))
    # Step 4: re-synthesis with the bone coefficient moved toward tissue. Substituting t_tissue_recon(i), the
    # per-energy residual (log I_atten − log I_inAtten) is the same at every energy and leaves the sum:
    # I_suppressed = I_inAtten · Σ_i s_i exp(−μ_bone'(E_i) t_bone − μ_tissue(E_i) t_tissue) / I_atten.
    log_suppressed_ref = torch.cat([log_transmission(part, mu_suppressed) for part in bands], dim=-2)
    suppressed_atten = torch.exp(log_i_in + log_suppressed_ref - log_i_ref)
    suppressed = (ref_max - suppressed_atten) / ref_range * image_max
    energies = torch.as_tensor(spectrum.energies_keV, dtype=out_dtype, device=img.device)
    return BoneSuppressionResult(
        t_tissue_recon=torch.cat(recon_parts, dim=-2) if keep_tissue_recon else None,
        suppressed=suppressed.to(out_dtype),
        bone_image=(img - suppressed).to(out_dtype),
        suppressed_atten=suppressed_atten.to(out_dtype),
        energies_keV=energies,
    )


def suppress_bone_upsampled(image: torch.Tensor, thickness: torch.Tensor, spectrum: Spectrum | None = None, *,
                            factor: float = 1.0, materials=DEFAULT_MATERIALS,
                            table: MaterialTable | None = None) -> BoneSuppressionResult:
    """Algorithm 1 for a radiograph finer than its thickness maps (e.g. a 2k² radiograph and 128² maps).

    Algorithm 1 changes each pixel by the factor ``I_suppressed / I_inAtten = R(t) = Σ_i s_i exp(−μ_bone'(E_i)
    t_bone − μ_tissue(E_i) t_tissue) / I_atten(t)``, a smooth function of the thickness alone (see
    :func:`suppress_bone`). Here ``log R`` and the range of ``I_atten`` are computed on the thickness maps' own
    grid and ``log R`` is upsampled bilinearly (pixel centres aligned, ``align_corners=False``) to the image; the
    rest of Algorithm 1 runs per pixel of the image. This costs two spectral sums per thickness pixel instead of
    per image pixel; it differs from :func:`suppress_bone` on bilinearly upsampled maps only by the curvature
    of ``log R`` within a map pixel (tested). ``t_tissue_recon`` is not computed (``None``).

    Args:
        image: ``(N, 1, H, W)`` displayed radiograph (bright bone, dark air), positive maximum per view.
        thickness: ``(N, 2, h, w)`` (bone, tissue) g/cm² over the same field of view, ``h <= H``, ``w <= W``.
        spectrum, factor, materials, table: as for :func:`suppress_bone`.
    """
    if not isinstance(thickness, torch.Tensor) or thickness.dim() != 4 or thickness.shape[1] != 2:
        shape = tuple(thickness.shape) if isinstance(thickness, torch.Tensor) else type(thickness).__name__
        raise ValueError(f"thickness must be a tensor (N, 2, rows, cols) of (bone, tissue) g/cm², got {shape}")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (N, 1, rows, cols), got {shape}")
    if image.shape[0] != thickness.shape[0] or any(a < b for a, b in zip(image.shape[-2:], thickness.shape[-2:])):
        raise ValueError(f"thickness {tuple(thickness.shape)} must have the image's N and at most its rows and "
                         f"cols {tuple(image.shape)}")
    # Algorithm 1 on the thickness grid with a flat input gives log R and the reference range there.
    coarse = suppress_bone(torch.ones_like(thickness[:, :1]), thickness, spectrum, factor=factor,
                           materials=materials, table=table, keep_tissue_recon=False)
    # With I_in constant the rescaled input I_inAtten is min I_atten everywhere: R = suppressed_atten / min I_atten.
    work = torch.float64
    t = thickness.to(work)
    spectrum = spectrum if spectrum is not None else tube_spectrum(DEFAULT_KVP)
    table = table or MaterialTable.default()
    mu = table.attenuation_matrix(tuple(materials), spectrum.energies_keV, dtype=work, device=t.device)
    i_ref = torch.exp(log_attenuation(t, spectrum, mass_attenuation=mu, materials=tuple(materials)))
    ref_max = i_ref.amax(dim=(-2, -1), keepdim=True)
    ref_min = i_ref.amin(dim=(-2, -1), keepdim=True)
    log_ratio = torch.log(coarse.suppressed_atten.to(work)) - torch.log(ref_min)
    log_ratio = torch.nn.functional.interpolate(log_ratio, size=image.shape[-2:], mode="bilinear",
                                                align_corners=False)
    if not torch.isfinite(image).all():
        raise ValueError("image contains non-finite values")
    img = image.to(work)
    image_max = img.amax(dim=(-2, -1), keepdim=True)
    if bool((image_max <= 0).any()):
        raise ValueError("image must have a positive maximum in every view (a displayed radiograph)")
    ref_range = ref_max - ref_min
    i_in_atten = (image_max - img) / image_max * ref_range + ref_min
    suppressed_atten = i_in_atten * torch.exp(log_ratio)
    suppressed = (ref_max - suppressed_atten) / ref_range * image_max
    out_dtype = image.dtype
    return BoneSuppressionResult(t_tissue_recon=None, suppressed=suppressed.to(out_dtype),
                                 bone_image=(img - suppressed).to(out_dtype),
                                 suppressed_atten=suppressed_atten.to(out_dtype),
                                 energies_keV=torch.as_tensor(spectrum.energies_keV, dtype=out_dtype,
                                                              device=image.device))
