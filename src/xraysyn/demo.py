"""The demo: CT2Xray views, bone/tissue decomposition and bone suppression of a real chest CT,
next to a real chest radiograph prepared the way the paper prepares its inputs.

``xraysyn demo`` runs it on the example data (see ``xraysyn data example``); the function here
takes explicit paths so it also runs on your own CT.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xraysyn.imageio import atomic_write, save_npy, save_png, window_to_uint8
from xraysyn.memory import FLOAT32_BYTES, require_memory
from xraysyn.outputs import check_output_folder, staged_output_folder

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (defaults: the paper's 128³ CT and a 256² detector)."""

    cube_size: int = 128
    detector: int = 256
    pixel_spacing_mm: float = 1.6
    azimuths_deg: tuple[float, ...] = (-18.0, -9.0, 0.0, 9.0, 18.0)
    kvp: float = 120.0
    radiograph_size: int = 256

    def __post_init__(self):
        for name in ("cube_size", "detector", "radiograph_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < MIN_SIZE[name]:
                raise ValueError(f"{name} must be an integer >= {MIN_SIZE[name]}, got {value!r}")
        for name in ("pixel_spacing_mm", "kvp"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not self.azimuths_deg or not all(math.isfinite(a) for a in self.azimuths_deg):
            raise ValueError(f"azimuths_deg must be one or more finite angles, got {self.azimuths_deg!r}")

    def memory_estimate_bytes(self) -> int:
        """Bytes the simulation holds at its peak: all views at once plus the preprocessed cube."""
        views = len(self.azimuths_deg) * self.detector**2 * DEMO_FLOATS_PER_VIEW_PIXEL
        cube = self.cube_size**3 * DEMO_FLOATS_PER_CUBE_VOXEL
        return (views + cube) * FLOAT32_BYTES


MIN_SIZE = {"cube_size": 8, "detector": 1, "radiograph_size": 1}
"""Smallest accepted sizes (voxels per side, pixels per side)."""
DEMO_FLOATS_PER_VIEW_PIXEL = 16
"""float32 values per detector pixel and view held by the demo: ray set-up (8), the two material
projections and thickness maps, transmission, line integral, display image, picture copies."""
DEMO_FLOATS_PER_CUBE_VOXEL = 6
"""float32 values per voxel of the cube: HU, bone mask, two material densities and their copies."""


def _montage(tiles: list[tuple[str, np.ndarray]], columns: int, tile: int) -> np.ndarray:
    """Grey tiles with captions on one RGB canvas, ``(H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    caption = 18
    rows = (len(tiles) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, (title, pixels) in enumerate(tiles):
        r, c = divmod(n, columns)
        image = Image.fromarray(pixels).resize((tile, tile), Image.BILINEAR).convert("RGB")
        canvas.paste(image, (c * tile, r * (tile + caption) + caption))
        draw.text((c * tile + 4, r * (tile + caption) + 3), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def run_demo(out_dir: str | Path, ct_path: str | Path, *, labels_path: str | Path | None = None,
             structures_path: str | Path | None = None, radiograph_path: str | Path | None = None,
             config: DemoConfig = DemoConfig(), progress: bool = True, overwrite: bool = False) -> dict:
    """Simulate views of a CT, decompose bone/tissue, suppress bone; prepare a real radiograph.

    Writes into ``out_dir``: ``montage.png`` (everything at a glance), per-view
    ``view_<az>.png``/``.npy``, ``bone_thickness.png``, ``tissue_thickness.png``,
    ``bone_suppressed.png``, ``bone_image.png``, ``radiograph.png`` (if given) and
    ``summary.json`` (settings, timings, bone-mask Dice). Returns the summary.

    The folder is written as a whole: into a temporary sibling moved into place at the end; an
    existing non-empty ``out_dir`` is refused (``OutputExistsError``) unless ``overwrite``, which
    replaces it. The memory the configuration needs is checked first (``MemoryLimitError``).
    """
    check_output_folder(out_dir, overwrite=overwrite, option="out_dir")
    require_memory(config.memory_estimate_bytes(), f"the demo ({len(config.azimuths_deg)} views of "
                   f"{config.detector}x{config.detector}, a {config.cube_size}^3 cube)")
    with staged_output_folder(out_dir, overwrite=overwrite, option="out_dir") as staging:
        return _run_demo(staging, ct_path, labels_path=labels_path, structures_path=structures_path,
                         radiograph_path=radiograph_path, config=config, progress=progress)


def _run_demo(out: Path, ct_path, *, labels_path, structures_path, radiograph_path, config: DemoConfig,
              progress: bool) -> dict:
    from tqdm import tqdm

    from xraysyn.data.bone_mask import bone_mask_from_hu, bone_mask_from_labels, dice
    from xraysyn.data.ct_io import load_ct
    from xraysyn.data.preprocess import preprocess_ct
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.physics import ct2xray, suppress_bone, tube_spectrum

    timings: dict[str, float] = {}
    steps = tqdm(total=5, desc="demo", unit="step", disable=not progress)

    start = time.perf_counter()
    ct = load_ct(ct_path)
    threshold_mask = bone_mask_from_hu(ct.hu, ct.spacing_mm)
    summary: dict = {"ct": str(ct_path), "ct_shape": list(ct.shape), "ct_spacing_mm": list(ct.spacing_mm)}
    if labels_path is not None:
        labels = load_ct(labels_path).hu
        bone = bone_mask_from_labels(labels, structures_path)
        summary["bone_mask"] = "labels"
        summary["dice_threshold_vs_labels"] = round(dice(threshold_mask, bone), 4)
    else:
        bone = threshold_mask
        summary["bone_mask"] = "threshold"
    cube, bone_cube = preprocess_ct(ct, bone, size=config.cube_size)
    timings["load_and_preprocess_s"] = time.perf_counter() - start
    steps.update()

    start = time.perf_counter()
    geometry = ConeBeamGeometry(detector_shape=(config.detector, config.detector),
                                pixel_spacing=config.pixel_spacing_mm)
    hu = torch.from_numpy(np.ascontiguousarray(cube.hu, dtype=np.float32))[None, None]
    mask = torch.from_numpy(bone_cube.astype(np.float32))[None, None]
    affine = torch.from_numpy(cube.world_from_voxel.astype(np.float32))
    poses = geometry.poses(torch.tensor(config.azimuths_deg))
    spectrum = tube_spectrum(config.kvp)
    with torch.no_grad():
        sim = ct2xray(hu, mask, affine, poses, geometry, spectrum)
    timings["ct2xray_s"] = time.perf_counter() - start
    steps.update()

    start = time.perf_counter()
    frontal = config.azimuths_deg.index(0.0) if 0.0 in config.azimuths_deg else len(config.azimuths_deg) // 2
    with torch.no_grad():
        suppressed = suppress_bone(sim.image[frontal:frontal + 1], sim.thickness[frontal:frontal + 1], spectrum,
                                   factor=1.0)
    timings["bone_suppression_s"] = time.perf_counter() - start
    steps.update()

    # .npy files keep the paper's linear display image (eq. 5); the pictures show -log(I_atten),
    # the log-domain view radiograph displays use, so thick and thin regions both keep contrast.
    tiles: list[tuple[str, np.ndarray]] = []
    log_views = sim.line_integral[:, 0].numpy()
    window = tuple(np.percentile(log_views, (0.5, 99.5)))  # one window for all views: comparable
    for az, image, log_image in zip(config.azimuths_deg, sim.image[:, 0].numpy(), log_views):
        name = f"view_az{az:+05.1f}"
        save_npy(image, out / f"{name}.npy")
        save_png(log_image, out / f"{name}.png", window=window)
        tiles.append((f"CT2Xray az {az:+.0f} deg", window_to_uint8(log_image, window)))
    log_suppressed = -torch.log(suppressed.suppressed_atten[0, 0].clamp_min(torch.finfo(torch.float64).tiny)).numpy()
    maps = {
        "bone_thickness": sim.thickness[frontal, 0].numpy(),
        "tissue_thickness": sim.thickness[frontal, 1].numpy(),
        "bone_image": suppressed.bone_image[0, 0].numpy(),
        "bone_suppressed": suppressed.suppressed[0, 0].numpy(),
    }
    for name, image in maps.items():
        save_npy(image, out / f"{name}.npy")
    pictures = {
        "bone_thickness": (maps["bone_thickness"], None),
        "tissue_thickness": (maps["tissue_thickness"], None),
        "bone_image": (log_views[frontal] - log_suppressed, None),
        "bone_suppressed": (log_suppressed, window),
    }
    for name, (image, win) in pictures.items():
        save_png(image, out / f"{name}.png", window=win)
    captions = {"bone_thickness": "bone g/cm2 (frontal)", "tissue_thickness": "tissue g/cm2 (frontal)",
                "bone_image": "bone image (Alg. 1)", "bone_suppressed": "bone suppressed (Alg. 1)"}
    tiles += [(captions[n], window_to_uint8(img, win)) for n, (img, win) in pictures.items()]
    steps.update()

    if radiograph_path is not None:
        from xraysyn.data.radiograph import crop_and_resize, load_radiograph

        radiograph = load_radiograph(radiograph_path)
        prepared, transform = crop_and_resize(radiograph.image, config.radiograph_size, mode="body")
        save_png(prepared, out / "radiograph.png", window=(0.0, 1.0))
        tiles.append(("real CR, cropped 256", window_to_uint8(prepared, (0.0, 1.0))))
        summary["radiograph"] = str(radiograph_path)
        summary["radiograph_shape"] = list(radiograph.image.shape)
    montage = _montage(tiles, columns=5, tile=config.detector)
    from PIL import Image

    atomic_write(out / "montage.png", lambda tmp: Image.fromarray(montage).save(tmp, format="PNG"))
    steps.update()
    steps.close()

    summary.update({
        "cube_size": config.cube_size, "detector": config.detector, "pixel_spacing_mm": config.pixel_spacing_mm,
        "azimuths_deg": list(config.azimuths_deg), "kvp": config.kvp,
        "detector_weighted_mean_energy_keV": round(float(spectrum.mean_energy_keV), 2),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "outputs": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
    })
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary
