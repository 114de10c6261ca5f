"""A looping grey-scale GIF of a view sweep (e.g. the 20 test views from −9° to 9° azimuth).

All frames share one grey window (the :data:`~xraysyn.train.figures.PANEL_PERCENTILES` of the
finite pixels of every frame), so brightness changes between views stay visible. Written through
:func:`xraysyn.atomic.atomic_write` (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from xraysyn.atomic import atomic_write
from xraysyn.train.figures import FigureInputError, _as_image, robust_grey_range

__all__ = ["GIF_TIME_UNIT_MS", "save_view_sweep_gif"]

#: GIF frame delays are stored in hundredths of a second: shorter delays cannot be written.
GIF_TIME_UNIT_MS = 10
#: ``loop`` value of the GIF application extension meaning "repeat forever".
_LOOP_FOREVER = 0
_GREY_LEVELS = 255
#: Label placement: offset of the text from the top-left corner and padding of its dark box, pixels.
_LABEL_OFFSET = 2
_LABEL_PADDING = 1
_LABEL_TEXT_GREY = 255
_LABEL_BOX_GREY = 0


def _to_uint8(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.nan_to_num(frame, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * _GREY_LEVELS).astype(np.uint8)


def save_view_sweep_gif(path, frames: list[np.ndarray], *, duration_ms: int = 80,
                        labels: list[str] | None = None) -> Path:
    """Write ``frames`` as an animated grey-scale GIF that loops forever.

    Args:
        path: the ``.gif`` file to write; parent folders are created.
        frames: 2-D images ``(rows, cols)`` of one shape (numpy arrays or tensors, any units),
            one per view; NaN pixels are drawn black, +inf white.
        duration_ms: display time of each frame, milliseconds; an integer multiple of
            :data:`GIF_TIME_UNIT_MS` (GIF stores hundredths of a second).
        labels: optional text per frame (e.g. ``"azimuth -9.0°"``), drawn in the top-left corner
            on a dark box; one per frame.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Raises
        :class:`~xraysyn.train.figures.FigureInputError` before anything is written when an
        argument is malformed. Consecutive identical frames may be merged by the GIF encoder (their
        delays add up), so the file can hold fewer frames than given.
    """
    try:
        path = Path(path)
    except TypeError:
        raise FigureInputError(f"path must be a file path, got {path!r}") from None
    if path.suffix.lower() != ".gif":
        raise FigureInputError(f"path must end in .gif, got {str(path)!r}")
    if path.is_dir():
        raise FigureInputError(f"path {str(path)!r} is a folder, expected a .gif file name")
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence) or len(frames) == 0:
        raise FigureInputError("frames must be a non-empty list of 2-D images")
    images = [_as_image(frame, f"frames[{i}]") for i, frame in enumerate(frames)]
    for i, image in enumerate(images):
        if image.shape != images[0].shape:
            raise FigureInputError(f"frames[{i}] has shape {image.shape}, frames[0] has {images[0].shape}: "
                                   "all frames must have one shape")
    if (not isinstance(duration_ms, int) or isinstance(duration_ms, bool) or duration_ms < GIF_TIME_UNIT_MS
            or duration_ms % GIF_TIME_UNIT_MS):
        raise FigureInputError(f"duration_ms must be a positive integer multiple of {GIF_TIME_UNIT_MS} ms, "
                               f"got {duration_ms!r}")
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise FigureInputError(f"labels must be a list of str (one per frame) or None, got {labels!r}")
        if len(labels) != len(images):
            raise FigureInputError(f"labels has {len(labels)} entries for {len(images)} frames")
        for i, label in enumerate(labels):
            if not isinstance(label, str):
                raise FigureInputError(f"labels[{i}] must be a str, got {type(label).__name__}")

    from PIL import Image, ImageDraw, ImageFont

    low, high = robust_grey_range(*images)
    font = ImageFont.load_default() if labels is not None else None
    pictures = []
    for i, image in enumerate(images):
        picture = Image.fromarray(_to_uint8(image, low, high))
        if labels is not None and labels[i]:
            draw = ImageDraw.Draw(picture)
            left, top, right, bottom = draw.textbbox((_LABEL_OFFSET, _LABEL_OFFSET), labels[i], font=font)
            draw.rectangle((left - _LABEL_PADDING, top - _LABEL_PADDING, right + _LABEL_PADDING,
                            bottom + _LABEL_PADDING), fill=_LABEL_BOX_GREY)
            draw.text((_LABEL_OFFSET, _LABEL_OFFSET), labels[i], fill=_LABEL_TEXT_GREY, font=font)
        pictures.append(picture)

    def write(tmp: Path) -> None:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms,
                         loop=_LOOP_FOREVER)

    return atomic_write(path, write, suffix=".gif")
