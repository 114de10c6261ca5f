"""Seeded 3-D augmentations for CT training: small rotations, scaling, elastic deformation,
intensity jitter — applied identically to the CT (trilinear) and its bone mask (nearest).

Geometry: positions are measured in mm from the centre of the voxel grid along the array axes
(``p = (index - centre) · spacing``, spacing from ``world_from_voxel``), so anisotropic voxels
rotate correctly. The content at input position ``p`` moves to ``A p`` in the output, with
``A = R · diag(scale)`` and ``R = R_k(γ) · R_j(β) · R_i(α)`` (right-handed rotations about the
array axes i, j, k by ``rotation_deg = (α, β, γ)``); then an elastic displacement ``u`` (mm,
a smooth random field) is added to the sampling position: ``out(p) = in(A⁻¹ p + u(p))``.
Outside the input the CT is air (-1000 HU) and the mask is 0. The ``world_from_voxel`` affine is
unchanged: augmentation changes the anatomy, not the grid.

Intensity: ``hu' = hu_scale · (hu + 1000) - 1000 + hu_shift + noise`` (scaling about air, like a
density change, so air stays at -1000 HU before the shift and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "AugmentParams", "sample_augment_params", "apply_augment", "RandomAugment"]

#: HU of air, the value of everything outside the input volume.
AIR_HU = -1000.0


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations (all sampled uniformly in ``±max``).

    Attributes:
        max_rotation_deg: per-axis rotation limit, degrees.
        max_scale: relative scaling limit per axis (0.05 → factors in [0.95, 1.05]).
        isotropic_scale: one factor for all axes instead of three.
        elastic_std_mm: standard deviation (mm) of the control-point displacements; 0 disables.
        elastic_grid: control points per axis of the elastic field (smoothness: fewer = smoother).
        max_hu_scale: relative intensity scaling limit (about air).
        max_hu_shift: additive HU offset limit.
        noise_hu: standard deviation of additive Gaussian noise, HU.
    """

    max_rotation_deg: float = 5.0
    max_scale: float = 0.05
    isotropic_scale: bool = False
    elastic_std_mm: float = 2.0
    elastic_grid: int = 5
    max_hu_scale: float = 0.03
    max_hu_shift: float = 20.0
    noise_hu: float = 5.0

    def __post_init__(self):
        for name in ("max_rotation_deg", "max_scale", "elastic_std_mm", "max_hu_scale", "max_hu_shift", "noise_hu"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
        if self.max_scale >= 0.5:
            raise ValueError(f"max_scale must be below 0.5 (factors stay positive), got {self.max_scale!r}")
        if not isinstance(self.elastic_grid, int) or self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be an integer >= 2, got {self.elastic_grid!r}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """A configuration that changes nothing."""
        return cls(0.0, 0.0, False, 0.0, 2, 0.0, 0.0, 0.0)


@dataclass
class AugmentParams:
    """One draw of augmentation parameters (see the module docstring for their meaning).

    Attributes:
        rotation_deg: ``(3,)`` degrees about array axes i, j, k.
        scale: ``(3,)`` factors along i, j, k.
        elastic_mm: ``(3, g, g, g)`` control-point displacements (mm along i, j, k) or ``None``.
        hu_scale, hu_shift: intensity factor about air and offset (HU).
        noise_hu: Gaussian noise standard deviation (HU).
        noise_seed: seed of the noise.
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    elastic_mm: torch.Tensor | None = None
    hu_scale: float = 1.0
    hu_shift: float = 0.0
    noise_hu: float = 0.0
    noise_seed: int = 0


def sample_augment_params(config: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Draw :class:`AugmentParams` from ``config`` with a torch generator (seeded = reproducible)."""

    def uniform(n: int, limit: float) -> list[float]:
        return ((torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * limit).tolist()

    rotation = tuple(uniform(3, config.max_rotation_deg))
    if config.isotropic_scale:
        scale = tuple([1.0 + uniform(1, config.max_scale)[0]] * 3)
    else:
        scale = tuple(1.0 + s for s in uniform(3, config.max_scale))
    elastic = None
    if config.elastic_std_mm > 0:
        g = config.elastic_grid
        elastic = torch.randn(3, g, g, g, generator=generator, dtype=torch.float64) * config.elastic_std_mm
    hu_scale = 1.0 + uniform(1, config.max_hu_scale)[0]
    hu_shift = uniform(1, config.max_hu_shift)[0]
    noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return AugmentParams(rotation, scale, elastic, hu_scale, hu_shift, float(config.noise_hu), noise_seed)


def _rotation_matrix(rotation_deg) -> torch.Tensor:
    a, b, c = (math.radians(float(v)) for v in rotation_deg)
    ri = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    rj = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=torch.float64)
    rk = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=torch.float64)
    return rk @ rj @ ri


def _sampling_grid(shape, spacing: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """``(1, D, H, W, 3)`` grid_sample coordinates (x = W axis first) for ``out(p) = in(A⁻¹p + u(p))``."""
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing.tolist())]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (D, H, W, 3) mm
    forward = _rotation_matrix(params.rotation_deg) @ torch.diag(torch.tensor(params.scale, dtype=torch.float64))
    source = pos @ torch.linalg.inv(forward).T
    if params.elastic_mm is not None:
        field = F.interpolate(params.elastic_mm.to(torch.float64)[None], size=tuple(shape), mode="trilinear",
                              align_corners=True)[0]
        source = source + field.permute(1, 2, 3, 0)
    half_extent = torch.tensor([(n - 1) / 2.0 for n in shape], dtype=torch.float64) * spacing
    normalised = source / torch.clamp(half_extent, min=1e-12)  # align_corners=True: -1/+1 at edge voxel centres
    return normalised.flip(-1)[None]


def apply_augment(ct_hu: torch.Tensor, bone: torch.Tensor, world_from_voxel, params: AugmentParams):
    """Apply one set of augmentation parameters to a CT and its bone mask.

    Args:
        ct_hu: ``(C, D, H, W)`` float CT in HU.
        bone: ``(1, D, H, W)`` or ``(C, D, H, W)`` bone mask (bool or 0/1 numbers).
        world_from_voxel: ``(4, 4)`` affine (tensor or array); only the voxel spacing (mm) is used.
        params: from :func:`sample_augment_params` (or built by hand).

    Returns:
        ``(ct_hu, bone)``: float CT ``(C, D, H, W)`` in HU (dtype of the input) and a mask of
        ``bone``'s dtype that stays binary (nearest-neighbour sampling).
    """
    if not isinstance(ct_hu, torch.Tensor) or ct_hu.dim() != 4 or not ct_hu.is_floating_point():
        raise ValueError(f"ct_hu must be a float tensor (C, D, H, W), got {getattr(ct_hu, 'shape', type(ct_hu))}")
    if not isinstance(bone, torch.Tensor) or bone.dim() != 4 or bone.shape[1:] != ct_hu.shape[1:]:
        raise ValueError(f"bone must be a tensor (1, D, H, W) matching ct_hu {tuple(ct_hu.shape)}, "
                         f"got {getattr(bone, 'shape', type(bone))}")
    affine = torch.as_tensor(world_from_voxel, dtype=torch.float64)
    if affine.shape != (4, 4) or not torch.isfinite(affine).all():
        raise ValueError(f"world_from_voxel must be a finite (4, 4) affine, got shape {tuple(affine.shape)}")
    spacing = affine[:3, :3].norm(dim=0)
    if (spacing <= 0).any():
        raise ValueError(f"world_from_voxel has a zero voxel spacing: {spacing.tolist()} mm")
    if params.elastic_mm is not None and (params.elastic_mm.dim() != 4 or params.elastic_mm.shape[0] != 3):
        raise ValueError(f"params.elastic_mm must have shape (3, g, g, g), got {tuple(params.elastic_mm.shape)}")
    grid = _sampling_grid(ct_hu.shape[1:], spacing, params).to(device=ct_hu.device)
    # Sample attenuation above air so that zero padding means air outside the volume.
    above_air = (ct_hu - AIR_HU)[None].to(torch.float64)
    warped = F.grid_sample(above_air, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out = params.hu_scale * warped + AIR_HU + params.hu_shift
    if params.noise_hu > 0:
        noise_gen = torch.Generator().manual_seed(params.noise_seed)
        out = out + params.noise_hu * torch.randn(out.shape, generator=noise_gen, dtype=torch.float64).to(out.device)
    mask = F.grid_sample(bone[None].to(torch.float64), grid, mode="nearest", padding_mode="zeros",
                         align_corners=True)[0]
    return out.to(ct_hu.dtype), (mask > 0.5).to(bone.dtype)


class RandomAugment:
    """Callable that draws parameters from ``config`` and applies them: ``aug(ct, bone, affine, generator)``."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config if config is not None else AugmentConfig()

    def __call__(self, ct_hu, bone, world_from_voxel, generator: torch.Generator | None = None):
        params = sample_augment_params(self.config, generator)
        return apply_augment(ct_hu, bone, world_from_voxel, params)
