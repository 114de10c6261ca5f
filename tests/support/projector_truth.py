"""Independent truths for projector tests: detector pixel positions written from the documented
convention (not from the library's pose code) and float64 closed-form chord lengths; and the comparison
the kernel tests make against a reference."""

from __future__ import annotations

import math

import numpy as np


def carm_frame(azimuth_deg: float, elevation_deg: float):
    """Unit vectors (source direction from the isocenter, detector row axis, detector column axis)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    source_dir = np.array([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)])
    col_axis = np.array([-math.cos(az), -math.sin(az), 0.0])  # toward the patient's left at PA
    row_axis = np.cross(source_dir, col_axis)  # inferior at PA
    return source_dir, row_axis, col_axis


def pixel_rays(azimuth_deg, elevation_deg, sdd, sid, rows, cols, spacing, isocenter):
    """Source (3,) and pixel world positions (rows, cols, 3), all float64 mm."""
    s_dir, row_axis, col_axis = carm_frame(azimuth_deg, elevation_deg)
    iso = np.asarray(isocenter, dtype=float)
    source = iso + sid * s_dir
    center = iso - (sdd - sid) * s_dir
    r = (np.arange(rows) - (rows - 1) / 2) * spacing
    c = (np.arange(cols) - (cols - 1) / 2) * spacing
    pix = center + r[:, None, None] * row_axis + c[None, :, None] * col_axis
    return source, pix


def sphere_chords(source, pixels, center, radius):
    """Chord length of each source→pixel segment through a sphere (mm)."""
    d = pixels - source
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    oc = source - np.asarray(center)
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc**2).sum() - radius**2)
    return np.where(disc > 0, 2 * np.sqrt(np.clip(disc, 0, None)), 0.0)


def box_chords(source, pixels, lo, hi):
    """Chord length of each source→pixel segment through the axis-aligned box [lo, hi] (mm)."""
    d = pixels - source
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = 1.0 / d
    t1 = (np.asarray(lo) - source) * inv
    t2 = (np.asarray(hi) - source) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.clip(tmax - tmin, 0, None)


def assert_close_to_scale(actual, expected, rtol: float = 1e-4, what: str = "values") -> None:
    """``max |actual − expected| ≤ rtol × max |expected|`` (computed in float64): the issue's float32 agreement,
    relative to the largest value. Not element by element: two float32 implementations round their sums in
    their own orders, so small elements differ by more than ``rtol`` of themselves."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the test must produce non-zero values"
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} exceeds {rtol:g} × {scale:.3g}"
