"""Writing results atomically: arrays (.npy) and windowed pictures (.png).

Every writer goes through :func:`atomic_write`: the data lands in a temporary file in the target
folder and is renamed into place, so a crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xraysyn.atomic import atomic_write

__all__ = ["atomic_write", "save_npy", "save_png", "window_to_uint8", "DISPLAY_PERCENTILES"]

# Percentiles used to window a float image for display: robust to a few extreme pixels.
DISPLAY_PERCENTILES = (0.5, 99.5)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Save ``array`` as ``.npy`` atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array))
    return atomic_write(path, write)


def window_to_uint8(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Map a float image to 8-bit grey: ``window = (low, high)`` or robust percentiles by default."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a picture must be 2-D (rows, cols), got shape {image.shape}")
    finite = image[np.isfinite(image)]
    if window is None:
        low, high = (np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0))
    else:
        low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.clip((np.nan_to_num(image, nan=low) - low) * scale, 0, 255)
    return np.round(out).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike, window: tuple[float, float] | None = None) -> Path:
    """Save a float image ``(rows, cols)`` as an 8-bit windowed PNG atomically."""
    from PIL import Image

    pixels = window_to_uint8(image, window)
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
