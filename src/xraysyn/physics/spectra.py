"""X-ray tube spectra and detector weighting.

Shipped table ``data/tube_spectra.csv``: tungsten anode, 12° anode angle, 2.5 mm Al total
filtration, 60-140 kVp every 5 kV, 1 keV bins with centres 10.5-149.5 keV, photon fluence per bin
(photons / (cm² · mAs) at 100 cm), computed with spekpy (Poludniowski et al., Med. Phys. 48:3630,
2021) by ``scripts/make_physics_tables.py``. A kVp between two columns is linearly interpolated
in kVp bin by bin (bins above the requested kVp set to 0); a kVp outside 60-140 needs the
optional extra ``xraysyn[spectra]`` (spekpy), which is then called directly.

CT2Xray sums over energies with **normalised** weights ``w(E)`` (Σ w = 1):

* ``"energy_integrating"`` (default): w ∝ fluence × E -- a detector whose signal is the deposited
  energy (scintillator / flat panel, ideal absorption);
* ``"photon_counting"``: w ∝ fluence.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from xraysyn.physics.materials import MaterialTable, load_csv_table
from xraysyn.physics.units import linear_attenuation_per_mm

__all__ = [
    "Spectrum",
    "tube_spectrum",
    "tabulated_kvp_range",
    "DETECTOR_WEIGHTINGS",
    "DEFAULT_KVP",
    "ANODE_ANGLE_DEG",
    "FILTRATION_MM_AL",
    "half_value_layer_mm",
]

DEFAULT_KVP = 120.0
ANODE_ANGLE_DEG = 12.0
FILTRATION_MM_AL = 2.5
DETECTOR_WEIGHTINGS = ("energy_integrating", "photon_counting")


@dataclass(frozen=True)
class Spectrum:
    """A discrete spectrum: energies (keV) and normalised, non-negative weights (Σ = 1).

    Zero-weight bins are dropped at construction (they contribute nothing and would only
    cost memory), so ``len(energies_keV)`` may be smaller than the input.

    Attributes:
        energies_keV: ``(E,)`` float64 numpy array, positive.
        weights: ``(E,)`` float64 numpy array, positive, summing to 1.
    """

    energies_keV: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        e = np.asarray(self.energies_keV, dtype=np.float64).reshape(-1)
        w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if e.shape != w.shape:
            raise ValueError(f"energies_keV and weights must have the same length, got {e.size} and {w.size}")
        if e.size == 0:
            raise ValueError("the spectrum is empty: energies_keV has no entries")
        if not (np.all(np.isfinite(e)) and np.all(e > 0)):
            raise ValueError("energies_keV must be positive finite keV")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
            raise ValueError("weights must be non-negative and finite")
        total = w.sum()
        if total <= 0:
            raise ValueError("the spectrum is empty: all weights are zero")
        keep = w > 0
        object.__setattr__(self, "energies_keV", e[keep])
        object.__setattr__(self, "weights", w[keep] / total)

    @classmethod
    def monochromatic(cls, energy_keV: float) -> "Spectrum":
        """A single energy (keV) with weight 1."""
        return cls(np.array([energy_keV], dtype=np.float64), np.ones(1))

    @classmethod
    def uniform(cls, energies_keV) -> "Spectrum":
        """Equal weights at the given energies: the paper's unweighted sum over E (eq. 6), normalised."""
        e = np.asarray(energies_keV, dtype=np.float64).reshape(-1)
        return cls(e, np.ones_like(e))

    @property
    def mean_energy_keV(self) -> float:
        """Weighted mean energy (keV) under these weights."""
        return float(np.sum(self.energies_keV * self.weights))

    def log_weights(self, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """``(E,)`` natural log of the weights, as a tensor."""
        return torch.as_tensor(np.log(self.weights), dtype=dtype, device=device)


@functools.lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    header, rows = load_csv_table("tube_spectra.csv")
    kvps = np.array([float(h.split("_", 1)[1]) for h in header[1:]])
    return rows[:, 0].copy(), kvps, rows[:, 1:].copy()


def tabulated_kvp_range() -> tuple[float, float]:
    """(lowest, highest) tube potential (kVp) of the shipped table."""
    _, kvps, _ = _table()
    return float(kvps[0]), float(kvps[-1])


def _fluence_from_table(kvp: float) -> tuple[np.ndarray, np.ndarray]:
    energies, kvps, fluence = _table()
    hi = int(np.searchsorted(kvps, kvp, side="left"))
    if kvps[hi] == kvp:
        return energies, fluence[:, hi].copy()
    lo = hi - 1
    frac = (kvp - kvps[lo]) / (kvps[hi] - kvps[lo])
    mixed = (1.0 - frac) * fluence[:, lo] + frac * fluence[:, hi]
    mixed[energies + 0.5 > kvp] = 0.0  # no photon above the tube potential (bin edge = centre + 0.5 keV)
    return energies, mixed


def _fluence_from_spekpy(kvp: float, anode_angle_deg: float, filtration_mm_al: float):
    try:
        import spekpy  # noqa: PLC0415 - optional extra
    except ImportError:
        lo, hi = tabulated_kvp_range()
        raise ValueError(
            f"kvp={kvp:g} with anode angle {anode_angle_deg:g}° and {filtration_mm_al:g} mm Al is outside the "
            f"shipped table ({lo:g}-{hi:g} kVp, {ANODE_ANGLE_DEG:g}°, {FILTRATION_MM_AL:g} mm Al); install the "
            "optional extra `pip install xraysyn[spectra]` (spekpy) to compute it") from None
    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=1.0)
    spek.filter("Al", filtration_mm_al)
    energies, fluence = spek.get_spectrum()
    return np.asarray(energies, dtype=np.float64), np.asarray(fluence, dtype=np.float64)


