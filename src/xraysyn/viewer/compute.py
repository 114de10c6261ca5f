"""The viewer's computation of one study, run once per upload in a worker thread: every view the page can show,
encoded as PNG and cached in the :class:`~xraysyn.viewer.sessions.Study`, then the download files.

Views: :data:`AZIMUTHS_DEG` (and :data:`ELEVATIONS_DEG` when the elevation sweep is asked for), view index
``i_el * len(AZIMUTHS_DEG) + i_az``. Image kinds (:data:`KINDS`): per view ``novel`` (the 2DRN's radiograph),
``novel_suppressed`` (the same view with its bone attenuating as soft tissue,
:meth:`~xraysyn.synthesis.model.SynthesisResult.suppressed_views`) and ``unrefined`` (the 3DPN's view), at the
model's size S; at the input view only ``original`` (the input's crop),
``bone`` (what bone adds, scaled to its maximum) and ``suppressed`` (Algorithm 1 at full resolution), over the
same crop window at up to :data:`DISPLAY_SIDE` pixels. All PNGs are 8-bit grey of images in ``[0, 1]``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xraysyn.data.radiograph import Radiograph
from xraysyn.synthesis.inputs import InputImageError, as_radiograph, check_frontal_chest
from xraysyn.viewer.sessions import Study

__all__ = ["AZIMUTHS_DEG", "ELEVATIONS_DEG", "KINDS", "PER_VIEW_KINDS", "INPUT_VIEW_KINDS", "DISPLAY_SIDE",
           "DOWNLOADS", "load_upload", "view_grid", "run_study", "png_bytes"]

#: Azimuths of the slider, degrees: the paper's test protocol, 21 views evenly from -9 to 9 degrees (the
#: official release's test views; DESIGN.md).
AZIMUTHS_DEG = tuple(round(-9.0 + 0.9 * i, 6) for i in range(21))
#: Elevations of the optional second slider, degrees: the same ±9 degree range (stage 2 trained T' within
#: ±0.05 π = ±9 degrees) in 4.5 degree steps, 5 rows of views (5x the work of the azimuth sweep alone).
ELEVATIONS_DEG = (-9.0, -4.5, 0.0, 4.5, 9.0)
PER_VIEW_KINDS = ("novel", "novel_suppressed", "unrefined")
INPUT_VIEW_KINDS = ("original", "bone", "suppressed")
KINDS = INPUT_VIEW_KINDS + PER_VIEW_KINDS
#: Largest side (pixels) of the input-view images sent to the page (the crop of a full-size CR is ~1800 px;
#: the page shows 512 CSS pixels).
DISPLAY_SIDE = 512
#: The downloads: name → (folder of the study, file or ``None`` for a zip of the folder's PNGs), description.
DOWNLOADS = {
    "views.zip": ("synthesis", None, "every PNG: novel and 3DPN views, input view, thickness maps, figure"),
    "sweep.gif": ("synthesis", "sweep.gif", "animation of the novel views"),
    "ct.nii.gz": ("synthesis", "ct.nii.gz", "estimated CT, HU (NIfTI)"),
    "suppressed.dcm": ("suppression", "suppressed.dcm", "bone-suppressed radiograph (DICOM, full resolution)"),
    "suppressed.png": ("suppression", "suppressed.png", "bone-suppressed radiograph (PNG, full resolution)"),
}
# Progress fractions at the end of each stage (synthesis in steps up to SYNTHESIS_END).
SYNTHESIS_END, SUPPRESSION_END, IMAGES_END = 0.7, 0.85, 1.0


def load_upload(path: Path, name: str, *, check_view: bool) -> Radiograph:
    """Read and check an uploaded file (:func:`~xraysyn.synthesis.inputs.as_radiograph`, and
    :func:`~xraysyn.synthesis.inputs.check_frontal_chest` with ``check_view``).

    Raises:
        InputImageError: the file is unusable; the message names ``name`` (never the server's path).
    """
    try:
        radiograph = as_radiograph(path, name=name)
        if check_view:
            check_frontal_chest(radiograph, name=name)
    except InputImageError as error:
        raise InputImageError(str(error).replace(str(path), name)) from None
    return radiograph


def view_grid(elevation_sweep: bool) -> tuple[list[float], list[float]]:
    """The slider's azimuths and elevations (degrees)."""
    return list(AZIMUTHS_DEG), list(ELEVATIONS_DEG) if elevation_sweep else [0.0]


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W)`` image in ``[0, 1]`` → 8-bit grey PNG bytes (values outside ``[0, 1]`` clipped)."""
    from PIL import Image

    pixels = np.round(np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0, 1.0) * 255.0)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _display_crop(image: np.ndarray, crop) -> np.ndarray:
    """The crop window of a full-resolution ``(H, W)`` image, area-averaged to at most DISPLAY_SIDE square."""
    window = image[crop.row0:crop.row0 + crop.crop_rows, crop.col0:crop.col0 + crop.crop_cols]
    side = min(DISPLAY_SIDE, max(window.shape))
    tensor = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None, None]
    mode = "area" if side <= min(window.shape) else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(tensor, size=(side, side), mode=mode, **kwargs)[0, 0].numpy()


class Cancelled(Exception):
    """The study was dropped (session ended, server stopping) while it computed."""


def _check(study: Study) -> None:
    if study.cancelled.is_set():
        raise Cancelled


def run_study(model, study: Study, radiograph: Radiograph, *, elevation_sweep: bool) -> None:
    """Compute everything the page shows for ``study`` and write its downloads; never raises.

    The study's state becomes ``done`` as soon as its images are cached; its ``files`` entry of ``info`` becomes
    ``ready`` once the download files are written (or ``error``); ``error`` state with a message when the
    computation failed. A study cancelled meanwhile (dropped, its session ended) stops at the next step and
    whatever it wrote after its folder was removed is removed again.
    """
    try:
        _run(model, study, radiograph, elevation_sweep)
    finally:
        if study.cancelled.is_set():
            shutil.rmtree(study.folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                study.folder.parent.rmdir()  # only when empty: a session folder the writers re-created


def _run(model, study: Study, radiograph: Radiograph, elevation_sweep: bool) -> None:
    try:
        study.update(state="running", progress=0.02, stage="estimating the CT and the novel views")
        result = _synthesize(model, study, radiograph, elevation_sweep)
        study.update(stage="bone suppression at full resolution")
        suppression = model.suppress_bones([radiograph], check_view=False)[0]
        _check(study)
        study.update(progress=SUPPRESSION_END, stage="preparing the images")
        _cache_images(study, result, suppression)
        study.info.update(model=model.name, refined=bool(result.refined), files="writing", image_size=model.image_size)
        study.update(state="done", progress=IMAGES_END, stage="done")
    except Cancelled:
        return
    except Exception as error:  # noqa: BLE001 - the worker thread reports every failure to the page
        study.error = _first_line(error)
        study.update(state="error", stage="failed")
        return
    try:
        _write_downloads(model, study, result, suppression)
        study.info["files"] = "ready"
    except Cancelled:
        return
    except Exception as error:  # noqa: BLE001 - as above; the views stay usable
        study.info["files"] = f"error: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _synthesize(model, study: Study, radiograph: Radiograph, elevation_sweep: bool):
    """Every view of the grid in one call (the 3DPN runs once), reporting progress per group of views."""
    azimuths, elevations = view_grid(elevation_sweep)
    study.azimuth_deg, study.elevation_deg = azimuths, elevations
    grid = [(a, e) for e in elevations for a in azimuths]

    def view_progress(done: int, total: int) -> None:  # total counts the input view, computed first
        _check(study)
        study.update(progress=SYNTHESIS_END * done / total,
                     stage=f"novel views {max(0, done - 1)} of {len(grid)}")

    _check(study)
    return model.synthesize([radiograph], [a for a, _ in grid], [e for _, e in grid], check_view=False,
                            view_progress=view_progress)


def _cache_images(study: Study, result, suppression) -> None:
    images: dict[tuple[str, int], bytes] = {}
    suppressed_views = result.suppressed_views(1.0)
    for v in range(result.views.shape[1]):
        images[("novel", v)] = png_bytes(result.views[0, v].numpy())
        images[("novel_suppressed", v)] = png_bytes(suppressed_views[0, v].numpy())
        images[("unrefined", v)] = png_bytes(result.unrefined[0, v].numpy())
    crop = result.crops[0]
    bone = suppression.bone_image.clip(0.0, None)
    peak = float(bone.max())
    images[("original", 0)] = png_bytes(_display_crop(suppression.original, crop))
    images[("suppressed", 0)] = png_bytes(_display_crop(suppression.suppressed, crop))
    images[("bone", 0)] = png_bytes(_display_crop(bone / peak if peak > 0 else bone, crop))
    study.images = images
    study.info["bone_image_peak"] = peak


def _write_downloads(model, study: Study, result, suppression) -> None:
    from xraysyn.synthesis.writers import write_suppression, write_synthesis

    meta = {"name": model.name, "source": Path(str(model.source)).name}
    write_synthesis(result, 0, study.folder / "synthesis", model=meta)
    _check(study)
    write_suppression(suppression, study.folder / "suppression", dicom=True, model=meta)
    _check(study)
    downloads = {}
    for name, (folder, file, _) in DOWNLOADS.items():
        source = study.folder / folder
        if file is None:
            target = study.folder / name
            with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
                for png in sorted(source.glob("*.png")):
                    archive.write(png, arcname=png.name)
            downloads[name] = target
        elif (source / file).is_file():
            downloads[name] = source / file
    study.downloads = downloads
