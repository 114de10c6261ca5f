"""Tiny XraySyn exports with random weights (the `small` presets) and simulated frontal chest radiographs, for
the end-to-end tests of `xraysyn.synthesis` and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import xraysyn
from xraysyn.models.normalization import HUScale
from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig
from xraysyn.models.unet3d import PriorNet3D, PriorNetConfig
from xraysyn.train.export import EXPORT_FORMAT, state_dict_sha256
from xraysyn.train.prior_config import preset_config

#: Field of view (mm) of the simulated radiographs and of the presets' volumes.
FIELD_OF_VIEW_MM = 384.0


def prior_export(seed: int = 0) -> dict:
    config = preset_config("small")
    torch.manual_seed(seed)
    network = PriorNet3D(PriorNetConfig(widths=config.model.widths, norm=config.model.norm,
                                        negative_slope=config.model.negative_slope))
    state = network.state_dict()
    sim = config.simulation
    scale = HUScale()
    return {"format": EXPORT_FORMAT, "xraysyn_version": xraysyn.__version__, "stage": "prior",
            "model_class": "PriorNet3D",
            "model_config": {"widths": list(config.model.widths), "norm": config.model.norm,
                             "negative_slope": config.model.negative_slope},
            "state_dict": state, "sha256": state_dict_sha256(state),
            "input_normalisation": {"detector_pixels": sim.detector_pixels, "field_of_view_mm": sim.field_of_view_mm,
                                    "sdd_mm": sim.sdd_mm, "sid_mm": sim.sid_mm,
                                    "volume_size": config.data.volume_size},
            "hu_scale": {"min_hu": float(scale.min_hu), "max_hu": float(scale.max_hu)},
            "steps": 0, "validation": {}, "best": {},
            "config": {"simulation": {"num_samples": sim.num_samples, "mode": "ct2xray"}}}


def refine_export(seed: int = 0, *, static_hyper: bool = False, embed: bool = True) -> dict:
    torch.manual_seed(seed + 1)
    network = RefineNet2D(RefineNetConfig.preset("small", static_hyper=static_hyper))
    state = network.state_dict()
    export = {"format": EXPORT_FORMAT, "xraysyn_version": xraysyn.__version__, "stage": "refine",
              "model_class": "RefineNet2D", "model_config": {"preset": "small", "static_hyper": static_hyper},
              "state_dict": state, "sha256": state_dict_sha256(state),
              "prior": {"path": "/nonexistent/prior.pt", "file_sha256": "0" * 64},
              "steps": 0, "validation": {}, "best": {},
              "config": {"data": {"crop_mode": "center"}, "num_samples": 24}}
    if embed:
        export["prior_export"] = prior_export(seed)
    return export


def write_export(export: dict, path: Path) -> Path:
    torch.save(export, path)
    return path


def simulated_frontal(size: int = 128, seed: int = 0, *, volume: int = 48, azimuth_deg: float = 0.0) -> np.ndarray:
    """A frontal (or rotated) chest radiograph of a procedural phantom, ``(size, size)`` in [0, 1], bright =
    attenuating: the CT2Xray line integral −log I, min–max scaled (a real radiograph's display, roughly)."""
    from xraysyn.data.phantom import make_chest_phantom
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.physics import ct2xray

    spacing = FIELD_OF_VIEW_MM / volume
    phantom = make_chest_phantom((volume,) * 3, (spacing,) * 3, seed=seed)
    hu = torch.from_numpy(np.asarray(phantom.hu, dtype=np.float32))[None, None]
    bone = torch.from_numpy(np.asarray(phantom.bone_mask, dtype=np.float32))[None, None]
    affine = torch.from_numpy(phantom.world_from_voxel).float()
    pixel = FIELD_OF_VIEW_MM * 1200.0 / 1000.0 / size
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(size, size), pixel_spacing=(pixel, pixel))
    poses = geometry.poses(torch.tensor([azimuth_deg], dtype=torch.float64), dtype=torch.float32)
    line = ct2xray(hu, bone, affine, poses, geometry, num_samples=2 * volume).line_integral[0, 0].numpy()
    return ((line - line.min()) / (line.max() - line.min())).astype(np.float32)
