"""Data: CT input/output and preprocessing, bone masks, example data and preprocessed-CT shards.

CT side: :mod:`~xraysyn.data.ct_io` (DICOM series / NIfTI / NRRD / MHA in HU with RAS+ mm affines),
:mod:`~xraysyn.data.preprocess` (2.5 mm rule, body crop, cube resampling),
:mod:`~xraysyn.data.bone_mask` (labels or HU threshold), :mod:`~xraysyn.data.example` (cached
example data), :mod:`~xraysyn.data.shards` (the shard format, documented there) and
:mod:`~xraysyn.data.prepare_ct` (batch preparation behind ``xraysyn prepare ct``).
Phantoms, radiographs and datasets live in their own modules of this package.
"""

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
from xraysyn.data.example import (
    ExampleDataError,
    ExamplePaths,
    example_paths,
    fetch_example_data,
)
from xraysyn.data.preprocess import (
    check_slice_spacing,
    crop_to_body,
    preprocess_ct,
    resample_to_cube,
)
from xraysyn.data.shards import CTShard, read_shard, write_shard

__all__ = [
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
