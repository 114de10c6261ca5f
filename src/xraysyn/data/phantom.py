"""Procedural chest CT phantom in Hounsfield units with exact bone labels.

:func:`make_chest_phantom` paints a seeded, anatomically plausible adult chest: an elliptic body
with skin/fat/muscle layers, a barrel-shaped rib cage with 12 sloping rib pairs and costal
cartilage, a sternum, clavicles, scapulae, a thoracic spine (vertebral bodies, discs, canal,
spinous and transverse processes), two lungs with a branching vessel tree, trachea and main
bronchi, heart, aorta, mediastinal tissue, a two-domed diaphragm with the liver under the right dome
and a gastric air bubble under the left one. Sizes, shapes, pose and densities vary with the
seed; the same seed always gives the same arrays.

Frames and units
----------------
The array ``hu[i, j, k]`` is axis-aligned with the world (patient RAS+, mm): ``i`` grows toward
the patient's **right** (+x), ``j`` toward **anterior** (+y), ``k`` toward **superior** (+z).
``world_from_voxel`` is the diagonal NIfTI affine ``diag(spacing) + offset`` that puts the centre
of the grid at the world origin. The anatomy itself is placed in an *anatomical frame* that is
rotated (a few degrees) and shifted (a few mm) relative to the world to vary the pose.

Every voxel takes the value of the structure that contains its centre (no partial-volume
blurring); thin bones are given a half-thickness of at least :data:`MIN_HALF_THICKNESS_VOXELS`
voxels so that they survive coarse test grids (e.g. 32³).

Typical HU ranges used (uniformly sampled per phantom) follow standard CT texts — W. A. Kalender,
*Computed Tomography*, 3rd ed. (2011), ch. 1, and T. M. Buzug, *Computed Tomography* (2008),
table 1.1: air -1000, lung parenchyma about -850..-750, fat -120..-80, soft tissue / muscle 30..55,
blood 35..50, liver 50..70, cartilage 80..150, mediastinal tissue (a mixture of fat,
vessels and oesophagus, our choice) -60..20, cancellous bone 150..350, cortical bone 800..1400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from xraysyn.memory import require_memory

__all__ = [
    "LABELS",
    "BONE_LABELS",
    "HU_RANGES",
    "Phantom",
    "make_chest_phantom",
    "phantom_affine",
]

#: Structure name -> integer label in :attr:`Phantom.labels`.
LABELS: dict[str, int] = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "lung_left": 3,
    "lung_right": 4,
    "lung_vessels": 5,
    "trachea_bronchi": 6,
    "heart": 7,
    "aorta": 8,
    "mediastinum": 9,
    "diaphragm": 10,
    "liver": 11,
    "abdomen": 12,
    "stomach_gas": 13,
    "vertebrae": 14,
    "intervertebral_discs": 15,
    "spinal_canal": 16,
    "ribs": 17,
    "costal_cartilage": 18,
    "sternum": 19,
    "clavicles": 20,
    "scapulae": 21,
}

#: Structures that count as bone (costal cartilage and discs count as soft tissue).
BONE_LABELS: tuple[str, ...] = ("vertebrae", "ribs", "sternum", "clavicles", "scapulae")

#: (low, high) HU sampled uniformly per phantom; sources in the module docstring.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "lung": (-850.0, -750.0),
    "fat": (-120.0, -80.0),
    "soft_tissue": (30.0, 55.0),
    "blood": (35.0, 50.0),
    "liver": (50.0, 70.0),
    "mediastinal": (-60.0, 20.0),
    "cartilage": (80.0, 150.0),
    "disc": (70.0, 100.0),
    "csf": (5.0, 15.0),
    "cancellous_bone": (150.0, 350.0),
    "cortical_bone": (800.0, 1400.0),
}

#: Lowest value stored: the usual bottom of the 12-bit CT range (pixel 0 with intercept -1024).
CT_MIN_HU = -1024.0
#: Default field of view (mm) along each axis when ``spacing_mm`` is not given (3 mm at 128 voxels).
DEFAULT_FIELD_OF_VIEW_MM = 384.0
#: Bones are at least this many voxels thick (half-thickness) so they survive coarse grids.
MIN_HALF_THICKNESS_VOXELS = 0.55
#: Number of rib pairs and of thoracic vertebrae.
NUM_RIB_PAIRS = 12


@dataclass
class Phantom:
    """A chest phantom.

    Attributes:
        hu: ``(I, J, K)`` float32 CT values in HU.
        bone_mask: ``(I, J, K)`` bool, exactly the voxels labelled with one of :data:`BONE_LABELS`.
        labels: ``(I, J, K)`` uint8 structure labels, see :attr:`label_names`.
        label_names: structure name -> label value (a copy of :data:`LABELS`).
        world_from_voxel: ``(4, 4)`` float64 RAS+ mm affine (NIfTI convention).
        seed: the seed it was generated from.
        params: the sampled anatomical parameters (mm, degrees, HU) for inspection.
    """

    hu: np.ndarray
    bone_mask: np.ndarray
    labels: np.ndarray
    world_from_voxel: np.ndarray
    seed: int
    label_names: dict[str, int] = field(default_factory=lambda: dict(LABELS))
    params: dict[str, float] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.world_from_voxel[:3, :3], axis=0))


def phantom_affine(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Diagonal RAS+ affine ``(4, 4)`` (mm) centring a grid of ``shape`` voxels on the world origin."""
    affine = np.eye(4)
    for axis in range(3):
        affine[axis, axis] = spacing_mm[axis]
        affine[axis, 3] = -spacing_mm[axis] * (shape[axis] - 1) / 2.0
    return affine


