"""Data: CT input/output and preprocessing, bone masks, example data and preprocessed-CT shards.

CT side: :mod:`~xraysyn.data.ct_io` (DICOM series / NIfTI / NRRD / MHA in HU with RAS+ mm affines),
:mod:`~xraysyn.data.preprocess` (2.5 mm rule, body crop, cube resampling),
:mod:`~xraysyn.data.bone_mask` (labels or HU threshold), :mod:`~xraysyn.data.example` (cached
example data), :mod:`~xraysyn.data.shards` (the shard format, documented there) and
:mod:`~xraysyn.data.prepare_ct` (batch preparation behind ``xraysyn prepare ct``).
Radiograph side and training data: :mod:`~xraysyn.data.phantom` (procedural chest CT with exact
bone labels), :mod:`~xraysyn.data.radiograph` (DICOM CR/DX, PNG, JPEG; crop/resize with an
invertible transform), :mod:`~xraysyn.data.augment` (3-D augmentations) and
:mod:`~xraysyn.data.datasets` (CT shards, phantoms, radiograph folders).
"""

from xraysyn.data.augment import AugmentConfig, RandomAugment, apply_augment
from xraysyn.data.bone_mask import (
    bone_mask_from_hu,
    bone_mask_from_labels,
    dice,
    read_structures_table,
)
from xraysyn.data.ct_io import (
    CTReadError,
    CTVolume,
    load_ct,
    load_volume_tensor,
    save_nifti,
    write_nifti_array,
)
from xraysyn.data.datasets import (
    CTShardDataset,
    PhantomDataset,
    RadiographFolderDataset,
)
from xraysyn.data.example import (
    ExampleDataError,
    ExamplePaths,
    example_paths,
    fetch_example_data,
)
from xraysyn.data.phantom import BONE_LABELS, LABELS, Phantom, make_chest_phantom
from xraysyn.data.preprocess import (
    check_slice_spacing,
    crop_to_body,
    preprocess_ct,
    resample_to_cube,
)
from xraysyn.data.radiograph import (
    CropTransform,
    Radiograph,
    RadiographReadError,
    crop_and_resize,
    load_radiograph,
)
from xraysyn.data.shards import CTShard, read_shard, write_shard

__all__ = [
    "AugmentConfig",
    "BONE_LABELS",
    "CTShardDataset",
    "CropTransform",
    "LABELS",
    "Phantom",
    "PhantomDataset",
    "Radiograph",
    "RadiographFolderDataset",
    "RadiographReadError",
    "RandomAugment",
    "apply_augment",
    "crop_and_resize",
    "load_radiograph",
    "make_chest_phantom",
    "CTReadError",
    "CTShard",
    "CTVolume",
    "ExampleDataError",
    "ExamplePaths",
    "bone_mask_from_hu",
    "bone_mask_from_labels",
    "check_slice_spacing",
    "crop_to_body",
    "dice",
    "example_paths",
    "fetch_example_data",
    "load_ct",
    "load_volume_tensor",
    "preprocess_ct",
    "read_shard",
    "read_structures_table",
    "resample_to_cube",
    "save_nifti",
    "write_nifti_array",
    "write_shard",
]
