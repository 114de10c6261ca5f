"""``xraysyn simulate``: radiographs (CT2Xray or DRR) and bone/tissue thickness maps of a CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from xraysyn.cli import app
from xraysyn.cli.common import reduce_angles_deg, require_finite, user_errors
from xraysyn.imageio import atomic_write, save_npy, save_png

MODES = ("ct2xray", "drr")
AFFINE_ATOL_MM = 1e-3
"""Largest affine difference (mm) accepted between the CT and a mask read from another file."""
SIMULATE_FLOATS_PER_PIXEL = 24
"""float32 values held per detector pixel while one view is simulated: the projector's ray set-up
(origin, direction, entry/exit: 8), up to 3 material projections and 3 thickness maps, the
transmission, its float64 noisy copy (2 + 2), line integral, display image and the output copies."""


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
    out: Path = typer.Option(..., "--out", help="Output folder (created; a non-empty one needs --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder as a whole."),
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
                                help="Add Poisson noise for this many unattenuated photons per pixel "
                                     "(at most 2**62 ≈ 4.6e18, the range of the Poisson sampler)."),
    electronic_noise: float = typer.Option(0.0, "--electronic-noise", help="Gaussian read-out noise σ in photons."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    detector: str = typer.Option("256", "--detector", help="Detector pixels 'rows,cols' or one number."),
    pixel_spacing: str = typer.Option("1.5", "--pixel-spacing",
                                      help="Detector pixel size in mm, 'row,col' or one number."),
    sdd: float = typer.Option(1200.0, "--sdd", help="Source-detector distance, mm."),
    sid: float = typer.Option(1000.0, "--sid", help="Source-isocenter distance, mm."),
) -> None:
    """Simulate radiographs of a CT; per view writes the display radiograph, the transmission I/I0,
    the line integral -log(I/I0) and (ct2xray) bone and tissue thickness (.npy, and .png pictures)."""
    with user_errors():
        import torch
        from tqdm import tqdm

        from xraysyn.data.ct_io import load_ct
        from xraysyn.geometry import ConeBeamGeometry, parse_angles
        from xraysyn.memory import FLOAT32_BYTES, require_memory
        from xraysyn.outputs import check_output_folder, staged_output_folder
        from xraysyn.physics import (
            add_noise,
            display_image,
            material_density_volumes,
            material_names,
            radiograph_from_thickness,
            tube_spectrum,
        )
        from xraysyn.physics.materials import MaterialTable
        from xraysyn.physics.noise import MAX_EXPECTED_COUNT_CPU
        from xraysyn.physics.units import (
            areal_density_from_line_integral,
            hu_to_linear_attenuation,
            linear_attenuation_per_mm,
        )
        from xraysyn.projector import forward_project

        # Every option is checked before the CT is read or anything is written.
        if mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
        require_finite(noise, "--noise", minimum=0.0, strict_minimum=True, maximum=MAX_EXPECTED_COUNT_CPU,
                       unit="photons per pixel")
        require_finite(electronic_noise, "--electronic-noise", minimum=0.0, unit="photons")
        require_finite(bone_threshold, "--bone-threshold", unit="HU")
        require_finite(air_threshold, "--air-threshold", unit="HU")
        require_finite(energy, "--energy", minimum=0.0, strict_minimum=True, unit="keV")
        if mask is not None and bone_threshold is not None:
            raise ValueError("give either --mask or --bone-threshold, not both")
        if mode == "drr" and (mask is not None or bone_threshold is not None):
            raise ValueError("--mask/--bone-threshold only apply to --mode ct2xray")
        if mode == "drr" and air_threshold is not None:
            raise ValueError("--air-threshold only applies to --mode ct2xray (the DRR integrates mu of every voxel)")
        if mode == "ct2xray" and energy is not None:
            raise ValueError("--energy only applies to --mode drr (ct2xray integrates over the --kvp spectrum)")
        if electronic_noise > 0 and noise is None:
            raise ValueError("--electronic-noise needs --noise (the photons per pixel it is added to)")
        if mask is not None and not mask.exists():
            raise FileNotFoundError(f"--mask {str(mask)!r} does not exist")
        if not ct_path.exists():
            raise FileNotFoundError(f"CT {str(ct_path)!r} does not exist")
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
        check_output_folder(out, overwrite=overwrite)
        rows, cols = geometry.detector_shape
        require_memory(rows * cols * SIMULATE_FLOATS_PER_PIXEL * FLOAT32_BYTES,
                       f"one {rows}x{cols} view (--detector)")

        ct = load_ct(ct_path)
        hu = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))[None, None]
        affine = torch.from_numpy(ct.world_from_voxel.astype(np.float32))
        poses = geometry.poses(reduce_angles_deg(azimuths), reduce_angles_deg(elevations))
        generator = torch.Generator().manual_seed(seed)
        if mode == "ct2xray":
            bone = torch.from_numpy(_load_mask(mask, bone_threshold, ct))[None, None]
            volumes = material_density_volumes(hu, bone, air_threshold_hu=air_threshold)
            materials = material_names(air_threshold)
        else:
            fluence_mean = tube_spectrum(kvp, detector="photon_counting").mean_energy_keV
            e_eff = fluence_mean if energy is None else energy
            mu_water = float(linear_attenuation_per_mm(MaterialTable.default().mass_attenuation("water", e_eff), 1.0))
            volumes = hu_to_linear_attenuation(hu, mu_water)
        written = []
        with staged_output_folder(out, overwrite=overwrite) as staging:
            for view, (az, el) in enumerate(tqdm(list(zip(azimuths, elevations)), desc="views", unit="view")):
                projected = forward_project(volumes, affine, poses[view:view + 1], geometry)
                if mode == "ct2xray":
                    thickness = areal_density_from_line_integral(projected)
                    result = radiograph_from_thickness(thickness, spectrum, materials=materials)
                    transmission, line_integral = result.i_atten, result.line_integral
                    maps = {"bone_thickness": thickness[0, 0], "tissue_thickness": thickness[0, 1]}
                    if air_threshold is not None:
                        maps["air_thickness"] = thickness[0, 2]
                else:
                    transmission, line_integral = torch.exp(-projected), projected
                    maps = {}
                if noise is not None:
                    transmission = add_noise(transmission, noise, electronic_noise_photons=electronic_noise,
                                             generator=generator)
                    line_integral = -torch.log(transmission.clamp_min(1.0 / noise))
                radiograph = display_image(transmission) if mode == "ct2xray" else line_integral
                images = {"radiograph": radiograph[0, 0], "transmission": transmission[0, 0],
                          "line_integral": line_integral[0, 0], **maps}
                stem = f"view_{view:03d}"
                for name, image in images.items():
                    array = image.numpy().astype(np.float32)
                    _save_npy(staging / f"{stem}_{name}.npy", array)
                    _save_png(staging / f"{stem}_{name}.png", array)
                written.append({"view": view, "azimuth_deg": az, "elevation_deg": el, "files": sorted(
                    f"{stem}_{n}.{ext}" for n in images for ext in ("npy", "png"))})
            manifest = {
                "ct": str(ct_path), "mode": mode, "kvp": kvp,
                "detector_weighting": "photon_counting" if photon_counting else "energy_integrating",
                "spectrum_mean_energy_keV": spectrum.mean_energy_keV, "air_threshold_hu": air_threshold,
                "outputs": {
                    "radiograph": "ct2xray: display image max(I) - I of the transmission (paper eq. 5); "
                                  "drr: the line integral",
                    "transmission": "I/I0, transmitted fraction of the unattenuated beam in [0, 1] "
                                    "(ct2xray: spectrum-weighted; with --noise: the noisy fraction)",
                    "line_integral": "-log(I/I0), dimensionless (with --noise: I/I0 clamped to one photon, "
                                     "1/noise, before the log)",
                    "bone_thickness, tissue_thickness, air_thickness": "areal density along the ray, g/cm^2",
                    "*.npy": "float32 (rows, cols); *.png: 8-bit pictures min-max scaled per image",
                },
                "geometry": {"sdd_mm": sdd, "sid_mm": sid, "detector_shape": list(geometry.detector_shape),
                             "pixel_spacing_mm": list(geometry.pixel_spacing)},
                "noise_photons_per_pixel": noise, "electronic_noise_photons": electronic_noise, "seed": seed,
                "views": written,
            }
            atomic_write(staging / "simulation.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))
        typer.echo(f"wrote {len(written)} view(s) to {out}")