# ----------------------------------------------------------------------------- validation
PEAK_BYTES_PER_VOXEL = 200
"""Peak memory of :func:`make_chest_phantom` per voxel (its float32 coordinate and distance
fields); measured growth of the peak resident size: 194 B/voxel at 64³, 187 B/voxel at 160³."""


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be three positive integers (I, J, K), got {shape!r}") from None
    if len(out) != 3 or any(s < 8 for s in out) or any(s != float(t) for s, t in zip(out, shape)):
        raise ValueError(f"shape must be three integers >= 8 (I, J, K), got {shape!r}")
    return out


def _check_spacing(spacing_mm, shape) -> tuple[float, float, float]:
    if spacing_mm is None:
        return tuple(DEFAULT_FIELD_OF_VIEW_MM / s for s in shape)
    if isinstance(spacing_mm, (int, float)):
        spacing_mm = (spacing_mm,) * 3
    try:
        out = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(f"spacing_mm must be a positive number or three of them (mm), got {spacing_mm!r}") from None
    if len(out) != 3 or not all(math.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"spacing_mm must be a positive number or three of them (mm), got {spacing_mm!r}")
    return out


# ----------------------------------------------------------------------------- parameters
def _sample_params(rng: np.random.Generator, variation: float) -> dict[str, float]:
    """Anatomical parameters (mm, degrees, HU). ``variation`` scales every random deviation."""

    def jitter(center: float, spread: float) -> float:
        return center + variation * spread * rng.uniform(-1.0, 1.0)

    p: dict[str, float] = {}
    size = 1.0 + variation * 0.12 * rng.uniform(-1.0, 1.0)  # overall body habitus
    p["cage_half_width"] = 128.0 * size * (1 + variation * 0.05 * rng.uniform(-1, 1))
    p["cage_half_depth"] = 88.0 * size * (1 + variation * 0.08 * rng.uniform(-1, 1))
    p["rib_half_thickness"] = 4.5
    p["rib_half_height"] = 6.5
    p["muscle_thickness"] = jitter(22.0, 6.0)
    p["fat_thickness"] = jitter(16.0, 10.0)
    p["body_superellipse_exponent"] = jitter(2.3, 0.2)
    p["apex_z"] = jitter(132.0, 12.0)
    p["cage_full_z"] = p["apex_z"] - jitter(110.0, 10.0)
    p["t1_z"] = p["apex_z"] - jitter(4.0, 4.0)
    p["vertebra_pitch"] = 26.0 * size
    p["disc_height"] = jitter(5.0, 1.0)
    p["kyphosis_mm"] = jitter(12.0, 6.0)
    p["rib_drop"] = jitter(70.0, 15.0)
    p["diaphragm_right_z"] = jitter(-55.0, 20.0)
    p["diaphragm_left_z"] = p["diaphragm_right_z"] - jitter(18.0, 8.0)
    p["dome_height"] = jitter(35.0, 8.0)
    p["heart_scale"] = jitter(1.0, 0.12)
    p["heart_x"] = jitter(-30.0, 8.0)  # about two thirds of the heart lie left of the midline
    p["heart_yaw_deg"] = jitter(35.0, 10.0)
    p["mediastinum_half_width"] = jitter(24.0, 4.0)
    p["sternum_top_z"] = p["t1_z"] - jitter(40.0, 8.0)
    p["sternum_length"] = jitter(180.0, 20.0)
    p["pose_yaw_deg"] = jitter(0.0, 5.0)
    p["pose_pitch_deg"] = jitter(0.0, 3.0)
    p["pose_roll_deg"] = jitter(0.0, 3.0)
    for axis in "xyz":
        p[f"pose_shift_{axis}"] = jitter(0.0, 10.0)
    for name, (lo, hi) in HU_RANGES.items():
        mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        p[f"hu_{name}"] = mid + half * min(variation, 1.0) * rng.uniform(-1.0, 1.0)
    p["vessel_seed"] = float(rng.integers(0, 2**31 - 1))
    return p


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """World-from-anatomical rotation: yaw about z, pitch about x, roll about y (degrees)."""
    a, b, c = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


