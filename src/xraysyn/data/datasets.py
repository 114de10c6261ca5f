"""Torch datasets for the two training stages.

* :class:`CTShardDataset` — preprocessed CT shards (:mod:`xraysyn.data.shards`) with random input
  and target views, optionally augmented (stage 1, 3DPN; also the CT side of stage 2).
* :class:`PhantomDataset` — the same items from procedural phantoms generated on the fly.
* :class:`RadiographFolderDataset` — folders of real radiographs (TBX11K-style layout, stage 2).

CT items are dicts of tensors:

=================== ============== ==========================================================
key                 shape / dtype  meaning
=================== ============== ==========================================================
``ct_hu``           (1, D, H, W)   CT in HU, float32
``bone``            (1, D, H, W)   bone mask, float32 0/1
``world_from_voxel``(4, 4)         RAS+ mm affine of the (resampled) grid, float32
``azimuth_deg``     (2,)           C-arm azimuth of [T, T'] (input view, target view), degrees
``elevation_deg``   (2,)           C-arm elevation of [T, T'], degrees
``index``           ()             item index, int64
=================== ============== ==========================================================

The angles are uniform in ``±max_angle_deg`` (18° in the paper's training protocol) and feed
:meth:`xraysyn.geometry.ConeBeamGeometry.poses`. Randomness (angles, augmentation) comes from a
generator seeded by ``(seed, epoch, index)``: reproducible, independent of DataLoader workers;
call :meth:`set_epoch` to draw new values each epoch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xraysyn.data.augment import AugmentConfig, RandomAugment
from xraysyn.data.radiograph import (
    RADIOGRAPH_SUFFIXES,
    crop_and_resize,
    load_radiograph,
)

__all__ = ["CTShardDataset", "PhantomDataset", "RadiographFolderDataset", "resample_cube", "PAPER_MAX_ANGLE_DEG"]

#: Training views T and T' are uniform in ±18° azimuth and elevation (XraySyn paper, sec. 4).
PAPER_MAX_ANGLE_DEG = 18.0
#: Default radiograph side after cropping (the paper's 2DRN works at 256²).
PAPER_RADIOGRAPH_SIZE = 256

AugmentArg = AugmentConfig | Callable | bool | None


def _item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_angle(value) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 90:
        raise ValueError(f"max_angle_deg must be a number of degrees in [0, 90], got {value!r}")
    return float(value)


def _resolve_augment(augment: AugmentArg) -> Callable | None:
    if augment is None or augment is False:
        return None
    if augment is True:
        return RandomAugment(AugmentConfig())
    if isinstance(augment, AugmentConfig):
        return RandomAugment(augment)
    if callable(augment):
        return augment
    raise ValueError(f"augment must be None, a bool, an AugmentConfig or a callable, got {augment!r}")


def resample_cube(hu: torch.Tensor, bone: torch.Tensor, world_from_voxel: torch.Tensor, size: int):
    """Resample a CT ``(1, D, H, W)`` and mask to ``size³`` keeping the physical extent.

    The grid's outer voxel edges stay in place: new index ``n`` maps to old index
    ``(n + 0.5) · old / size - 0.5`` (``align_corners=False``); the affine is updated to match.
    CT: area averaging when shrinking (exact bins for integer ratios), trilinear when growing;
    mask: nearest (``nearest-exact``, the same centre convention).

    Returns:
        ``(hu, bone, world_from_voxel)`` with shapes ``(1, size, size, size)`` and ``(4, 4)``.
    """
    old = hu.shape[1:]
    if tuple(old) == (size, size, size):
        return hu, bone, world_from_voxel
    shrinking = all(o >= size for o in old)
    mode = "area" if shrinking else "trilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    new_hu = F.interpolate(hu[None], size=(size,) * 3, mode=mode, **kwargs)[0]
    new_bone = F.interpolate(bone[None].float(), size=(size,) * 3, mode="nearest-exact")[0].to(bone.dtype)
    old_from_new = torch.eye(4, dtype=world_from_voxel.dtype)
    for axis, n_old in enumerate(old):
        ratio = n_old / size
        old_from_new[axis, axis] = ratio
        old_from_new[axis, 3] = 0.5 * ratio - 0.5
    return new_hu, new_bone, world_from_voxel @ old_from_new


class _CTItems(Dataset):
    """Shared logic of the CT datasets: angles, augmentation, epoch-seeded randomness."""

    def __init__(self, size: int | None, augment: AugmentArg, max_angle_deg: float, seed: int):
        self.size = None if size is None else _check_positive_int(size, "size", 2)
        self.augment = _resolve_augment(augment)
        self.max_angle_deg = _check_angle(max_angle_deg)
        self.seed = _check_positive_int(seed, "seed", 0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different angles/augmentations for another epoch (deterministic per epoch)."""
        self.epoch = _check_positive_int(epoch, "epoch", 0)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index = index % len(self)
        return self.make_item(index, _item_generator(self.seed, self.epoch, index))

    def load_case(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Case ``index`` before any randomness: ``(hu (1, D, H, W), bone (1, D, H, W), world_from_voxel (4, 4))``
        resampled to ``size³`` when a size is set."""
        hu, bone, affine = self._load(index)
        if self.size is not None:
            hu, bone, affine = resample_cube(hu, bone, affine, self.size)
        return hu, bone, affine

    def make_item(self, index: int, generator: torch.Generator, case=None) -> dict[str, torch.Tensor]:
        """The item of case ``index`` with the angles and augmentation drawn from ``generator`` (a CPU
        generator; :meth:`__getitem__` seeds it by ``(seed, epoch, index)``). ``case``: the
        :meth:`load_case` result when the caller already has it (e.g. cached)."""
        hu, bone, affine = case if case is not None else self.load_case(index)
        angles = (torch.rand(2, 2, generator=generator, dtype=torch.float64) * 2 - 1) * self.max_angle_deg
        if self.augment is not None:
            hu, bone = self.augment(hu, bone, affine, generator)
        return {
            "ct_hu": hu.float(),
            "bone": bone.float(),
            "world_from_voxel": affine.float(),
            "azimuth_deg": angles[0].float(),
            "elevation_deg": angles[1].float(),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class CTShardDataset(_CTItems):
    """Preprocessed CT shards (``*.npz`` under ``root``, searched recursively, sorted).

    Args:
        root: folder of shards written by ``xraysyn prepare ct``.
        size: resample every CT to ``size³`` (keeping its physical extent); ``None`` keeps the stored grid.
        augment: ``None``/``False`` (off), ``True`` (default :class:`AugmentConfig`), an
            :class:`AugmentConfig`, or a callable ``(ct, bone, affine, generator) -> (ct, bone)``.
        max_angle_deg: T and T' azimuth and elevation are uniform in ``±max_angle_deg`` degrees.
        seed: base seed of all randomness.

    Items: see the module docstring.
    """

    def __init__(self, root: str | os.PathLike, size: int | None = None, augment: AugmentArg = None,
                 max_angle_deg: float = PAPER_MAX_ANGLE_DEG, seed: int = 0):
        from xraysyn.data.shards import SHARD_SUFFIX

        super().__init__(size, augment, max_angle_deg, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"shard folder {str(self.root)!r} does not exist or is not a folder")
        self.paths = sorted(p for p in self.root.rglob(f"*{SHARD_SUFFIX}") if p.is_file() and not p.name.startswith("."))
        if not self.paths:
            raise ValueError(f"no {SHARD_SUFFIX} shards found under {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int):
        from xraysyn.data.shards import read_shard

        shard = read_shard(self.paths[index])
        hu = torch.from_numpy(np.ascontiguousarray(shard.hu, dtype=np.float32))[None]
        bone = torch.from_numpy(np.ascontiguousarray(shard.bone))[None].float()
        return hu, bone, torch.from_numpy(np.asarray(shard.world_from_voxel, dtype=np.float64))


class PhantomDataset(_CTItems):
    """``n`` procedural chest phantoms generated on the fly (see :mod:`xraysyn.data.phantom`).

    Item ``i`` is the phantom of seed ``SeedSequence([seed, i])`` at ``size³`` voxels with the
    phantom's default 384 mm field of view (or ``spacing_mm``); the same for every epoch, while
    angles and augmentations follow :meth:`set_epoch`.

    Args:
        n: number of items.
        size: voxels per axis.
        seed, augment, max_angle_deg: as in :class:`CTShardDataset`.
        spacing_mm: voxel size passed to :func:`xraysyn.data.phantom.make_chest_phantom`.
        noise_hu: phantom noise (HU).
    """

    def __init__(self, n: int, size: int = 128, seed: int = 0, augment: AugmentArg = None,
                 max_angle_deg: float = PAPER_MAX_ANGLE_DEG, spacing_mm=None, noise_hu: float = 8.0):
        super().__init__(None, augment, max_angle_deg, seed)
        self.n = _check_positive_int(n, "n")
        self.phantom_size = _check_positive_int(size, "size", 8)
        self.spacing_mm = spacing_mm
        self.noise_hu = noise_hu

    def __len__(self) -> int:
        return self.n

    def phantom_seed(self, index: int) -> int:
        """Seed handed to :func:`make_chest_phantom` for item ``index``."""
        return int(np.random.SeedSequence([self.seed, int(index)]).generate_state(1)[0])

    def _load(self, index: int):
        from xraysyn.data.phantom import make_chest_phantom

        ph = make_chest_phantom((self.phantom_size,) * 3, spacing_mm=self.spacing_mm,
                                seed=self.phantom_seed(index), noise_hu=self.noise_hu)
        return (torch.from_numpy(ph.hu)[None], torch.from_numpy(ph.bone_mask)[None].float(),
                torch.from_numpy(ph.world_from_voxel))


class RadiographFolderDataset(Dataset):
    """Real radiographs under ``root`` (any nesting), e.g. TBX11K's ``imgs/health/*.png``.

    Files with suffixes in :data:`xraysyn.data.radiograph.RADIOGRAPH_SUFFIXES` are collected
    recursively and sorted; hidden files are skipped.

    Args:
        root: folder to search.
        size: output side in pixels (the paper uses 256).
        classes: keep only files with one of these folder names in their path below ``root``
            (e.g. ``["health"]`` for TBX11K's healthy subset); ``None`` keeps all.
        crop_mode, margin: see :func:`xraysyn.data.radiograph.crop_and_resize`.

    Items: ``image`` ``(1, size, size)`` float32 in [0, 1] (bright = more attenuation),
    ``crop`` ``(4,)`` int64 ``(row0, col0, crop_rows, crop_cols)`` in original pixels,
    ``original_shape`` ``(2,)`` int64, ``pixel_spacing_mm`` ``(2,)`` float32 of the output (NaN
    when unknown), ``index`` int64, ``path`` str. An unreadable file raises
    :class:`~xraysyn.data.radiograph.RadiographReadError` naming it.
    """

    def __init__(self, root: str | os.PathLike, size: int = PAPER_RADIOGRAPH_SIZE,
                 classes: list[str] | tuple[str, ...] | None = None, crop_mode: str = "body", margin: float = 0.05):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"radiograph folder {str(self.root)!r} does not exist or is not a folder")
        self.size = _check_positive_int(size, "size", 2)
        if crop_mode not in ("center", "body"):
            raise ValueError(f"crop_mode must be 'center' or 'body', got {crop_mode!r}")
        self.crop_mode, self.margin = crop_mode, margin
        if isinstance(classes, str):
            classes = [classes]
        self.classes = None if classes is None else tuple(classes)
        paths = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if path.suffix.lower() not in RADIOGRAPH_SUFFIXES:
                continue
            if self.classes is not None and not set(rel.parts[:-1]) & set(self.classes):
                continue
            paths.append(path)
        self.paths = sorted(paths)
        if not self.paths:
            what = f" in class folders {list(self.classes)}" if self.classes else ""
            raise ValueError(f"no radiographs ({', '.join(RADIOGRAPH_SUFFIXES)}) found under {str(self.root)!r}{what}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index = index % len(self)
        radiograph = load_radiograph(self.paths[index])
        out, transform = crop_and_resize(radiograph.image, self.size, mode=self.crop_mode, margin=self.margin)
        spacing = transform.output_spacing_mm(radiograph.pixel_spacing_mm)
        return {
            "image": torch.from_numpy(out)[None],
            "crop": torch.tensor([transform.row0, transform.col0, transform.crop_rows, transform.crop_cols]),
            "original_shape": torch.tensor(radiograph.image.shape),
            "pixel_spacing_mm": torch.tensor(spacing if spacing is not None else (math.nan, math.nan),
                                             dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
            "path": str(self.paths[index]),
        }