def tube_spectrum(kvp: float = DEFAULT_KVP, *, detector: str = "energy_integrating",
                  anode_angle_deg: float = ANODE_ANGLE_DEG, filtration_mm_al: float = FILTRATION_MM_AL,
                  min_energy_keV: float | None = None) -> Spectrum:
    """Tungsten-anode tube spectrum with detector weighting, normalised.

    Args:
        kvp: tube potential in kVp; 60-140 comes from the shipped table, other values (or another
            anode angle / filtration) need spekpy (``pip install xraysyn[spectra]``).
        detector: ``"energy_integrating"`` (weights ∝ fluence × E) or ``"photon_counting"`` (∝ fluence).
        anode_angle_deg: anode angle in degrees (table: 12).
        filtration_mm_al: total filtration in mm Al (table: 2.5).
        min_energy_keV: drop bins below this energy (keV); default: the low end of the μ/ρ
            table (10 keV), so every bin can be attenuated.

    Returns:
        :class:`Spectrum` on 1 keV bin centres.
    """
    if not isinstance(kvp, (int, float)) or not math.isfinite(kvp) or kvp <= 0:
        raise ValueError(f"kvp must be a positive finite tube potential in kVp, got {kvp!r}")
    if detector not in DETECTOR_WEIGHTINGS:
        raise ValueError(f"detector must be one of {DETECTOR_WEIGHTINGS}, got {detector!r}")
    lo, hi = tabulated_kvp_range()
    in_table = (lo <= kvp <= hi and math.isclose(anode_angle_deg, ANODE_ANGLE_DEG)
                and math.isclose(filtration_mm_al, FILTRATION_MM_AL))
    if in_table:
        energies, fluence = _fluence_from_table(float(kvp))
    else:
        energies, fluence = _fluence_from_spekpy(float(kvp), anode_angle_deg, filtration_mm_al)
    table_lo, table_hi = MaterialTable.default().energy_range_keV
    e_min = table_lo if min_energy_keV is None else float(min_energy_keV)
    keep = (energies >= e_min) & (energies <= table_hi)
    energies, fluence = energies[keep], fluence[keep]
    weights = fluence * energies if detector == "energy_integrating" else fluence
    return Spectrum(energies, weights)


def half_value_layer_mm(fluence_spectrum: Spectrum, material: str = "aluminium", *,
                        table: MaterialTable | None = None, density_g_per_cm3: float | None = None) -> float:
    """First half-value layer (mm of ``material``) of a beam, measured by air kerma.

    Air kerma K(x) ∝ Σ_E Φ(E) · E · μ_en/ρ_air(E) · exp(−μ(E) x); the HVL solves K(x) = K(0)/2
    (bisection). ``fluence_spectrum`` must carry **photon-fluence** weights (use
    ``tube_spectrum(..., detector="photon_counting")``).
    """
    from xraysyn.physics.materials import NOMINAL_DENSITY_G_PER_CM3

    table = table or MaterialTable.default()
    rho = density_g_per_cm3 if density_g_per_cm3 is not None else NOMINAL_DENSITY_G_PER_CM3[material]
    header, rows = load_csv_table("air_mass_energy_absorption.csv")
    e = fluence_spectrum.energies_keV
    mu_en_air = np.exp(np.interp(np.log(e), np.log(rows[:, 0]), np.log(rows[:, 1])))
    kerma_weights = fluence_spectrum.weights * e * mu_en_air
    mu_per_mm = linear_attenuation_per_mm(table.mass_attenuation(material, e), rho)

    def kerma_ratio(x_mm: float) -> float:
        return float(np.sum(kerma_weights * np.exp(-mu_per_mm * x_mm)) / np.sum(kerma_weights))

    lo_x, hi_x = 0.0, 1.0
    while kerma_ratio(hi_x) > 0.5:
        hi_x *= 2.0
    for _ in range(80):
        mid = 0.5 * (lo_x + hi_x)
        lo_x, hi_x = (mid, hi_x) if kerma_ratio(mid) > 0.5 else (lo_x, mid)
    return 0.5 * (lo_x + hi_x)