# ----------------------------------------------------------------------------- geometry helpers
def _segment_distance(px, py, pz, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) from points ``(N,)`` x3 to the segment ``a``-``b`` (3,)."""
    ab = b - a
    denom = float(ab @ ab) or 1e-12
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / denom
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


def _tube(coords, candidates: np.ndarray, vertices: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask (grid shape) of ``candidates`` within ``radius`` mm of the polyline ``vertices``."""
    x, y, z = coords
    idx = np.flatnonzero(candidates)
    px, py, pz = x.ravel()[idx], y.ravel()[idx], z.ravel()[idx]
    hit = np.zeros(idx.shape, dtype=bool)
    for a, b in zip(vertices[:-1], vertices[1:]):
        lo, hi = np.minimum(a, b) - radius, np.maximum(a, b) + radius
        near = (px >= lo[0]) & (px <= hi[0]) & (py >= lo[1]) & (py <= hi[1]) & (pz >= lo[2]) & (pz <= hi[2])
        sel = np.flatnonzero(near & ~hit)
        if sel.size:
            hit[sel] = _segment_distance(px[sel], py[sel], pz[sel], a, b) <= radius
    out = np.zeros(candidates.size, dtype=bool)
    out[idx[hit]] = True
    return out.reshape(candidates.shape)


def _vessel_tree(rng: np.random.Generator, hilum: np.ndarray, side: float, depth: int = 3):
    """Segments ``[(a, b, radius_mm)]`` of a branching tree rooted at the hilum."""
    segments = []
    trunks = [(0.2 * side, 0.0, 1.0), (0.6 * side, 0.1, -0.8), (0.7 * side, -0.6, -0.4), (1.0 * side, 0.3, 0.1)]
    stack = [(hilum, np.array(d, dtype=float) / np.linalg.norm(d), 55.0, 5.0, 0) for d in trunks]
    while stack:
        start, direction, length, radius, level = stack.pop()
        direction = direction + 0.25 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        end = start + direction * length * rng.uniform(0.8, 1.2)
        segments.append((start, end, radius))
        if level < depth:
            for _ in range(2):
                child = direction + 0.6 * rng.normal(size=3)
                stack.append((end, child / np.linalg.norm(child), length * 0.7, radius * 0.68, level + 1))
    return segments


