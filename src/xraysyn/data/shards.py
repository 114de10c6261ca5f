"""Preprocessed-CT shard files: one compressed ``.npz`` per CT, written atomically.

Shard format (version 1), read with ``numpy.load(path, allow_pickle=False)``:

==================== =========== ================ ===================================================
key                  dtype       shape            meaning
==================== =========== ================ ===================================================
``hu``               ``int16``   ``(I, J, K)``    CT values in Hounsfield units, rounded to integers
                                                  and clipped to the int16 range.
``bone``             ``uint8``   ``(I, J, K)``    bone mask, 1 = bone, 0 = everything else.
``world_from_voxel`` ``float64`` ``(4, 4)``       affine from homogeneous voxel centre ``(i, j, k, 1)``
                                                  to world RAS+ mm (a NIfTI affine of ``hu[i, j, k]``).
``meta_json``        ``<U``      ``()``           JSON text (a dict): provenance such as ``source``,
                                                  ``original_spacing_mm``, ``bone_mask_method``.
``format_version``   ``int64``   ``()``           ``1``.
==================== =========== ================ ===================================================

No pickled objects are stored, so shards are safe to load from untrusted sources. The training
dataset converts ``hu`` to float and ``bone`` to bool with :func:`read_shard`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraysyn.atomic import atomic_write

__all__ = ["SHARD_FORMAT_VERSION", "SHARD_SUFFIX", "CTShard", "read_shard", "write_shard"]

SHARD_FORMAT_VERSION = 1
SHARD_SUFFIX = ".npz"
_INT16_MIN = int(np.iinfo(np.int16).min)
_INT16_MAX = int(np.iinfo(np.int16).max)
_REQUIRED_KEYS = ("hu", "bone", "world_from_voxel", "meta_json", "format_version")


@dataclass
class CTShard:
    """One preprocessed CT as read back from a shard.

    Attributes:
        hu: ``(I, J, K)`` float32 CT values in HU (integers, as stored).
        bone: ``(I, J, K)`` bool bone mask.
        world_from_voxel: ``(4, 4)`` float64 affine, voxel centre index -> world RAS+ mm.
        meta: provenance metadata (JSON-compatible dict).
    """

    hu: np.ndarray
    bone: np.ndarray
    world_from_voxel: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _check_inputs(hu: np.ndarray, bone: np.ndarray, world_from_voxel: np.ndarray) -> None:
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3-D array (I, J, K), got shape {hu.shape}")
    if bone.shape != hu.shape:
        raise ValueError(f"bone must have the shape of hu {hu.shape}, got {bone.shape}")
    if world_from_voxel.shape != (4, 4):
        raise ValueError(f"world_from_voxel must be a (4, 4) affine, got shape {world_from_voxel.shape}")
    if not np.all(np.isfinite(world_from_voxel)):
        raise ValueError("world_from_voxel contains NaN or infinite values")
    if not np.allclose(world_from_voxel[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"world_from_voxel last row must be [0, 0, 0, 1], got {world_from_voxel[3].tolist()}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("hu contains NaN or infinite values")


def write_shard(
    path: str | os.PathLike,
    hu: np.ndarray,
    bone: np.ndarray,
    world_from_voxel: np.ndarray,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write one CT shard atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: output file, must end with ``.npz``; parent folders are created.
        hu: ``(I, J, K)`` CT in HU (any real dtype); rounded and clipped to int16.
        bone: ``(I, J, K)`` bone mask (bool, or numbers where non-zero means bone).
        world_from_voxel: ``(4, 4)`` affine, voxel centre -> world RAS+ mm.
        meta: JSON-serialisable provenance dict.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != SHARD_SUFFIX:
        raise ValueError(f"shard path must end with {SHARD_SUFFIX!r}, got {str(path)!r}")
    hu = np.asarray(hu)
    bone = np.asarray(bone)
    world_from_voxel = np.asarray(world_from_voxel, dtype=np.float64)
    _check_inputs(hu, bone, world_from_voxel)
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None

    hu_int16 = np.clip(np.rint(hu), _INT16_MIN, _INT16_MAX).astype(np.int16)
    bone_uint8 = (bone != 0).astype(np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                hu=hu_int16,
                bone=bone_uint8,
                world_from_voxel=world_from_voxel,
                meta_json=np.array(meta_json),
                format_version=np.array(SHARD_FORMAT_VERSION, dtype=np.int64),
            )

    return atomic_write(path, write)


def read_shard(path: str | os.PathLike) -> CTShard:
    """Read a shard written by :func:`write_shard`.

    Args:
        path: a ``.npz`` shard file.

    Returns:
        :class:`CTShard` with ``hu`` float32 HU ``(I, J, K)``, ``bone`` bool ``(I, J, K)``,
        ``world_from_voxel`` float64 ``(4, 4)`` and ``meta`` dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in _REQUIRED_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"{str(path)!r} is not an xraysyn CT shard: missing keys {missing}")
            version = int(data["format_version"])
            if version != SHARD_FORMAT_VERSION:
                raise ValueError(
                    f"{str(path)!r} has shard format version {version}, this xraysyn reads version "
                    f"{SHARD_FORMAT_VERSION}"
                )
            hu = data["hu"].astype(np.float32)
            bone = data["bone"].astype(bool)
            world_from_voxel = data["world_from_voxel"].astype(np.float64)
            meta = json.loads(str(data["meta_json"]))
    except (OSError, EOFError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npz shard: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and friends from a truncated file
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"{str(path)!r} is not a readable .npz shard: {exc}") from None
    return CTShard(hu=hu, bone=bone, world_from_voxel=world_from_voxel, meta=meta)
