"""``xraysyn simulate``: radiographs (CT2Xray or DRR) and bone/tissue thickness maps of a CT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors
from xraysyn.imageio import atomic_write, save_npy, save_png

MODES = ("ct2xray", "drr")
AFFINE_ATOL_MM = 1e-3
"""Largest affine difference (mm) accepted between the CT and a mask read from another file."""


def _save_npy(path: Path, array: np.ndarray) -> None:
    save_npy(array, path)


def _save_png(path: Path, array: np.ndarray) -> None:
    """8-bit grayscale PNG, min-max scaled per image (constant images become black)."""
    save_png(array, path, window=(float(array.min()), float(array.max())))


def _pair(text: str, name: str, cast) -> tuple:
    try:
        parts = [cast(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be one number or two separated by a comma, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"{name} must be one number or two separated by a comma, got {text!r}")
    return tuple(parts)


def _load_mask(mask_path: Path | None, bone_threshold: float | None, ct) -> np.ndarray:
    from xraysyn.data.bone_mask import BONE_THRESHOLD_HU, bone_mask_from_hu
    from xraysyn.data.ct_io import load_ct

    if mask_path is not None and bone_threshold is not None:
        raise ValueError("give either --mask or --bone-threshold, not both")
    if mask_path is None:
        threshold = BONE_THRESHOLD_HU if bone_threshold is None else bone_threshold
        return bone_mask_from_hu(ct.hu, ct.spacing_mm, threshold_hu=threshold).astype(np.float32)
    mask = load_ct(mask_path)
    if mask.shape != ct.shape:
        raise ValueError(f"mask {str(mask_path)!r} has shape {mask.shape} but the CT has {ct.shape}")
    if not np.allclose(mask.world_from_voxel, ct.world_from_voxel, atol=AFFINE_ATOL_MM):
        raise ValueError(f"mask {str(mask_path)!r} is not on the CT's voxel grid (different affine)")
    values = mask.hu.astype(np.float32)
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"mask {str(mask_path)!r} must hold bone probabilities in [0, 1], got "
                         f"[{values.min():g}, {values.max():g}] (convert label maps to a 0/1 mask first)")
    return values


@app.command("simulate")
def simulate_command(
    ct_path: Path = typer.Argument(..., metavar="CT", help="CT: NIfTI/NRRD/MHA file or DICOM series folder (HU)."),
    out: Path = typer.Option(..., "--out", help="Output folder (created if missing)."),
    mask: Path = typer.Option(None, "--mask", help="Bone mask on the CT grid, values in [0, 1] (soft masks allowed)."),
    bone_threshold: float = typer.Option(None, "--bone-threshold", help="Make the bone mask by HU threshold + "
                                         "morphology (default 350 HU when no --mask)."),
    azimuth: str = typer.Option("0", "--azimuth", help="Degrees: '0', '-9,0,9' or 'start:stop:count'."),
    elevation: str = typer.Option("0", "--elevation", help="Degrees, one value or as many as --azimuth."),
    kvp: float = typer.Option(120.0, "--kvp",
                              help="Tube potential, kVp (60-140 shipped; others need the spectra extra, spekpy)."),
    mode: str = typer.Option("ct2xray", "--mode",
                             help="ct2xray (polychromatic, bone/tissue) or drr (μ at one energy)."),
    photon_counting: bool = typer.Option(False, "--photon-counting",
                                         help="Photon-counting weights (default energy-integrating)."),
    air_threshold: float = typer.Option(None, "--air-threshold",
                                        help="Model HU below this as air (default: air as tissue)."),
    energy: float = typer.Option(None, "--energy",
                                 help="DRR effective energy in keV (default: fluence-mean of the --kvp spectrum)."),
    noise: float = typer.Option(None, "--noise",
                                help="Add Poisson noise for this many unattenuated photons per pixel."),
    electronic_noise: float = typer.Option(0.0, "--electronic-noise", help="Gaussian read-out noise σ in photons."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    detector: str = typer.Option("256", "--detector", help="Detector pixels 'rows,cols' or one number."),
    pixel_spacing: str = typer.Option("1.5", "--pixel-spacing",
                                      help="Detector pixel size in mm, 'row,col' or one number."),
    sdd: float = typer.Option(1200.0, "--sdd", help="Source-detector distance, mm."),
    sid: float = typer.Option(1000.0, "--sid", help="Source-isocenter distance, mm."),
) -> None:
    """Simulate radiographs of a CT; per view writes radiograph, bone and tissue thickness (.npy + .png)."""
    with user_errors():
        import torch
        from tqdm import tqdm

        from xraysyn.data.ct_io import load_ct
        from xraysyn.geometry import ConeBeamGeometry, parse_angles
        from xraysyn.physics import (
            add_noise,
            display_image,
            material_density_volumes,
            material_names,
            radiograph_from_thickness,
            tube_spectrum,
        )
        from xraysyn.physics.materials import MaterialTable
        from xraysyn.physics.units import (
            areal_density_from_line_integral,
            hu_to_linear_attenuation,
            linear_attenuation_per_mm,
        )
        from xraysyn.projector import forward_project

        if mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
        if noise is not None and not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"--noise must be a positive number of photons per pixel, got {noise}")
        azimuths = parse_angles(azimuth)
        elevations = parse_angles(elevation)
        if len(elevations) not in (1, len(azimuths)):
            raise ValueError(f"--elevation gives {len(elevations)} angles but --azimuth {len(azimuths)}: "
                             "give one elevation or one per azimuth")
        if len(elevations) == 1:
            elevations = elevations * len(azimuths)
        geometry = ConeBeamGeometry(sdd=sdd, sid=sid, detector_shape=_pair(detector, "--detector", int),
                                    pixel_spacing=_pair(pixel_spacing, "--pixel-spacing", float))
        spectrum = tube_spectrum(kvp, detector="photon_counting" if photon_counting else "energy_integrating")
        ct = load_ct(ct_path)
        hu = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))[None, None]
        affine = torch.from_numpy(ct.world_from_voxel.astype(np.float32))
        poses = geometry.poses(azimuths, elevations)
        generator = torch.Generator().manual_seed(seed)
        if mode == "ct2xray":
            bone = torch.from_numpy(_load_mask(mask, bone_threshold, ct))[None, None]
            volumes = material_density_volumes(hu, bone, air_threshold_hu=air_threshold)
            materials = material_names(air_threshold)
        else:
            if mask is not None or bone_threshold is not None:
                raise ValueError("--mask/--bone-threshold only apply to --mode ct2xray")
            fluence_mean = tube_spectrum(kvp, detector="photon_counting").mean_energy_keV
            e_eff = fluence_mean if energy is None else energy
            mu_water = float(linear_attenuation_per_mm(MaterialTable.default().mass_attenuation("water", e_eff), 1.0))
            volumes = hu_to_linear_attenuation(hu, mu_water)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {str(out)!r} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for view, (az, el) in enumerate(tqdm(list(zip(azimuths, elevations)), desc="views", unit="view")):
            projected = forward_project(volumes, affine, poses[view:view + 1], geometry)
            stem = out / f"view_{view:03d}"
            if mode == "ct2xray":
                thickness = areal_density_from_line_integral(projected)
                result = radiograph_from_thickness(thickness, spectrum, materials=materials)
                i_atten = result.i_atten
                if noise is not None:
                    i_atten = add_noise(i_atten, noise, electronic_noise_photons=electronic_noise, generator=generator)
                radiograph = display_image(i_atten)
                maps = {"bone_thickness": thickness[0, 0], "tissue_thickness": thickness[0, 1]}
                if air_threshold is not None:
                    maps["air_thickness"] = thickness[0, 2]
            else:
                radiograph = projected
                if noise is not None:
                    noisy = add_noise(torch.exp(-projected), noise, electronic_noise_photons=electronic_noise,
                                      generator=generator)
                    radiograph = -torch.log(noisy.clamp_min(1.0 / noise))
                maps = {}
            for name, image in {"radiograph": radiograph[0, 0], **maps}.items():
                array = image.numpy().astype(np.float32)
                _save_npy(Path(f"{stem}_{name}.npy"), array)
                _save_png(Path(f"{stem}_{name}.png"), array)
            written.append({"view": view, "azimuth_deg": az, "elevation_deg": el, "files": sorted(
                f"{stem.name}_{n}.{ext}" for n in ("radiograph", *maps) for ext in ("npy", "png"))})
        manifest = {
            "ct": str(ct_path), "mode": mode, "kvp": kvp,
            "detector_weighting": "photon_counting" if photon_counting else "energy_integrating",
            "spectrum_mean_energy_keV": spectrum.mean_energy_keV, "air_threshold_hu": air_threshold,
            "units": {"radiograph": "ct2xray: max(I_atten) - I_atten (relative to the open beam); "
                                    "drr: line integral of mu (dimensionless)",
                      "thickness": "g/cm^2"},
            "geometry": {"sdd_mm": sdd, "sid_mm": sid, "detector_shape": list(geometry.detector_shape),
                         "pixel_spacing_mm": list(geometry.pixel_spacing)},
            "noise_photons_per_pixel": noise, "electronic_noise_photons": electronic_noise, "seed": seed,
            "views": written,
        }
        atomic_write(out / "simulation.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
        typer.echo(f"wrote {len(written)} view(s) to {out}")
