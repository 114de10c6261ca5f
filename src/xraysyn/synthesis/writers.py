"""Files of ``xraysyn synthesize`` and ``xraysyn suppress`` for one input, written into a folder that the caller
stages (:func:`xraysyn.outputs.staged_output_folder`): either every file of an input lands, or none.

``synthesize`` (per input): ``view_NN_az±A.A_el±E.E.png`` / ``.npy`` per view (the display radiograph in
``[0, 1]``), ``unrefined_NN_….png`` (the 3DPN's view), ``sweep.gif`` (the views forward and back),
``input_view.png`` (the synthesised input view) and ``input_crop.png``, ``bone_thickness.npy`` /
``tissue_thickness.npy`` ``(V, S, S)`` g/cm² and ``bone_T.png`` / ``tissue_T.png`` at the input view,
``ct.nii.gz`` (HU) and ``bone_mask.nii.gz`` (uint8) on the estimated grid, ``figure.png`` (paper Fig. 1 / Fig. 4:
input, novel views, bone estimate, bone suppression) and ``synthesis.json`` (angles, files, model).

``suppress`` (per input): ``suppressed.png`` and ``bone.png`` at the input's full resolution, 16-bit for inputs of
more than 8 bits, and with DICOM output ``suppressed.dcm`` / ``bone.dcm`` (derived images keeping the input's
patient and study identifiers), plus ``suppression.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xraysyn.atomic import atomic_write
from xraysyn.imageio import save_npy, save_png
from xraysyn.physics.suppression import suppress_bone
from xraysyn.synthesis.model import SuppressionResult, SynthesisResult

__all__ = ["view_stem", "write_synthesis", "write_suppression", "FIGURE_VIEWS", "GIF_FRAME_MS"]

#: Novel views shown in the figure (evenly spread over the requested ones, the extremes included).
FIGURE_VIEWS = 4
#: Display time of each frame of the sweep GIF, milliseconds.
GIF_FRAME_MS = 100
#: Display window of every radiograph PNG: the images are already in [0, 1].
UNIT_WINDOW = (0.0, 1.0)


def view_stem(index: int, azimuth_deg: float, elevation_deg: float) -> str:
    """``view_03_az-4.5_el+0.0``: sortable, and the angles readable in the name."""
    return f"view_{index:02d}_az{azimuth_deg:+.1f}_el{elevation_deg:+.1f}"


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, default=float)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _figure_indices(count: int) -> list[int]:
    if count <= FIGURE_VIEWS:
        return list(range(count))
    return sorted({round(i * (count - 1) / (FIGURE_VIEWS - 1)) for i in range(FIGURE_VIEWS)})


def write_synthesis(result: SynthesisResult, index: int, folder: Path, *, model: dict | None = None) -> list[Path]:
    """Every file of input ``index`` of ``result`` into ``folder``; returns the paths written."""
    from xraysyn.data.ct_io import write_nifti_array
    from xraysyn.train.animation import save_view_sweep_gif
    from xraysyn.train.figures import save_sample_grid

    folder = Path(folder)
    written: list[Path] = []
    azimuth, elevation = result.azimuth_deg.tolist(), result.elevation_deg.tolist()
    views = result.views[index].numpy()
    unrefined = result.unrefined[index].numpy()
    files = []
    for v, (a, e) in enumerate(zip(azimuth, elevation)):
        stem = view_stem(v, a, e)
        written.append(save_png(views[v], folder / f"{stem}.png", window=UNIT_WINDOW))
        written.append(save_npy(views[v].astype(np.float32), folder / f"{stem}.npy"))
        written.append(save_png(unrefined[v], folder / f"un{stem.replace('view', 'refined')}.png", window=UNIT_WINDOW))
        files.append({"azimuth_deg": a, "elevation_deg": e, "png": f"{stem}.png", "npy": f"{stem}.npy"})
    sweep = list(range(len(azimuth))) + list(range(len(azimuth) - 2, 0, -1))  # forward and back
    written.append(save_view_sweep_gif(folder / "sweep.gif", [views[v] for v in sweep], duration_ms=GIF_FRAME_MS,
                                       labels=[f"azimuth {azimuth[v]:+.1f}°" for v in sweep]))
    written.append(save_png(result.input_view[index].numpy(), folder / "input_view.png", window=UNIT_WINDOW))
    written.append(save_png(result.input_crop[index].numpy(), folder / "input_crop.png", window=UNIT_WINDOW))
    written.append(save_npy(result.bone_thickness[index].numpy(), folder / "bone_thickness.npy"))
    written.append(save_npy(result.tissue_thickness[index].numpy(), folder / "tissue_thickness.npy"))
    bone_t, tissue_t = result.input_thickness[index, 0].numpy(), result.input_thickness[index, 1].numpy()
    written.append(save_png(bone_t, folder / "bone_T.png"))
    written.append(save_png(tissue_t, folder / "tissue_T.png"))
    affine = result.world_from_voxel.numpy()
    written.append(write_nifti_array(result.ct_hu[index].numpy().astype(np.float32), affine, folder / "ct.nii.gz"))
    written.append(write_nifti_array(result.bone_mask[index].numpy().astype(np.uint8), affine,
                                     folder / "bone_mask.nii.gz"))
    # The figure's suppression at the model's resolution (`xraysyn suppress` does it at full resolution).
    crop = result.input_crop[index][None, None].double()
    suppressed = suppress_bone(crop, result.input_thickness[index][None].double(), factor=1.0).suppressed
    shown = _figure_indices(len(azimuth))
    rows = [
        ("input view T", [("input (crop)", result.input_crop[index].numpy()),
                          ("synthesised T", result.input_view[index].numpy()),
                          ("bone estimate t_bone g/cm²", bone_t),
                          ("bone-suppressed", suppressed[0, 0].clamp(0, 1).float().numpy())]),
        ("novel views", [(f"azimuth {azimuth[v]:+.1f}°", views[v]) for v in shown]),
    ]
    if result.refined:
        rows.append(("3DPN only", [(f"azimuth {azimuth[v]:+.1f}°", unrefined[v]) for v in shown]))
    written.append(save_sample_grid(folder / "figure.png", rows, title=Path(result.names[index]).name))
    record = {"input": result.names[index], "views": files, "crop": result.crops[index].__dict__,
              "thickness_units": "g/cm^2 (bone, tissue)", "ct": "ct.nii.gz (HU)",
              "bone_mask": "bone_mask.nii.gz (probability > 0.5)", "model": model or {}}
    _write_json(folder / "synthesis.json", record)
    written.append(folder / "synthesis.json")
    return written


def write_suppression(result: SuppressionResult, folder: Path, *, dicom: bool, model: dict | None = None
                      ) -> list[Path]:
    """The suppressed radiograph and the bone image of one input into ``folder`` (PNG like the input's depth, and
    DICOM derived images with ``dicom``); returns the paths written."""
    from xraysyn.synthesis.image_output import output_bits, save_png_like_input, write_derived_dicom

    folder = Path(folder)
    bits = output_bits(result.radiograph)
    # The bone image is what bone added: scaled by its own maximum so that it is visible.
    bone = result.bone_image.clip(0.0, None)
    peak = float(bone.max())
    bone_display = bone / peak if peak > 0 else bone
    written = [save_png_like_input(result.suppressed, folder / "suppressed.png", bits=bits),
               save_png_like_input(bone_display, folder / "bone.png", bits=bits)]
    if dicom:
        source_path = result.radiograph.meta.get("source")
        written.append(write_derived_dicom(folder / "suppressed.dcm", result.suppressed, result.radiograph,
                                           source_path=source_path, description="bone-suppressed (XraySyn)",
                                           derivation=f"bone suppression by reverse CT2Xray, strength "
                                                      f"{result.strength:g}"))
        written.append(write_derived_dicom(folder / "bone.dcm", bone_display, result.radiograph,
                                           source_path=source_path, description="bone image (XraySyn)",
                                           derivation="bone image (input minus bone-suppressed), scaled to its "
                                                      "maximum"))
    record = {"input": result.name, "strength": result.strength, "bits": bits, "crop": result.crop.__dict__,
              "bone_image_scale": {"png_value_1_equals": peak}, "files": [p.name for p in written],
              "model": model or {}}
    _write_json(folder / "suppression.json", record)
    return written + [folder / "suppression.json"]
