"""Cone-beam C-arm geometry: detector, source, poses and rays.

Conventions (tested in ``tests/test_geometry.py`` and ``tests/projector/test_behaviour.py``):

* **World** = patient RAS+ in mm (the NIfTI / nibabel convention): x grows toward the patient's
  **R**ight, y toward **A**nterior, z toward **S**uperior.
* **Isocenter frame**: the world translated so that the isocenter is the origin. Poses are
  ``camera_from_isocenter`` rigid transforms ``(N, 4, 4)``; the projector adds the isocenter
  (by default the centre of each volume's bounding box).
* **Camera frame**: source at the origin, looking along +z; the detector plane is ``z = sdd``.
  Camera +y is the direction of increasing detector row, camera +x is the direction of
  *decreasing* detector column: the image is read as seen from the detector side (radiological
  display), so at azimuth 0 / elevation 0 (a PA view: source posterior, detector anterior) row 0 is
  superior and column 0 is the patient's right.
* **Azimuth** (degrees) rotates the C-arm about the superior axis (right-hand rule): positive
  azimuth moves the source from posterior toward the patient's right, so points anterior to
  the isocenter move toward column 0 (and posterior points away from it) as azimuth grows.
  **Elevation** (degrees) tilts it so that positive elevation moves the source toward superior.
* Voxel index ``(i, j, k)`` addresses ``volume[..., i, j, k]`` of a ``(B, C, D, H, W)`` tensor;
  ``world_from_voxel`` maps homogeneous ``(i, j, k, 1)`` (voxel centres) to world mm, exactly like
  a NIfTI affine of an array ``a[i, j, k]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "ConeBeamGeometry",
    "carm_poses",
    "pose_source_position",
    "volume_center",
    "parse_angles",
    "validate_affine",
]


def _as_pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a pair (rows, cols), got {value!r}") from None
    return float(a), float(b)


@dataclass(frozen=True)
class ConeBeamGeometry:
    """A cone-beam C-arm: point source, flat detector, all lengths in mm.

    Args:
        sdd: source-to-detector distance (mm), must exceed ``sid``.
        sid: source-to-isocenter distance (mm).
        detector_shape: detector ``(rows, cols)`` in pixels.
        pixel_spacing: detector pixel size ``(row_mm, col_mm)`` or one number for square pixels.
        principal_point: ``(row, col)`` pixel coordinate where the central ray (the perpendicular
            from the source) meets the detector; ``None`` means the detector centre
            ``((rows - 1) / 2, (cols - 1) / 2)``.
    """

    sdd: float = 1200.0
    sid: float = 1000.0
    detector_shape: tuple[int, int] = (256, 256)
    pixel_spacing: tuple[float, float] | float = (1.5, 1.5)
    principal_point: tuple[float, float] | None = field(default=None)

    def __post_init__(self):
        for name in ("sdd", "sid"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number of mm, got {v!r}")
        if self.sdd <= self.sid:
            raise ValueError(
                f"sdd ({self.sdd} mm) must be larger than sid ({self.sid} mm): the isocenter has to lie "
                "between the source and the detector"
            )
        try:
            rows, cols = (int(x) for x in self.detector_shape)
        except (TypeError, ValueError):
            raise ValueError(f"detector_shape must be (rows, cols), got {self.detector_shape!r}") from None
        if rows < 1 or cols < 1:
            raise ValueError(f"detector_shape must have at least one row and one column, got {self.detector_shape!r}")
        object.__setattr__(self, "detector_shape", (rows, cols))
        spacing = _as_pair(self.pixel_spacing, "pixel_spacing")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"pixel_spacing must be positive finite mm, got {self.pixel_spacing!r}")
        object.__setattr__(self, "pixel_spacing", spacing)
        if self.principal_point is not None:
            pp = _as_pair(self.principal_point, "principal_point")
            if not all(math.isfinite(p) for p in pp):
                raise ValueError(f"principal_point must be finite, got {self.principal_point!r}")
            object.__setattr__(self, "principal_point", pp)

    # ------------------------------------------------------------------ derived quantities
    @property
    def rows(self) -> int:
        return self.detector_shape[0]

    @property
    def cols(self) -> int:
        return self.detector_shape[1]

    @property
    def center_pixel(self) -> tuple[float, float]:
        """``(row, col)`` of the principal point in pixel coordinates."""
        if self.principal_point is not None:
            return self.principal_point
        return (self.rows - 1) / 2.0, (self.cols - 1) / 2.0

    def poses(self, azimuth_deg, elevation_deg=0.0, translation_mm=None, *, dtype=None, device=None):
        """``camera_from_isocenter`` poses ``(N, 4, 4)`` of this C-arm; see :func:`carm_poses`."""
        return carm_poses(azimuth_deg, elevation_deg, sid=self.sid, translation_mm=translation_mm,
                          dtype=dtype, device=device)

    def pixel_directions(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """Unnormalised ray directions in the camera frame, ``(rows, cols, 3)`` mm.

        Entry ``[r, c]`` is the camera-frame position of the centre of detector pixel ``(r, c)``,
        i.e. the vector from the source to that pixel.
        """
        r0, c0 = self.center_pixel
        dr, dc = self.pixel_spacing
        r = torch.arange(self.rows, dtype=dtype, device=device)
        c = torch.arange(self.cols, dtype=dtype, device=device)
        y = (r - r0) * dr
        x = -(c - c0) * dc
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        zz = torch.full_like(xx, self.sdd)
        return torch.stack([xx, yy, zz], dim=-1)

    def camera_to_pixel(self, points_camera: torch.Tensor) -> torch.Tensor:
        """Project camera-frame points ``(..., 3)`` mm to detector ``(row, col)`` pixel coordinates.

        Points must be in front of the source (z > 0).
        """
        r0, c0 = self.center_pixel
        dr, dc = self.pixel_spacing
        z = points_camera[..., 2]
        scale = self.sdd / z
        row = points_camera[..., 1] * scale / dr + r0
        col = -points_camera[..., 0] * scale / dc + c0
        return torch.stack([row, col], dim=-1)


# The camera axes expressed in world (isocenter-frame) coordinates at azimuth 0, elevation 0:
# columns are camera x (patient's right, +R), camera y (inferior, -S), camera z (anterior, +A).
_BASE_WORLD_FROM_CAMERA = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _rotation_x(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def carm_poses(azimuth_deg, elevation_deg=0.0, *, sid: float = 1000.0, translation_mm=None,
               dtype=None, device=None) -> torch.Tensor:
    """C-arm poses from azimuth and elevation angles about the isocenter.

    Args:
        azimuth_deg: ``(N,)`` angles in degrees (or a scalar); positive moves the source from
            posterior toward the patient's right (right-hand rule about the superior axis).
        elevation_deg: ``(N,)`` or scalar degrees; positive moves the source toward superior.
        sid: source-to-isocenter distance in mm.
        translation_mm: optional ``(N, 3)`` or ``(3,)`` shift of the whole C-arm (source and
            detector) in world mm, applied after the rotation.
        dtype, device: of the result; default float32 on the angles' device (CPU for numbers).

    Returns:
        ``camera_from_isocenter`` rigid transforms ``(N, 4, 4)``. Differentiable with respect to
        tensor angles and translations.
    """
    if not isinstance(sid, (int, float)) or not math.isfinite(sid) or sid <= 0:
        raise ValueError(f"sid must be a positive finite number of mm, got {sid!r}")
    ref = next((t for t in (azimuth_deg, elevation_deg, translation_mm) if isinstance(t, torch.Tensor)), None)
    if dtype is None:
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    if device is None:
        device = ref.device if ref is not None else None
    az = torch.as_tensor(azimuth_deg, dtype=dtype, device=device).reshape(-1)
    el = torch.as_tensor(elevation_deg, dtype=dtype, device=device).reshape(-1)
    if az.numel() == 0:
        raise ValueError("azimuth_deg is empty: at least one view is needed")
    if not (torch.isfinite(az).all() and torch.isfinite(el).all()):
        raise ValueError("azimuth_deg and elevation_deg must be finite")
    az, el = torch.broadcast_tensors(az, el)
    n = az.shape[0]
    base = torch.tensor(_BASE_WORLD_FROM_CAMERA, dtype=dtype, device=device)
    # Tilting toward superior is a rotation about +x by -elevation (the source starts at -y).
    world_from_camera_rot = _rotation_z(torch.deg2rad(az)) @ _rotation_x(-torch.deg2rad(el)) @ base
    source = world_from_camera_rot @ torch.tensor([0.0, 0.0, -float(sid)], dtype=dtype, device=device)
    if translation_mm is not None:
        t = torch.as_tensor(translation_mm, dtype=dtype, device=device)
        if t.shape[-1] != 3 or t.dim() > 2:
            raise ValueError(f"translation_mm must have shape (3,) or (N, 3), got {tuple(t.shape)}")
        source = source + t.reshape(-1, 3).expand(n, 3)
    camera_from_world_rot = world_from_camera_rot.transpose(-1, -2)
    top = torch.cat([camera_from_world_rot, -(camera_from_world_rot @ source.unsqueeze(-1))], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype, device=device).expand(n, 1, 4)
    return torch.cat([top, bottom], dim=-2)


def pose_source_position(poses: torch.Tensor) -> torch.Tensor:
    """Source positions ``(N, 3)`` (mm, isocenter frame) of ``camera_from_isocenter`` poses ``(N, 4, 4)``."""
    rot, trans = poses[..., :3, :3], poses[..., :3, 3:]
    return -(rot.transpose(-1, -2) @ trans).squeeze(-1)


def volume_center(world_from_voxel: torch.Tensor, spatial_shape) -> torch.Tensor:
    """World position (mm) of the centre of the voxel grid, ``(B, 3)`` for affines ``(B, 4, 4)``."""
    d, h, w = spatial_shape
    idx = torch.tensor([(d - 1) / 2, (h - 1) / 2, (w - 1) / 2, 1.0],
                       dtype=world_from_voxel.dtype, device=world_from_voxel.device)
    return (world_from_voxel @ idx)[..., :3]


# Tolerance of the affine's last row against [0, 0, 0, 1] (torch.allclose's defaults).
_AFFINE_LAST_ROW_RTOL = 1e-5
_AFFINE_LAST_ROW_ATOL = 1e-8


def validate_affine(world_from_voxel: torch.Tensor | np.ndarray, name: str = "world_from_voxel") -> None:
    """Check that ``(B, 4, 4)`` affines (a tensor, or a numpy host copy) are finite, invertible and have
    a ``[0, 0, 0, 1]`` last row.

    The checks run in float64 numpy on a host copy (the affines are tiny): one transfer for GPU
    tensors instead of several launches and synchronisations.
    """
    if world_from_voxel.ndim != 3 or tuple(world_from_voxel.shape[-2:]) != (4, 4):
        raise ValueError(f"{name} must have shape (B, 4, 4), got {tuple(world_from_voxel.shape)}")
    if isinstance(world_from_voxel, np.ndarray):
        a = world_from_voxel.astype(np.float64, copy=False)
    else:
        a = world_from_voxel.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    last = a[:, 3, :]
    expected_last = np.array([0.0, 0.0, 0.0, 1.0])
    if not (np.abs(last - expected_last) <= _AFFINE_LAST_ROW_ATOL + _AFFINE_LAST_ROW_RTOL * expected_last).all():
        raise ValueError(f"{name} must have last row [0, 0, 0, 1], got {last.tolist()}")
    spacing = np.linalg.norm(a[:, :3, :3], axis=-2)
    if (spacing <= 0).any():
        raise ValueError(f"{name} has zero voxel spacing along some axis: spacing {spacing.tolist()} mm")
    det = np.linalg.det(a[:, :3, :3])
    if (np.abs(det) < 1e-12 * spacing.prod(-1)).any():
        raise ValueError(f"{name} is singular (determinant {det.tolist()})")


def parse_angles(text: str) -> list[float]:
    """Parse a CLI angle list: ``"10"``, ``"-9,0,9"`` or ``"start:stop:count"`` (inclusive, like linspace)."""
    text = text.strip()
    if not text:
        raise ValueError("empty angle specification")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"angle range must be start:stop:count, got {text!r}")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"angle range must be start:stop:count with numbers, got {text!r}") from None
        if count < 1:
            raise ValueError(f"angle range count must be >= 1, got {count}")
        if count == 1:
            return [start]
        return [start + (stop - start) * i / (count - 1) for i in range(count)]
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"angles must be numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"angles must be finite numbers, got {text!r}")
    return values
