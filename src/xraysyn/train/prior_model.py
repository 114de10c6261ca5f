"""A trained 3D PriorNet loaded from an export, applied to real radiographs (stage 2, inference).

:class:`PriorModel` brings a radiograph into the 3DPN's input domain exactly as training did: resized (area
average) to the simulated detector, :func:`~xraysyn.data.input_domain.normalise_radiograph`, backprojected
at the canonical frontal view T (azimuth 0, elevation 0) into the canonical volume grid — a cube of the
training field of view centred on the isocenter, like the training phantoms — and scaled by the volume
edge (:func:`~xraysyn.train.stage1.network_input_from_radiograph`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from xraysyn.data.input_domain import normalise_radiograph
from xraysyn.data.phantom import phantom_affine
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.models.normalization import HUScale
from xraysyn.models.unet3d import PriorNet3D, PriorNetConfig
from xraysyn.train.export import ExportError, load_export
from xraysyn.train.stage1 import network_input_from_radiograph, predict_volumes

__all__ = ["PriorModel", "load_prior", "prior_from_export", "PRIOR_STAGES"]

#: Stages whose export is a 3D PriorNet (the 3DPN-DRR baseline is a stage-1 run in DRR mode: the same stage).
PRIOR_STAGES = ("prior",)


@dataclass
class PriorModel:
    """A frozen 3DPN with the geometry and input domain it was trained with.

    Attributes:
        network: the 3DPN in eval mode, gradients off.
        geometry: the simulated C-arm (its detector is the network's input size).
        volume_size: voxels per axis of the predicted cube.
        field_of_view_mm: edge of the predicted cube (mm), centred on the isocenter.
        hu_scale: HU ↔ [-1, 1] of the CT channel.
        export: the export's metadata (everything but the weights).
    """

    network: PriorNet3D
    geometry: ConeBeamGeometry
    volume_size: int
    field_of_view_mm: float
    hu_scale: HUScale
    export: dict

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def world_from_voxel(self) -> torch.Tensor:
        """``(4, 4)`` float32 RAS+ affine (mm) of the predicted cube."""
        spacing = self.field_of_view_mm / self.volume_size
        affine = phantom_affine((self.volume_size,) * 3, (spacing,) * 3)
        return torch.from_numpy(affine).float().to(self.device)

    def frontal_pose(self) -> torch.Tensor:
        """``(1, 4, 4)`` pose of the canonical input view T (azimuth 0, elevation 0)."""
        return self.geometry.poses(torch.zeros(1, dtype=torch.float64), dtype=torch.float32).to(self.device)

    @torch.no_grad()
    def network_input(self, radiograph: torch.Tensor) -> torch.Tensor:
        """``(N, 1, rows, cols)`` radiographs (bright = attenuating, any scale) → V_BP ``(N, 1, S, S, S)``."""
        if not isinstance(radiograph, torch.Tensor) or radiograph.dim() != 4 or radiograph.shape[1] != 1:
            shape = tuple(radiograph.shape) if isinstance(radiograph, torch.Tensor) else type(radiograph).__name__
            raise ValueError(f"radiograph must be a tensor (N, 1, rows, cols), got {shape}")
        detector = self.geometry.detector_shape
        image = radiograph.to(self.device, torch.float32)
        if tuple(image.shape[2:]) != tuple(detector):
            image = F.interpolate(image, size=detector, mode="area")
        normalised = normalise_radiograph(image)
        poses = self.frontal_pose().expand(image.shape[0], 4, 4)
        return network_input_from_radiograph(normalised, self.world_from_voxel(), poses, self.geometry,
                                             (self.volume_size,) * 3)

    @torch.no_grad()
    def predict(self, radiograph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, rows, cols)`` radiographs → ``(ct_hu, bone_probability)``, each ``(N, 1, S, S, S)``."""
        _, hu, mask = predict_volumes(self.network, self.network_input(radiograph), self.hu_scale)
        return hu, mask


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> PriorModel:
    """Load a 3DPN export (``xraysyn export`` of a stage-1 run, or the 3DPN embedded in a stage-2 export such as
    the shipped weights) as a frozen :class:`PriorModel`.

    Raises:
        ExportError: not an xraysyn export, damaged, or holding no 3D PriorNet.
    """
    export = load_export(path)
    if export.get("stage") == "refine" and "prior_export" in export:
        export = export["prior_export"]
    return prior_from_export(export, device, source=str(path))


def prior_from_export(export: dict, device: str | torch.device = "cpu", *, source: str = "the export") -> PriorModel:
    """A checked export dict (:func:`~xraysyn.train.export.load_export`, or the 3DPN embedded in a stage-2 export)
    → a frozen :class:`PriorModel` on ``device``.

    Raises:
        ExportError: the export is not of a 3D PriorNet.
    """
    if export.get("stage") not in PRIOR_STAGES or export.get("model_class") != "PriorNet3D":
        raise ExportError(f"{source!r} is an export of stage {export.get('stage')!r}, not a 3D PriorNet "
                          "(make one with `xraysyn export` of a `train prior` run)")
    config = export["model_config"]
    network = PriorNet3D(PriorNetConfig(widths=tuple(config["widths"]), norm=config["norm"],
                                        negative_slope=config["negative_slope"]))
    network.load_state_dict({k: v.float() for k, v in export["state_dict"].items()})
    network.to(device).eval().requires_grad_(False)
    norm = export["input_normalisation"]
    detector = int(norm["detector_pixels"])
    spacing = norm["field_of_view_mm"] * norm["sdd_mm"] / norm["sid_mm"] / detector
    geometry = ConeBeamGeometry(sdd=norm["sdd_mm"], sid=norm["sid_mm"], detector_shape=(detector, detector),
                                pixel_spacing=(spacing, spacing))
    meta = {k: v for k, v in export.items() if k != "state_dict"}
    return PriorModel(network, geometry, int(norm["volume_size"]), float(norm["field_of_view_mm"]),
                      HUScale(**export["hu_scale"]), meta)
