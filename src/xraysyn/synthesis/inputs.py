"""The inputs of :meth:`XraySyn.synthesize` and ``xraysyn synthesize``: coercion to :class:`Radiograph` and the
recognition of inputs the pipeline cannot use.

One radiograph may be given as

* a path (``str`` / ``os.PathLike``) of a DICOM CR/DX, PNG, JPEG, TIFF or BMP file, read with
  :func:`~xraysyn.data.radiograph.load_radiograph` (its display convention: ``[0, 1]``, bright = attenuating);
* a :class:`~xraysyn.data.radiograph.Radiograph` (a ``load_radiograph`` result), used as it is;
* a numpy array or torch tensor of any real dtype, shape ``(H, W)``, ``(1, H, W)``, ``(1, 1, H, W)``, or
  grayscale stored as colour ``(H, W, 3|4)`` / ``(3|4, H, W)`` with equal colour channels (a 4th channel is
  alpha and ignored). It is min–max normalised to ``[0, 1]``; it **must already follow the radiograph display
  convention: bright = more attenuation** (bone white, lungs dark). A transmission image ``I/I0`` or a negative
  must be converted first (``-log(I/I0)``, or ``1 - image``).

Every route ends in the same checks (:class:`InputImageError` naming the input and the fault): a 2-D image,
finite, not constant, each side at least :data:`MIN_SYNTHESIS_SIDE` pixels. :func:`check_frontal_chest`
recognises images that are not frontal chest views (mainly lateral views) by :func:`frontal_view_score`;
:func:`prepare_inputs` runs everything per item of a batch, expanding folders with
:func:`expand_input_paths`, so one bad input does not stop the others. The measurements behind the view
threshold are in ``docs/synthesis_inputs.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from xraysyn.data.radiograph import RADIOGRAPH_SUFFIXES, Radiograph, RadiographReadError, load_radiograph

__all__ = [
    "InputImageError",
    "as_radiograph",
    "check_frontal_chest",
    "frontal_view_score",
    "prepare_inputs",
    "expand_input_paths",
    "MIN_SYNTHESIS_SIDE",
    "FRONTAL_SCORE_THRESHOLD",
]

#: Smallest image side (pixels) accepted for synthesis. 64 px is the detector of the smallest trained model
#: (the ``cpu64`` preset, :mod:`xraysyn.train.prior_config`); a smaller image would reach the 3DPN upsampled,
#: with less detail than any model was trained on, and it is also the side :func:`frontal_view_score` works at.
#: (``load_radiograph`` itself accepts anything from ``MIN_IMAGE_SIDE`` = 2 px.)
MIN_SYNTHESIS_SIDE = 64

# --- the frontal-view statistic (see frontal_view_score; numbers measured in docs/synthesis_inputs.md)
#: Images are first area-averaged so that their longer side is at most this many pixels (speed only: the
#: statistic is computed at VIEW_CHECK_SIDE pixels anyway).
VIEW_CHECK_MAX_WORK_SIDE = 256
#: Side (pixels) of the square body crop the statistic is computed on.
VIEW_CHECK_SIDE = 64
#: Margin of the body crop (fraction of the body width), the default of RadiographFolderDataset's crop.
VIEW_CHECK_CROP_MARGIN = 0.05
#: Rows (fractions of the crop height, top = 0) averaged into the column profile: the band where both lung
#: fields of a frontal view lie in the 50 TBX11K frontal radiographs and in simulated frontal views.
LUNG_ROWS = (0.15, 0.60)
#: Columns (fractions of the crop width) where the midline peak (spine + mediastinum) may lie; the
#: measured TBX11K peaks lie at 0.49-0.57.
MIDLINE_BAND = (0.30, 0.70)
#: Columns (fractions of the crop width) searched for the darkest point of each lung field; this leaves out
#: the chest wall and the air beside the body, which are no lung.
LUNG_COLUMNS = (0.15, 0.85)
#: Width of the moving average smoothing the column profile, fraction of the crop width (4 px of 64).
PROFILE_SMOOTHING = 1.0 / 16.0
#: Frontal views score at least this (:func:`frontal_view_score`). Measured (docs/synthesis_inputs.md): real
#: frontal radiographs 0.396-0.788 (50 TBX11K PA views), 0.529 (the example CR RG1_UNCR.dcm); simulated frontal
#: views (azimuth 0 and ±10 deg, 23 phantoms and the example CT) 0.430-0.653; simulated lateral views (azimuth
#: ±90 deg) 0.000-0.202. The threshold is the middle of the gap 0.202-0.396.
FRONTAL_SCORE_THRESHOLD = 0.30


class InputImageError(ValueError):
    """An input that cannot be synthesised from; the message names the input (its path or ``array #i``) and
    what is wrong with it."""


# ----------------------------------------------------------------------------------------------- coercion
def _check_synthesis_image(image: np.ndarray, name: str) -> None:
    """The checks every route shares: a 2-D finite, non-constant image with sides >= MIN_SYNTHESIS_SIDE."""
    if image.ndim != 2:
        raise InputImageError(f"{name}: image must be 2-D (H, W), got shape {tuple(image.shape)}")
    if min(image.shape) < MIN_SYNTHESIS_SIDE:
        raise InputImageError(
            f"{name}: image of {image.shape[0]}x{image.shape[1]} pixels is too small; synthesis needs at least "
            f"{MIN_SYNTHESIS_SIDE} pixels per side")
    if not np.all(np.isfinite(image)):
        raise InputImageError(f"{name}: image contains NaN or infinite values")
    if not float(image.max()) > float(image.min()):
        raise InputImageError(f"{name}: image is constant (all pixels {float(image.min())}), there is nothing to show")


def _to_numpy(item: Any, name: str) -> np.ndarray:
    """A numpy array or torch tensor → numpy (tensors detached, on the CPU); other dtypes than real refused."""
    import torch

    if isinstance(item, torch.Tensor):
        if item.dtype == torch.bool or item.is_complex():
            raise InputImageError(f"{name}: tensor of dtype {item.dtype} is not an image; give real numbers")
        item = item.detach().cpu()
        if item.dtype in (torch.bfloat16, torch.float16):
            item = item.float()  # numpy has no bfloat16
        return item.numpy()
    array = np.asarray(item)
    if array.dtype.kind not in "iuf":
        raise InputImageError(f"{name}: array of dtype {array.dtype} is not an image; give real numbers "
                              "(integer or floating point)")
    return array


def _grayscale(array: np.ndarray, name: str) -> np.ndarray:
    """``(H, W)``, ``(1, H, W)``, ``(1, 1, H, W)``, ``(H, W, 1|3|4)`` or ``(3|4, H, W)`` → ``(H, W)``."""
    accepted = "(H, W), (1, H, W), (1, 1, H, W), or grayscale as colour (H, W, 3|4) / (3|4, H, W)"
    shape = tuple(array.shape)
    if array.ndim == 4 and shape[:2] == (1, 1):
        return array[0, 0]
    if array.ndim == 3:
        if shape[0] == 1:
            return array[0]
        if shape[-1] == 1:
            return array[..., 0]
        channel_axis = -1 if shape[-1] in (3, 4) else 0 if shape[0] in (3, 4) else None
        if channel_axis is not None:
            colour = np.moveaxis(array, channel_axis, -1)[..., :3]
            if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
                raise InputImageError(
                    f"{name}: colour image of shape {shape} with differing channels; a radiograph is grayscale "
                    "(a photograph or a coloured overlay cannot be synthesised from)")
            return colour[..., 0]
    if array.ndim == 2:
        return array
    raise InputImageError(f"{name}: array of shape {shape} is not one radiograph; expected {accepted}")


def _array_radiograph(item: Any, name: str) -> Radiograph:
    array = _grayscale(_to_numpy(item, name), name)
    _check_synthesis_image(array, name)
    values = array.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    image = ((values - lo) / (hi - lo)).astype(np.float32)
    return Radiograph(image=np.ascontiguousarray(image), pixel_spacing_mm=None,
                      meta={"source": name, "format": "array"})


def as_radiograph(item: Any, *, name: str | None = None) -> Radiograph:
    """One synthesis input as a checked :class:`~xraysyn.data.radiograph.Radiograph`.

    Args:
        item: a path (``str`` / ``os.PathLike``) read with :func:`~xraysyn.data.radiograph.load_radiograph`;
            a ``Radiograph``, returned as it is (the same object) once its image passed the checks; or a numpy
            array / torch tensor of any real dtype (see the module docstring for the shapes), **bright =
            attenuating**, min–max normalised to a float32 ``(H, W)`` image in ``[0, 1]``.
        name: how messages and ``meta["source"]`` call the input; default the path, the radiograph's
            ``meta["source"]``, or ``"array"``.

    Returns:
        :class:`Radiograph` with an ``(H, W)`` float32 image; arrays get ``pixel_spacing_mm=None`` and
        ``meta = {"source": name, "format": "array"}``.

    Raises:
        InputImageError (a ``ValueError``): every unusable input. For paths, ``load_radiograph``'s
            ``FileNotFoundError`` and :class:`~xraysyn.data.radiograph.RadiographReadError` (unreadable files,
            colour images, a CT/MR DICOM slice, several frames, ...) are re-raised as ``InputImageError`` with the
            same message (the original chained as ``__cause__``), so a batch has one error type to catch. A
            folder is refused here (see :func:`expand_input_paths`). For all: not 2-D, a side under
            :data:`MIN_SYNTHESIS_SIDE`, NaN/inf, constant; for arrays also bool/complex/non-numeric dtypes and
            colour with differing channels.
    """
    import torch

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        label = name if name is not None else str(path)
        if path.is_dir():
            raise InputImageError(f"{label}: is a folder, not a radiograph file (give its files, or use "
                                  "expand_input_paths / prepare_inputs, which expand folders)")
        try:
            radiograph = load_radiograph(path)
        except FileNotFoundError:
            raise InputImageError(f"{label}: file does not exist") from None
        except RadiographReadError as error:
            raise InputImageError(str(error)) from error
        _check_synthesis_image(radiograph.image, label)
        return radiograph
    if isinstance(item, Radiograph):
        label = name if name is not None else str(item.meta.get("source", "radiograph"))
        image = item.image
        if not isinstance(image, np.ndarray) or image.dtype.kind != "f":
            kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise InputImageError(f"{label}: Radiograph.image must be a floating-point numpy array, got {kind}")
        _check_synthesis_image(image, label)
        return item
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return _array_radiograph(item, name if name is not None else "array")
    label = name if name is not None else "input"
    raise InputImageError(f"{label}: a {type(item).__name__} is not a radiograph; give a path, a load_radiograph "
                          "result, a numpy array or a torch tensor")


# ----------------------------------------------------------------------------------------------- the view
def _view_check_crop(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` radiograph → ``(VIEW_CHECK_SIDE, VIEW_CHECK_SIDE)`` float64 body crop of its rank image."""
    import torch
    import torch.nn.functional as F

    from xraysyn.data.input_domain import normalise_radiograph
    from xraysyn.data.radiograph import crop_and_resize

    work = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    rows, cols = image.shape
    scale = VIEW_CHECK_MAX_WORK_SIDE / max(rows, cols)
    if scale < 1.0:
        size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
        work = F.interpolate(work, size=size, mode="area")
    # Ranks make the statistic independent of the display transform (window, gamma, log or linear).
    ranked = normalise_radiograph(work)[0, 0].numpy()
    crop, _ = crop_and_resize(ranked, VIEW_CHECK_SIDE, mode="body", margin=VIEW_CHECK_CROP_MARGIN)
    return crop.astype(np.float64)


def frontal_view_score(image) -> float:
    """How clearly an image shows a frontal chest view: the height of the bright midline above the darker of
    the two lung fields beside it (dimensionless, ``[0, 1]``; 0 = no midline between two lung fields).

    A frontal (PA/AP) chest radiograph shows two dark lung fields left and right of a bright midline, the
    spine and mediastinum. A lateral view shows the lungs overlapping in one dark field, the spine at its
    posterior edge. Recipe:

    1. the image is area-averaged to at most :data:`VIEW_CHECK_MAX_WORK_SIDE` pixels, replaced by its ranks
       (:func:`~xraysyn.data.input_domain.normalise_radiograph`, so any increasing display transform gives the
       same score) and cropped to the body (:func:`~xraysyn.data.radiograph.crop_and_resize`, ``mode="body"``)
       at :data:`VIEW_CHECK_SIDE` pixels;
    2. the mean of the rows :data:`LUNG_ROWS` gives a column profile, smoothed over :data:`PROFILE_SMOOTHING`
       of the width;
    3. for every local maximum ``m`` of the profile in :data:`MIDLINE_BAND`: ``p(m)`` minus the higher of the
       two minima of the profile left and right of ``m`` within :data:`LUNG_COLUMNS`; the score is the largest.

    Args:
        image: ``(H, W)`` radiograph (numpy or torch), bright = attenuating, any real scale, finite.

    Returns:
        The score; :data:`FRONTAL_SCORE_THRESHOLD` separates frontal from lateral views (measured ranges in
        its comment). An inverted image (bright lungs) scores near 0, like a lateral view.
    """
    import torch

    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 2 or not np.all(np.isfinite(array)):
        raise ValueError(f"image must be a finite 2-D (H, W) array, got shape {tuple(array.shape)}")
    from scipy.ndimage import uniform_filter1d

    crop = _view_check_crop(array)
    height, width = crop.shape
    profile = crop[int(round(LUNG_ROWS[0] * height)):int(round(LUNG_ROWS[1] * height))].mean(axis=0)
    profile = uniform_filter1d(profile, max(1, int(round(PROFILE_SMOOTHING * width))), mode="nearest")
    lung_lo, lung_hi = int(round(LUNG_COLUMNS[0] * width)), int(round(LUNG_COLUMNS[1] * width))
    band_lo = max(lung_lo + 1, int(np.ceil(MIDLINE_BAND[0] * width)))
    band_hi = min(lung_hi - 2, int(MIDLINE_BAND[1] * width))
    best = 0.0
    for m in range(band_lo, band_hi + 1):
        if profile[m] < profile[m - 1] or profile[m] < profile[m + 1]:
            continue
        valleys = max(float(profile[lung_lo:m].min()), float(profile[m + 1:lung_hi].min()))
        best = max(best, float(profile[m]) - valleys)
    return best


def check_frontal_chest(radiograph: Radiograph, *, name: str | None = None) -> None:
    """Raise :class:`InputImageError` when ``radiograph`` is recognisably not a frontal chest view.

    The test is :func:`frontal_view_score` below :data:`FRONTAL_SCORE_THRESHOLD`: no bright midline between two
    darker lung fields. That is what a lateral view (the main case), a strongly oblique view (simulated: every
    view at 60 deg azimuth or more, most at 45 deg) and an inverted image (bright lungs) give; simulated views
    rotated up to 20 deg all passed. It is no general "is this a chest X-ray" test: an image of something else
    with a bright vertical band between darker sides passes (smooth random fields reached 0.37).

    Args:
        radiograph: a checked radiograph (:func:`as_radiograph`), image ``(H, W)`` bright = attenuating.
        name: the input's name for the message; default ``radiograph.meta["source"]``.
    """
    label = name if name is not None else str(radiograph.meta.get("source", "radiograph"))
    score = frontal_view_score(radiograph.image)
    if score < FRONTAL_SCORE_THRESHOLD:
        raise InputImageError(
            f"{label}: does not look like a frontal (PA/AP) chest radiograph: no bright midline (spine and "
            f"mediastinum) between two darker lung fields (view score {score:.2f} < {FRONTAL_SCORE_THRESHOLD}). "
            "XraySyn needs a frontal chest view with bright = attenuating; a lateral or strongly oblique view, "
            "an inverted image or a non-chest image cannot be used (if it is a frontal view nonetheless, skip "
            "this check with check_view=False)")


# ----------------------------------------------------------------------------------------------- batches
def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _looks_like_image_file(path: Path) -> bool:
    """Radiograph suffix, or DICOM without one (no suffix, or a numeric one as in UID-named files)."""
    from xraysyn.data.ct_io import is_dicom_file

    suffix = path.suffix.lower()
    if suffix in RADIOGRAPH_SUFFIXES:
        return True
    return (suffix == "" or suffix[1:].isdigit()) and is_dicom_file(path)


def expand_input_paths(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Paths of radiograph files: files kept as given (in order), folders replaced by their image files.

    A folder is searched recursively for files with a suffix of
    :data:`~xraysyn.data.radiograph.RADIOGRAPH_SUFFIXES`, and for DICOM files without a suffix (or with a
    numeric one, as UID-named files have; recognised by :func:`~xraysyn.data.ct_io.is_dicom_file`); hidden
    files and folders (name starting with ``.``) are skipped; each folder's files are sorted.

    Raises:
        InputImageError: a path that does not exist, or a folder holding no image file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    expanded: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and not _is_hidden(p, path) and _looks_like_image_file(p))
            if not found:
                raise InputImageError(f"{path}: folder holds no radiograph ({', '.join(RADIOGRAPH_SUFFIXES)} "
                                      "or DICOM without suffix)")
            expanded.extend(found)
        elif path.exists():
            expanded.append(path)
        else:
            raise InputImageError(f"{path}: does not exist")
    return expanded


def _display_name(item: Any, index: int) -> str:
    import torch

    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, Radiograph):
        return str(item.meta.get("source", f"radiograph #{index}"))
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return f"array #{index}"
    return f"input #{index}"