# ----------------------------------------------------------------------------- the phantom
def make_chest_phantom(
    shape=(128, 128, 128),
    spacing_mm=None,
    seed: int = 0,
    *,
    variation: float = 1.0,
    noise_hu: float = 8.0,
) -> Phantom:
    """Generate a seeded chest CT phantom in HU with exact structure and bone labels.

    Args:
        shape: grid size ``(I, J, K)`` (each >= 8); ``i`` → patient right, ``j`` → anterior,
            ``k`` → superior.
        spacing_mm: voxel size in mm (one number or three); ``None`` gives a
            :data:`DEFAULT_FIELD_OF_VIEW_MM` field of view along each axis. The anatomy is built in
            mm, so a small field of view crops it.
        seed: random seed; the same seed and arguments give identical arrays.
        variation: 0 gives the mean anatomy (still seeded noise), 1 the default variability of
            size, shape, pose and densities.
        noise_hu: standard deviation (HU) of additive Gaussian noise, 0 for none.

    Returns:
        :class:`Phantom` with ``hu`` float32 ``(I, J, K)`` HU, ``bone_mask`` bool, ``labels``
        uint8 and ``world_from_voxel`` ``(4, 4)`` RAS+ mm.

    Raises:
        ValueError: bad shape, spacing, seed, variation or noise; MemoryLimitError (a ValueError)
            when the shape needs more memory than is available.
    """
    shape = _check_shape(shape)
    require_memory(PEAK_BYTES_PER_VOXEL * shape[0] * shape[1] * shape[2], f"a phantom of shape {shape}")
    spacing = _check_spacing(spacing_mm, shape)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(variation, (int, float)) or not 0.0 <= variation <= 2.0:
        raise ValueError(f"variation must be a number in [0, 2], got {variation!r}")
    if not isinstance(noise_hu, (int, float)) or not math.isfinite(noise_hu) or noise_hu < 0:
        raise ValueError(f"noise_hu must be a non-negative number of HU, got {noise_hu!r}")

    rng = np.random.default_rng(int(seed))
    p = _sample_params(rng, float(variation))
    affine = phantom_affine(shape, spacing)
    min_half = MIN_HALF_THICKNESS_VOXELS * max(spacing)

    # Anatomical coordinates (mm) of every voxel centre: p_anat = R^T (p_world - shift).
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    wx, wy, wz = np.meshgrid(*axes, indexing="ij", sparse=True)
    rot = _rotation(p["pose_yaw_deg"], p["pose_pitch_deg"], p["pose_roll_deg"]).astype(np.float32)
    shift = np.array([p["pose_shift_x"], p["pose_shift_y"], p["pose_shift_z"]], dtype=np.float32)
    dx, dy, dz = wx - shift[0], wy - shift[1], wz - shift[2]
    x = rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz
    y = rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz
    z = rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz
    coords = (x, y, z)

    labels = np.zeros(shape, dtype=np.uint8)
    L = LABELS

    # Rib-cage cross-section: ellipse (half_width A(z), half_depth B(z)) tapering toward the apex.
    cage_top = p["apex_z"] + 8.0  # the cage closes just above the lung apex
    taper_arg = np.clip((z - p["cage_full_z"]) / (cage_top - p["cage_full_z"]), 0.0, 1.0)
    taper = np.maximum(np.sqrt(1.0 - taper_arg**2), 1e-3)
    half_w = p["cage_half_width"] * taper
    half_d = p["cage_half_depth"] * taper
    q = np.sqrt((x / half_w) ** 2 + (y / half_d) ** 2)  # 1 on the inner cage surface
    radial = np.sqrt(x**2 + y**2)
    outside_mm = radial - radial / np.maximum(q, 1e-6)  # mm beyond the cage surface (negative inside)
    theta = np.arctan2(np.abs(x) / half_w, -y / half_d)  # 0 posterior midline, pi anterior midline

    # Body: superellipse around the cage plus muscle and fat.
    rib_t = max(p["rib_half_thickness"], min_half)
    rib_h = max(p["rib_half_height"], min_half)
    wall = 2 * rib_t + p["muscle_thickness"]
    body_a = p["cage_half_width"] + wall + p["fat_thickness"]
    body_b = p["cage_half_depth"] + wall + p["fat_thickness"] + 8.0
    body_yc = -8.0  # back muscles push the body outline posteriorly
    n_exp = p["body_superellipse_exponent"]
    body_r = (np.abs(x / body_a) ** n_exp + np.abs((y - body_yc) / body_b) ** n_exp) ** (1.0 / n_exp)
    body = body_r <= 1.0
    fat_fraction = p["fat_thickness"] / min(body_a, body_b)
    labels[body] = L["fat"]
    labels[body & (body_r <= 1.0 - fat_fraction)] = L["muscle"]
    cavity = body & (q <= 1.0)

    # Diaphragm: two domes, the right (+x) one higher.
    def dome(top_z, center_x):
        r2 = ((x - center_x) / (0.75 * p["cage_half_width"])) ** 2 + (y / (0.9 * p["cage_half_depth"])) ** 2
        return top_z - p["dome_height"] * np.minimum(r2, 2.0)

    diaphragm_z = np.maximum(dome(p["diaphragm_right_z"], 0.45 * p["cage_half_width"]),
                             dome(p["diaphragm_left_z"], -0.45 * p["cage_half_width"]))
    above = z > diaphragm_z
    labels[cavity & ~above] = L["abdomen"]
    labels[cavity & above & (z < diaphragm_z + 6.0)] = L["diaphragm"]
    labels[cavity & ~above & (x > -0.35 * p["cage_half_width"]) & (z > diaphragm_z - 130.0)] = L["liver"]
    gas_c = np.array([-0.5 * p["cage_half_width"], 0.1 * p["cage_half_depth"], p["diaphragm_left_z"] - 20.0])
    gas = ((x - gas_c[0]) / 35.0) ** 2 + ((y - gas_c[1]) / 30.0) ** 2 + ((z - gas_c[2]) / 14.0) ** 2 <= 1.0
    labels[cavity & ~above & gas] = L["stomach_gas"]

    # Thorax above the diaphragm: mediastinum, lungs, heart.
    thorax = cavity & (z >= diaphragm_z + 6.0) & (z <= cage_top)
    labels[thorax] = L["mediastinum"]
    spine_y0 = -0.62 * p["cage_half_depth"]
    z_mid = p["t1_z"] - 6 * p["vertebra_pitch"]
    spine_y = spine_y0 + p["kyphosis_mm"] * (1.0 - ((z - z_mid) / 180.0) ** 2) - p["kyphosis_mm"]
    mediastinum = np.abs(x) < p["mediastinum_half_width"] + 12.0 * np.clip(y / p["cage_half_depth"], 0, 1)
    pleura = outside_mm < -2.0
    heart_c = np.array([p["heart_x"], 0.2 * p["cage_half_depth"], p["diaphragm_left_z"] + 55.0 * p["heart_scale"]])
    yaw = math.radians(p["heart_yaw_deg"])
    hx, hy, hz = x - heart_c[0], y - heart_c[1], z - heart_c[2]
    hu_ = math.cos(yaw) * hx + math.sin(yaw) * hy
    hv = -math.sin(yaw) * hx + math.cos(yaw) * hy
    s = p["heart_scale"]
    heart = (hu_ / (62 * s)) ** 2 + (hv / (45 * s)) ** 2 + (hz / (52 * s)) ** 2 <= 1.0
    lungs = thorax & pleura & ~mediastinum & ~heart & (y > spine_y - 40.0)
    spine_zone = (np.abs(x) < 32.0) & (y < spine_y + 22.0)
    lungs &= ~spine_zone
    labels[lungs & (x > 0)] = L["lung_right"]
    labels[lungs & (x <= 0)] = L["lung_left"]
    labels[thorax & heart] = L["heart"]

    # Lung vessels: a branching tree from each hilum, painted inside the lungs only.
    vessel_rng = np.random.default_rng(int(p["vessel_seed"]))
    for side in (1.0, -1.0):
        hilum = np.array([side * 45.0, 0.05 * p["cage_half_depth"], z_mid + 10.0])
        for a, b, r in _vessel_tree(vessel_rng, hilum, side):
            labels[_tube(coords, lungs, np.stack([a, b]), r)] = L["lung_vessels"]

    # Aorta (ascending, arch, descending left of the spine) and trachea with main bronchi.
    arch_z = p["t1_z"] - 3.5 * p["vertebra_pitch"]
    aorta_path = np.array([
        [heart_c[0] + 15, heart_c[1] + 5, heart_c[2] + 30],
        [5.0, 0.15 * p["cage_half_depth"], arch_z],
        [-12.0, spine_y0 + 40.0, arch_z + 12.0],
        [-22.0, spine_y0 + 26.0, arch_z - 20.0],
        [-20.0, spine_y0 + 24.0, p["diaphragm_left_z"] - 60.0],
    ])
    labels[_tube(coords, cavity, aorta_path, 12.0)] = L["aorta"]
    carina_z = z_mid + 25.0
    trachea_y = spine_y0 + 45.0
    airway = _tube(coords, body, np.array([[0.0, trachea_y, 400.0], [0.0, trachea_y, carina_z]]), 9.0)
    for side in (1.0, -1.0):
        path = np.array([[0.0, trachea_y, carina_z], [side * 42.0, trachea_y - 5.0, carina_z - 28.0]])
        airway |= _tube(coords, body, path, 6.0)
    labels[airway] = L["trachea_bronchi"]

    # Thoracic spine: vertebral bodies, discs, canal, arch, spinous and transverse processes.
    vert_h = p["vertebra_pitch"] - p["disc_height"]
    level = (p["t1_z"] - z) / p["vertebra_pitch"]  # 0 at the centre of T1
    within = np.abs(level - np.round(level)) * p["vertebra_pitch"] <= vert_h / 2.0
    vb = (x / 19.0) ** 2 + ((y - spine_y) / 15.0) ** 2 <= 1.0
    labels[body & vb & ~within] = L["intervertebral_discs"]
    canal_y = spine_y - 15.0 - 9.0
    canal_r = np.sqrt(x**2 + (y - canal_y) ** 2)
    arch = (canal_r <= 9.0 + max(5.0, 2 * min_half)) & (canal_r > 9.0) & (y < spine_y)
    spinous_level = (p["t1_z"] - (z + 12.0)) / p["vertebra_pitch"]
    spinous_within = np.abs(spinous_level - np.round(spinous_level)) * p["vertebra_pitch"] <= 0.3 * vert_h
    spinous = (np.abs(x) <= max(4.0, min_half)) & (y < canal_y) & (y > canal_y - 42.0) & spinous_within
    transverse = (np.abs(x) <= 40.0) & (np.abs(y - canal_y) <= max(6.0, min_half)) & \
        (np.abs(level - np.round(level)) * p["vertebra_pitch"] <= 7.0)
    labels[body & ((vb & within) | (within & arch) | spinous | transverse)] = L["vertebrae"]
    labels[body & (canal_r <= 9.0)] = L["spinal_canal"]

    # Ribs: 12 pairs hugging the cage surface, sloping down anteriorly; cartilage to the sternum.
    sternum_half = 16.0
    rib_zone = body & (outside_mm >= -1.0) & (outside_mm <= 2 * rib_t + 1.0)
    radial_ok = np.abs(outside_mm - rib_t) <= rib_t
    bone_end = [0.80 * math.pi] * 7 + [0.74 * math.pi] * 3 + [0.50 * math.pi, 0.38 * math.pi]
    for k in range(NUM_RIB_PAIRS):
        z0 = p["t1_z"] - k * p["vertebra_pitch"]
        drop = p["rib_drop"] * (0.7 + 0.3 * k / (NUM_RIB_PAIRS - 1))
        rib_z = z0 - drop * (theta / math.pi) ** 1.5
        on_path = rib_zone & radial_ok & (np.abs(z - rib_z) <= rib_h) & (theta >= 0.12 * math.pi)
        labels[on_path & (theta <= bone_end[k])] = L["ribs"]
        if k < 10:
            cart = on_path & (theta > bone_end[k]) & (np.abs(x) > sternum_half) & (theta <= 0.95 * math.pi)
            labels[cart] = L["costal_cartilage"]

    # Sternum: a plate on the anterior cage surface.
    sternum_z = (z <= p["sternum_top_z"]) & (z >= p["sternum_top_z"] - p["sternum_length"])
    manubrium = z > p["sternum_top_z"] - 50.0
    half = np.where(manubrium, 26.0, sternum_half)
    sternum = body & sternum_z & (np.abs(x) <= half) & (y > 0) & \
        (outside_mm >= -1.0) & (outside_mm <= max(12.0, 2 * min_half))
    labels[sternum] = L["sternum"]

    # Clavicles: S-shaped tubes from the manubrium to the acromion.
    zt = p["sternum_top_z"]
    for side in (1.0, -1.0):
        path = np.array([
            [side * 22.0, p["cage_half_depth"] * 0.55, zt + 4.0],
            [side * 65.0, p["cage_half_depth"] * 0.75, zt + 14.0],
            [side * 115.0, p["cage_half_depth"] * 0.35, zt + 22.0],
            [side * (p["cage_half_width"] + 25.0), -0.15 * p["cage_half_depth"], zt + 28.0],
        ])
        labels[_tube(coords, body, path, max(7.0, min_half))] = L["clavicles"]

    # Scapulae: triangular plates on the posterolateral wall, outside the ribs.
    sc_top, sc_bottom = p["t1_z"] - 0.5 * p["vertebra_pitch"], p["t1_z"] - 7.0 * p["vertebra_pitch"]
    frac = np.clip((z - sc_bottom) / (sc_top - sc_bottom), 0.0, 1.0)
    theta_med, theta_lat_top = 0.16 * math.pi, 0.42 * math.pi
    theta_lat = theta_med + (theta_lat_top - theta_med) * frac + 0.04
    off = 2 * rib_t + 6.0
    scap = body & (z <= sc_top) & (z >= sc_bottom) & (theta >= theta_med) & (theta <= theta_lat) & \
        (y < 0) & (outside_mm >= off) & (outside_mm <= off + max(7.0, 2 * min_half))
    labels[scap] = L["scapulae"]

    # Intensities: one HU per structure, textured lungs, cortical shell on bones, noise.
    lut = np.zeros(256, dtype=np.float32)
    tissue_of = {
        "air": "air", "fat": "fat", "muscle": "soft_tissue", "lung_left": "lung", "lung_right": "lung",
        "lung_vessels": "blood", "trachea_bronchi": "air", "heart": "blood", "aorta": "blood",
        "mediastinum": "mediastinal", "diaphragm": "soft_tissue", "liver": "liver", "abdomen": "soft_tissue",
        "stomach_gas": "air", "vertebrae": "cancellous_bone", "intervertebral_discs": "disc",
        "spinal_canal": "csf", "ribs": "cancellous_bone", "costal_cartilage": "cartilage",
        "sternum": "cancellous_bone", "clavicles": "cancellous_bone", "scapulae": "cancellous_bone",
    }
    for name, value in L.items():
        lut[value] = p[f"hu_{tissue_of[name]}"]
    hu = lut[labels]
    bone = np.isin(labels, [L[n] for n in BONE_LABELS])
    cortex = bone & ~ndimage.binary_erosion(bone)
    hu[cortex] = p["hu_cortical_bone"]
    lung_all = (labels == L["lung_left"]) | (labels == L["lung_right"])
    if lung_all.any():
        coarse = rng.normal(size=tuple(max(2, n // 8) for n in shape)).astype(np.float32)
        texture = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, grid_mode=True,
                               mode="nearest")[: shape[0], : shape[1], : shape[2]]
        hu[lung_all] += 25.0 * texture[lung_all]
    if noise_hu > 0:
        hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    np.maximum(hu, CT_MIN_HU, out=hu)
    return Phantom(hu=hu.astype(np.float32, copy=False), bone_mask=bone, labels=labels,
                   world_from_voxel=affine, seed=int(seed), params=p)
