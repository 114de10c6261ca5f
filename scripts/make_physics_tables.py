#!/usr/bin/env python
"""Regenerate the physics tables shipped in ``src/xraysyn/physics/data``.

Three small CSV files are written (atomically: temporary file, then ``os.replace``):

* ``mass_attenuation.csv`` -- total mass attenuation coefficients μ/ρ (cm²/g, coherent scattering
  included) from 10 to 150 keV in 1 keV steps, computed with **xraylib** (``CS_Total`` summed over
  the elements by mass fraction). Compositions:

  - ``soft_tissue_icrp`` / ``cortical_bone_icrp``: xraylib's NIST compound list entries
    "Tissue, Soft (ICRP)" and "Bone, Cortical (ICRP)" (the ESTAR/ICRP compositions);
  - ``soft_tissue_icru44`` / ``cortical_bone_icru44``: the ICRU Report 44 compositions listed in
    Table 2 of Hubbell & Seltzer, NIST SRD 126 (1995) -- the materials of NIST's published μ/ρ
    tables, so the shipped values can be checked against NIST numbers;
  - ``water``, ``air`` ("Water, Liquid", "Air, Dry (near sea level)") and ``aluminium`` (Z = 13).

* ``air_mass_energy_absorption.csv`` -- μ_en/ρ of dry air (cm²/g) at the knots of the NIST table
  (Hubbell & Seltzer 1995, Table 4), used to weight spectra by air kerma for half-value layers.

* ``tube_spectra.csv`` -- tungsten-anode tube spectra from **spekpy** (Poludniowski et al., Med.
  Phys. 48:3630, 2021) for 60 to 140 kVp in 5 kV steps: anode angle 12°, 2.5 mm Al total
  filtration, 1 keV bins (centres 10.5 ... 149.5 keV), photon fluence per bin in
  photons / (cm² · mAs) at 100 cm (spekpy's default distance); bins above the kVp are 0.

Usage (xraylib in the project venv; spekpy, a 164 MB wheel, is best kept in a throwaway venv)::

    python scripts/make_physics_tables.py --materials          # needs xraylib
    /tmp/venv-spekpy/bin/python scripts/make_physics_tables.py --spectra   # needs spekpy, numpy
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "xraysyn" / "physics" / "data"

ENERGY_MIN_KEV = 10
ENERGY_MAX_KEV = 150
SPECTRUM_KVPS = tuple(range(60, 141, 5))
ANODE_ANGLE_DEG = 12.0
FILTRATION_MM_AL = 2.5
BIN_WIDTH_KEV = 1.0

# ICRU Report 44 mass fractions, as listed in Hubbell & Seltzer (1995), NIST SRD 126, Table 2.
ICRU44_SOFT_TISSUE = {1: 0.102, 6: 0.143, 7: 0.034, 8: 0.708, 11: 0.002, 15: 0.003, 16: 0.003,
                      17: 0.002, 19: 0.003}
# μ_en/ρ of dry air (cm²/g) from Hubbell & Seltzer (1995), NIST SRD 126, Table 4, keV → value.
# (xraylib's CS_Energy_CP differs from these by up to 40 % below 40 keV, so it is not used.)
NIST_AIR_MASS_ENERGY_ABSORPTION = {10.0: 4.742, 15.0: 1.334, 20.0: 0.5389, 30.0: 0.1537, 40.0: 0.06833,
                                   50.0: 0.04098, 60.0: 0.03041, 80.0: 0.02407, 100.0: 0.02325,
                                   150.0: 0.02496}
ICRU44_CORTICAL_BONE = {1: 0.034, 6: 0.155, 7: 0.042, 8: 0.435, 11: 0.001, 12: 0.002, 15: 0.103,
                        16: 0.003, 20: 0.225}


def _write_csv_atomic(path: Path, header_comments: list[str], columns: list[str], rows: np.ndarray,
                      fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            for line in header_comments:
                fh.write(f"# {line}\n")
            fh.write(",".join(columns) + "\n")
            for row in rows:
                fh.write(",".join(fmt.format(v) for v in row) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped data must be world-readable
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def make_material_tables() -> None:
    import xraylib as xl

    energies = np.arange(ENERGY_MIN_KEV, ENERGY_MAX_KEV + 1, dtype=float)

    def mixture(fractions: dict[int, float]):
        total = sum(fractions.values())
        return lambda e: sum(w * xl.CS_Total(z, e) for z, w in fractions.items()) / total

    def nist(name: str):
        return lambda e: xl.CS_Total_CP(name, e)

    materials = {
        "soft_tissue_icrp": nist("Tissue, Soft (ICRP)"),
        "cortical_bone_icrp": nist("Bone, Cortical (ICRP)"),
        "soft_tissue_icru44": mixture(ICRU44_SOFT_TISSUE),
        "cortical_bone_icru44": mixture(ICRU44_CORTICAL_BONE),
        "water": nist("Water, Liquid"),
        "air": nist("Air, Dry (near sea level)"),
        "aluminium": lambda e: xl.CS_Total(13, e),
    }
    rows = np.array([[e] + [f(e) for f in materials.values()] for e in energies])
    _write_csv_atomic(
        DATA_DIR / "mass_attenuation.csv",
        [f"Total mass attenuation coefficient mu/rho in cm^2/g (coherent included); xraylib {xl.__version__}.",
         "Compositions: *_icrp = xraylib NIST compounds 'Tissue, Soft (ICRP)' / 'Bone, Cortical (ICRP)';",
         "*_icru44 = ICRU Report 44 mass fractions (Hubbell & Seltzer 1995, NIST SRD 126, Table 2).",
         "Regenerate with scripts/make_physics_tables.py --materials"],
        ["energy_keV", *materials.keys()], rows, "{:.6g}")

    air_en = np.array(sorted(NIST_AIR_MASS_ENERGY_ABSORPTION.items()))
    _write_csv_atomic(
        DATA_DIR / "air_mass_energy_absorption.csv",
        ["Mass energy-absorption coefficient mu_en/rho of dry air (near sea level) in cm^2/g, the knots of",
         "Hubbell & Seltzer (1995), NIST SRD 126, Table 4 ('Air, Dry'); interpolate log-log.",
         "Regenerate with scripts/make_physics_tables.py --materials"],
        ["energy_keV", "air"], air_en, "{:.6g}")


def make_spectrum_table() -> None:
    import spekpy

    centres = np.arange(ENERGY_MIN_KEV + BIN_WIDTH_KEV / 2, ENERGY_MAX_KEV, BIN_WIDTH_KEV)
    table = np.zeros((centres.size, len(SPECTRUM_KVPS)))
    for col, kvp in enumerate(SPECTRUM_KVPS):
        spek = spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=BIN_WIDTH_KEV)
        spek.filter("Al", FILTRATION_MM_AL)
        k, fluence = spek.get_spectrum()
        lookup = {round(float(e), 3): float(f) for e, f in zip(k, fluence)}
        table[:, col] = [lookup.get(round(float(e), 3), 0.0) for e in centres]
    rows = np.column_stack([centres, table])
    version = getattr(spekpy, "__version__", "unknown")
    _write_csv_atomic(
        DATA_DIR / "tube_spectra.csv",
        [f"Tungsten-anode tube spectra, spekpy {version} (Poludniowski et al., Med Phys 48:3630, 2021).",
         f"Anode angle {ANODE_ANGLE_DEG} deg, total filtration {FILTRATION_MM_AL} mm Al, bin width "
         f"{BIN_WIDTH_KEV} keV (rows are bin centres).",
         "Values: photon fluence per bin, photons / (cm^2 mAs) at 100 cm; columns are tube potentials in kVp.",
         "Regenerate with scripts/make_physics_tables.py --spectra"],
        ["energy_keV", *[f"kvp_{k}" for k in SPECTRUM_KVPS]], rows, "{:.6g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--materials", action="store_true", help="write the μ/ρ tables (xraylib)")
    parser.add_argument("--spectra", action="store_true", help="write the tube spectra (spekpy)")
    args = parser.parse_args(argv)
    if not (args.materials or args.spectra):
        parser.error("choose --materials and/or --spectra")
    if args.materials:
        make_material_tables()
    if args.spectra:
        make_spectrum_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