def prepare_inputs(items, *, check_view: bool = True) -> list[tuple[str, Radiograph | InputImageError]]:
    """Check a batch of inputs one by one, so a batch can go on past bad ones.

    Args:
        items: a list of inputs of :func:`as_radiograph` (a single path, radiograph, array or tensor counts as a
            list of one). Folder paths are expanded into their image files (:func:`expand_input_paths`).
        check_view: also run :func:`check_frontal_chest` on every readable input.

    Returns:
        Per input (per file of a folder), in order: ``(name, radiograph)`` or ``(name, error)`` with the
        :class:`InputImageError`. Names: the path, a radiograph's ``meta["source"]``, or ``array #i`` with ``i``
        the item's position in ``items`` (from 0). A folder without images gives one error entry for the folder.
    """
    import torch

    if isinstance(items, (str, os.PathLike, Radiograph, np.ndarray, torch.Tensor)):
        items = [items]
    results: list[tuple[str, Radiograph | InputImageError]] = []
    for index, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            try:
                entries: list[Any] = list(expand_input_paths([item]))
            except InputImageError as error:
                results.append((str(item), error))
                continue
        else:
            entries = [item]
        checked = []
        for entry in entries:
            name = _display_name(entry, index)
            try:
                radiograph = as_radiograph(entry, name=name)
                if check_view:
                    check_frontal_chest(radiograph, name=name)
            except InputImageError as error:
                checked.append((name, error))
            else:
                checked.append((name, radiograph))
        results += _one_error_for_a_uniform_folder(item, checked) if len(checked) > 1 else checked
    return results


def _one_error_for_a_uniform_folder(folder, checked: list) -> list:
    """A folder whose files all fail for the same reason (e.g. the slices of a CT series) → one entry for the
    folder; anything else → the entries as they are."""
    reasons = set()
    for name, item in checked:
        if not isinstance(item, InputImageError):
            return checked
        message = str(item)
        reasons.add(message[len(name) + 2:] if message.startswith(f"{name}: ") else message)
    if len(reasons) != 1:
        return checked
    return [(str(folder), InputImageError(f"{folder}: all {len(checked)} files: {reasons.pop()}"))]
