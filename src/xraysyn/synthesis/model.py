"""XraySyn end to end (paper Fig. 2, inference): a real radiograph at the frontal view T → the 3DPN's CT and bone
estimate → CT2Xray thickness maps at T and the novel views T' → the 2DRN with its hypernetwork M → radiographs
of the novel views, bone and tissue thickness maps, and bone suppression by reversing CT2Xray (Algorithm 1).

The steps, exactly as stage 2 trained them (:class:`xraysyn.train.refine.RefineTask`):

1. the radiograph (``[0, 1]``, bright = attenuating) is cropped to a square and resized to the 2DRN's input
   size S (:func:`~xraysyn.data.radiograph.crop_and_resize`, the crop rule of the training data);
2. the 3DPN (:class:`~xraysyn.train.prior_model.PriorModel`) takes it area-averaged to its detector,
   normalised (:func:`~xraysyn.data.input_domain.normalise_radiograph`) and backprojected at T;
3. CT2Xray of the predicted CT and bone mask gives ``t_m^CT`` at T (azimuth 0) and at every requested view;
4. the 2DRN refines them, ``t_m^ref = up(t_m^CT) + F(t_m^CT; M(I_in))`` (eq. 11), and the physics turns them
   into a radiograph whose line integral −log I is shown through the display window
   :func:`~xraysyn.data.input_domain.window_to_unit` (eq. 12).

A model without a 2DRN (a stage-1 export) gives the 3DPN's views, the "3DPN" row of the paper's Table 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xraysyn.data.input_domain import apply_window, display_window, window_to_unit
from xraysyn.data.radiograph import CropTransform, Radiograph, crop_and_resize
from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig
from xraysyn.physics import ct2xray, radiograph_from_thickness
from xraysyn.physics.suppression import suppress_bone_upsampled
from xraysyn.train.export import ExportError, load_export
from xraysyn.train.prior_model import PriorModel, load_prior, prior_from_export
from xraysyn.train.stage1 import network_input_from_radiograph, predict_volumes, view_poses

__all__ = ["XraySyn", "SynthesisResult", "SuppressionResult", "PRETRAINED", "DEFAULT_PRETRAINED",
           "BONE_MASK_THRESHOLD", "pretrained_path"]

#: Shipped weights by name (files in the package's ``weights/`` folder; see MODEL_CARD.md).
PRETRAINED = {"cpu64": "xraysyn-cpu64.pt"}
DEFAULT_PRETRAINED = "cpu64"
#: Bone probability above which a voxel counts as bone in :attr:`SynthesisResult.bone_mask`
#: (the threshold of the stage-1 validation's Dice).
BONE_MASK_THRESHOLD = 0.5
#: Radiographs per forward pass in :meth:`XraySyn.synthesize` on a GPU (bounds memory; results do not depend on
#: it). On the CPU one radiograph per pass is fastest: larger passes fall out of the caches (docs/benchmarks.md).
DEFAULT_BATCH_SIZE = 4
CPU_BATCH_SIZE = 1
#: Thickness-map pixels per 2DRN pass on the CPU (views are refined in passes of this many pixels, 8 views of the
#: cpu64 model's 64² maps): the 2DRN alone measured fastest so on 2 cores (docs/benchmarks.md).
CPU_REFINE_PIXELS_PER_PASS = 8 * 64 * 64
#: Views per group when :meth:`XraySyn.synthesize` reports ``view_progress`` (the 3DPN still runs once per input).
VIEWS_PER_PROGRESS_STEP = 7
#: Thickness channel order of every map: (bone, soft tissue), g/cm².
MATERIALS = ("bone", "tissue")


def pretrained_path(name: str = DEFAULT_PRETRAINED) -> Path:
    """Path of the shipped weights ``name`` (one of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise ExportError(f"no shipped weights named {name!r}; shipped: {', '.join(PRETRAINED)} "
                          "(or give the path of a file made by `xraysyn export`)")
    return Path(str(resources.files("xraysyn") / "weights" / PRETRAINED[name]))


@dataclass
class SynthesisResult:
    """What :meth:`XraySyn.synthesize` returns for N radiographs and V views (S: the model's image size,
    D: the 3DPN's volume size). Radiographs are in ``[0, 1]``, bright = attenuating, radiological orientation
    (row 0 superior, the patient's left on the image's right), as the input.

    Attributes:
        names: N input names (paths, or ``array #i``).
        azimuth_deg, elevation_deg: ``(V,)`` float64 view angles (degrees; 0, 0 is the input view T).
        views: ``(N, V, S, S)`` synthesised radiographs (the display window of −log I).
        bone_thickness, tissue_thickness: ``(N, V, S, S)`` refined areal densities, g/cm².
        unrefined: ``(N, V, S, S)`` the 3DPN's own views before the 2DRN (bilinear from its detector to S).
        input_view: ``(N, S, S)`` the synthesised radiograph at the input view T.
        input_thickness: ``(N, 2, S, S)`` (bone, tissue) g/cm² at T.
        input_display: ``(N, S, S)`` the input crop through the same display window (what ``input_view`` is
            compared with).
        input_crop: ``(N, S, S)`` the input crop as read (``[0, 1]``).
        crops: N :class:`~xraysyn.data.radiograph.CropTransform` from the crop to the original image.
        view_window: ``(N, V, 2)`` float64 the −log I values each view's display maps to 0 and 1 (its 1 % and 99 %
            quantiles), so ``views · (high − low) + low`` is −log I inside the window.
        ct_hu: ``(N, D, D, D)`` estimated CT, HU, voxel order (x, y, z) of ``world_from_voxel``.
        bone_probability: ``(N, D, D, D)`` in ``[0, 1]``; ``bone_mask`` its threshold at
            :data:`BONE_MASK_THRESHOLD`.
        world_from_voxel: ``(4, 4)`` float64 RAS+ affine (mm) of the CT grid.
        refined: whether a 2DRN refined the views (False for a 3DPN-only model: views = unrefined).
    """

    names: list[str]
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    views: torch.Tensor
    bone_thickness: torch.Tensor
    tissue_thickness: torch.Tensor
    unrefined: torch.Tensor
    input_view: torch.Tensor
    input_thickness: torch.Tensor
    input_display: torch.Tensor
    input_crop: torch.Tensor
    crops: list[CropTransform]
    view_window: torch.Tensor
    ct_hu: torch.Tensor
    bone_probability: torch.Tensor
    world_from_voxel: torch.Tensor
    refined: bool = True

    @property
    def bone_mask(self) -> torch.Tensor:
        return self.bone_probability > BONE_MASK_THRESHOLD

    def suppressed_views(self, strength: float = 1.0) -> torch.Tensor:
        """``(N, V, S, S)`` bone-suppressed novel views in ``[0, 1]``: each view re-synthesised with a fraction
        ``strength`` of its (non-negative) bone mass attenuating as the same mass of soft tissue (Algorithm 1's
        step 4 on the view's own thickness maps, where step 3 is exact), shown through the display window of
        the unsuppressed view, so that switching between ``views`` and these changes only what bone adds.
        ``strength`` 0 gives ``views`` (for a 3DPN-only model, up to the upsampling of its maps)."""
        _check_strength(strength)
        bone, tissue = self.bone_thickness, self.tissue_thickness
        moved = strength * bone.clamp_min(0.0)
        shape = bone.shape
        thickness = torch.stack([bone - moved, tissue + moved], dim=2).reshape(-1, 2, *shape[-2:])
        line = radiograph_from_thickness(thickness).line_integral.reshape(thickness.shape[0], -1).double()
        window = self.view_window.reshape(-1, 2)
        return apply_window(line, window[:, 0], window[:, 1]).reshape(shape).float()


@dataclass
class SuppressionResult:
    """Bone suppression of one radiograph at its full original resolution (H, W), ``[0, 1]`` bright = attenuating.

    Attributes:
        name: the input's name.
        original: ``(H, W)`` float32 the input as read.
        suppressed: ``(H, W)`` float32 the bone-suppressed radiograph; outside the crop equal to ``original``.
        bone_image: ``(H, W)`` float32 ``original − suppressed`` (what bone added; 0 outside the crop).
        thickness: ``(2, h, w)`` float32 (bone, tissue) g/cm² at the input view over the crop, upsampled to the
            crop's original pixels.
        crop: the crop window (:class:`~xraysyn.data.radiograph.CropTransform`).
        strength: the suppression strength used (0 = none, 1 = bone attenuates as the same mass of tissue).
        radiograph: the input :class:`~xraysyn.data.radiograph.Radiograph` (spacing, provenance).
    """

    name: str
    original: np.ndarray
    suppressed: np.ndarray
    bone_image: np.ndarray
    thickness: np.ndarray
    crop: CropTransform
    strength: float
    radiograph: Radiograph = field(repr=False)


def _angles(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if tensor.numel() == 0:
        raise ValueError(f"{name} must name at least one view angle")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite degrees, got {values!r}")
    return tensor


class XraySyn:
    """The whole model: a frozen 3DPN and (optionally) a frozen 2DRN with its hypernetwork, in eval mode.

    Build it with :meth:`from_pretrained`. ``image_size`` is the 2DRN's radiograph side S (the 3DPN's detector
    side for a 3DPN-only model); ``crop_mode`` the crop rule of its training data (``center``/``body``).
    """

    def __init__(self, prior: PriorModel, refine: RefineNet2D | None, *, image_size: int, crop_mode: str,
                 num_samples: int, source: str, export: dict | None = None):
        self.prior, self.refine = prior, refine
        self.image_size, self.crop_mode, self.num_samples = int(image_size), crop_mode, int(num_samples)
        self.source = source
        self.export = export or {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, prior: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> XraySyn:
        """The shipped weights (``None`` or a name in :data:`PRETRAINED`) or a file made by ``xraysyn export``:
        a stage-2 export (2DRN + M, the 3DPN embedded) or a stage-1 export (3DPN only).

        ``prior``: the 3DPN export for a stage-2 export made before the 3DPN was embedded (its SHA-256 must be
        the one the run recorded). Weights load with ``weights_only=True`` and their SHA-256 is checked.

        Raises:
            ExportError: not an xraysyn export, damaged, of an incompatible version, of a baseline that does not
                synthesise from real radiographs, or a stage-2 export whose 3DPN is missing.
        """
        if name_or_path is None or (isinstance(name_or_path, str) and name_or_path in PRETRAINED):
            path = pretrained_path(name_or_path or DEFAULT_PRETRAINED)
        else:
            path = Path(name_or_path)
            if not path.exists():
                raise ExportError(f"{str(name_or_path)!r} is neither a model file nor the name of shipped weights "
                                  f"(shipped: {', '.join(PRETRAINED)})")
        export = load_export(path)
        stage = export.get("stage")
        if stage == "prior":
            prior_model = prior_from_export(export, device, source=str(path))
            return cls(prior_model, None, image_size=prior_model.geometry.detector_shape[0], crop_mode="center",
                       num_samples=_prior_num_samples(export), source=str(path), export=_meta(export))
        if stage != "refine" or export.get("model_class") != "RefineNet2D":
            raise ExportError(f"{str(path)!r} is an export of {stage!r}, which does not synthesise views from a real "
                              "radiograph (evaluate it with `xraysyn evaluate simulated`); give a stage-2 export "
                              "(`train refine`) or a 3DPN export (`train prior`)")
        prior_model = cls._prior_of(export, path, prior, device)
        config = export["model_config"]
        network_config = RefineNetConfig.preset(config["preset"], static_hyper=bool(config["static_hyper"]))
        refine = RefineNet2D(network_config)
        refine.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in export["state_dict"].items()})
        refine.to(device).eval().requires_grad_(False)
        training = export.get("config", {})
        return cls(prior_model, refine, image_size=network_config.hypernet.input_size,
                   crop_mode=training.get("data", {}).get("crop_mode", "center"),
                   num_samples=int(training["num_samples"]) if "num_samples" in training
                   else _prior_num_samples(prior_model.export), source=str(path),
                   export=_meta(export))

    @staticmethod
    def _prior_of(export: dict, path: Path, prior, device) -> PriorModel:
        if "prior_export" in export:
            return prior_from_export(export["prior_export"], device, source=f"the 3DPN embedded in {str(path)!r}")
        from xraysyn.train.export import file_sha256

        record = export.get("prior", {})
        candidate = Path(prior) if prior is not None else Path(record.get("path", ""))
        if not candidate.is_file():
            raise ExportError(f"{str(path)!r} is a stage-2 export without its 3DPN, and the 3DPN it was trained "
                              f"behind ({str(candidate)!r}) is not there; pass prior=PATH (--prior) or re-export "
                              "the run with this version (which embeds the 3DPN)")
        if record.get("file_sha256") and file_sha256(candidate) != record["file_sha256"]:
            raise ExportError(f"the 3DPN {str(candidate)!r} is not the one {str(path)!r} was trained behind "
                              "(SHA-256 differs)")
        return load_prior(candidate, device)

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @property
    def name(self) -> str:
        """A short description: which networks, which preset."""
        if self.refine is None:
            return "3DPN"
        return "XraySyn without M" if self.refine.config.static_hyper else "XraySyn"

    def to(self, device: str | torch.device) -> XraySyn:
        self.prior.network.to(device)
        if self.refine is not None:
            self.refine.to(device)
        return self

    # ------------------------------------------------------------------ inputs
    def prepare(self, radiographs, *, check_view: bool = True) -> tuple[list[str], list[Radiograph]]:
        """Names and checked :class:`Radiograph` s of one input or a list of them (paths or folders, ``load_radiograph``
        results, numpy arrays or tensors; see :func:`xraysyn.synthesis.inputs.prepare_inputs`); a 4-D array or
        tensor ``(N, 1, H, W)`` is N radiographs.

        Raises:
            InputImageError: the first unusable input (``check_view``: also one that is not a frontal chest view).
        """
        from xraysyn.synthesis.inputs import prepare_inputs

        if isinstance(radiographs, (np.ndarray, torch.Tensor)) and radiographs.ndim == 4:
            radiographs = list(radiographs)
        checked = prepare_inputs(radiographs, check_view=check_view)
        if not checked:
            raise ValueError("no radiograph given")
        for _, item in checked:
            if isinstance(item, Exception):
                raise item
        return [name for name, _ in checked], [item for _, item in checked]

    def crop(self, radiograph: Radiograph) -> tuple[torch.Tensor, CropTransform]:
        """``(1, S, S)`` float32 crop of the model's size and its transform."""
        image, transform = crop_and_resize(radiograph.image, self.image_size, mode=self.crop_mode)
        return torch.from_numpy(image)[None], transform

    # ------------------------------------------------------------------ the networks
    @torch.no_grad()
    def _estimate(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, S, S)`` crops → 3DPN ``(ct_hu, bone_probability)``, each ``(N, 1, D, D, D)``."""
        prior = self.prior
        small = F.interpolate(crops, size=prior.geometry.detector_shape, mode="area")
        from xraysyn.data.input_domain import normalise_radiograph

        poses = prior.frontal_pose().expand(crops.shape[0], 4, 4)
        volume_input = network_input_from_radiograph(normalise_radiograph(small), prior.world_from_voxel(), poses,
                                                     prior.geometry, (prior.volume_size,) * 3)
        _, hu, mask = predict_volumes(prior.network, volume_input, prior.hu_scale)
        return hu, mask

    @torch.no_grad()
    def _views(self, crops: torch.Tensor, hu: torch.Tensor, mask: torch.Tensor, azimuth: torch.Tensor,
               elevation: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per radiograph the V views: 3DPN thickness, refined thickness, displays; each ``(N·V, C, ·, ·)``."""
        prior = self.prior
        count, views = crops.shape[0], azimuth.numel()
        poses = view_poses(azimuth.expand(count, views).to(self.device),
                           elevation.expand(count, views).to(self.device), prior.geometry)
        thickness_ct = ct2xray(hu, mask, prior.world_from_voxel(), poses, prior.geometry,
                               num_samples=self.num_samples).thickness
        size = (self.image_size, self.image_size)
        line_ct = radiograph_from_thickness(thickness_ct).line_integral
        unrefined = window_to_unit(line_ct)
        unrefined = F.interpolate(unrefined, size=size, mode="bilinear", align_corners=False)
        if self.refine is None:  # the 3DPN's own views, windowed on its detector grid
            refined = F.interpolate(thickness_ct, size=size, mode="bilinear", align_corners=False)
            low, high = display_window(line_ct)
            display = unrefined
        else:
            refined = self.refine_views(thickness_ct, crops.repeat_interleave(views, dim=0))
            line = radiograph_from_thickness(refined).line_integral
            low, high = display_window(line)
            display = apply_window(line.reshape(line.shape[0], -1), low, high).reshape(line.shape)
        return {"thickness": refined, "display": display, "unrefined": unrefined,
                "window": torch.stack([low, high], dim=-1)}

    def refine_views(self, thickness_ct: torch.Tensor, radiographs: torch.Tensor) -> torch.Tensor:
        """The 2DRN on ``(M, 2, h, w)`` maps and their ``(M, 1, S, S)`` input radiographs: at once on a GPU, in
        passes of :data:`CPU_REFINE_PIXELS_PER_PASS` on the CPU (the same numbers: each view is independent)."""
        if self.device.type != "cpu":
            return self.refine(thickness_ct, radiographs)
        per_pass = max(1, CPU_REFINE_PIXELS_PER_PASS // (thickness_ct.shape[-2] * thickness_ct.shape[-1]))
        return torch.cat([self.refine(t, r) for t, r in zip(thickness_ct.split(per_pass), radiographs.split(per_pass))])

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def synthesize(self, radiographs, azimuth_deg: float | Sequence[float] = 0.0,
                   elevation_deg: float | Sequence[float] = 0.0, *, batch_size: int | None = None,
                   check_view: bool = True, progress=None, view_progress=None) -> SynthesisResult:
        """Radiographs of novel views of each input (paper Fig. 1, Fig. 4).

        Args:
            radiographs: one radiograph or a list: paths (DICOM CR/DX, PNG, JPEG), ``load_radiograph`` results,
                numpy arrays or tensors ``(H, W)`` in any range (bright = attenuating).
            azimuth_deg: view azimuth(s) in degrees (rotation about the patient's long axis; 0 = the input view).
            elevation_deg: one elevation for every view, or one per azimuth (degrees).
            batch_size: radiographs per forward pass; default :data:`CPU_BATCH_SIZE` on the CPU,
                :data:`DEFAULT_BATCH_SIZE` on a GPU. The results do not depend on it.
            check_view: refuse inputs that are recognisably not frontal chest views
                (:func:`~xraysyn.synthesis.inputs.check_frontal_chest`).
            progress: optional callable ``progress(done: int)`` called after each radiograph.
            view_progress: optional callable ``view_progress(done: int, total: int)`` called after each group of
                :data:`VIEWS_PER_PROGRESS_STEP` views of the radiographs in hand (``total`` counts the input view
                too); an exception it raises stops the call. Without it all views go at once. The results do not
                depend on it.

        Raises:
            xraysyn.synthesis.inputs.InputImageError: an input that is not a usable frontal chest radiograph.
            ValueError: bad angles or batch size.
        """
        azimuth = _angles(azimuth_deg, "azimuth_deg")
        elevation = _angles(elevation_deg, "elevation_deg")
        if elevation.numel() == 1:
            elevation = elevation.expand(azimuth.numel()).clone()
        if elevation.numel() != azimuth.numel():
            raise ValueError(f"elevation_deg has {elevation.numel()} values for {azimuth.numel()} azimuths "
                             "(give one, or one per azimuth)")
        if batch_size is None:
            batch_size = CPU_BATCH_SIZE if self.device.type == "cpu" else DEFAULT_BATCH_SIZE
        if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        names, loaded = self.prepare(radiographs, check_view=check_view)
        all_azimuth = torch.cat([torch.zeros(1, dtype=torch.float64), azimuth])
        all_elevation = torch.cat([torch.zeros(1, dtype=torch.float64), elevation])
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("crop", "hu", "mask", "thickness", "display",
                                                                  "unrefined", "window")}
        crops_transforms = []
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            cropped = [self.crop(r) for r in chunk]
            crops = torch.stack([c for c, _ in cropped]).to(self.device)
            crops_transforms += [t for _, t in cropped]
            hu, mask = self._estimate(crops)
            views = all_azimuth.numel()
            group = VIEWS_PER_PROGRESS_STEP if view_progress is not None else views
            groups: dict[str, list[torch.Tensor]] = {k: [] for k in ("thickness", "display", "unrefined", "window")}
            for first in range(0, views, group):
                out = self._views(crops, hu, mask, all_azimuth[first:first + group],
                                  all_elevation[first:first + group])
                for key, kept in groups.items():
                    value = out[key].cpu()
                    kept.append(value.reshape(len(chunk), -1, *value.shape[1:]))
                if view_progress is not None:
                    view_progress(min(first + group, views), views)
            parts["crop"].append(crops[:, 0].cpu())
            parts["hu"].append(hu[:, 0].cpu())
            parts["mask"].append(mask[:, 0].cpu())
            for key, kept in groups.items():
                parts[key].append(torch.cat(kept, dim=1))
            if progress is not None:
                progress(start + len(chunk))
        crop = torch.cat(parts["crop"])
        thickness = torch.cat(parts["thickness"]).float()
        display = torch.cat(parts["display"])[:, :, 0].float()
        unrefined = torch.cat(parts["unrefined"])[:, :, 0].float()
        return SynthesisResult(
            names=names, azimuth_deg=azimuth, elevation_deg=elevation,
            views=display[:, 1:], bone_thickness=thickness[:, 1:, 0], tissue_thickness=thickness[:, 1:, 1],
            unrefined=unrefined[:, 1:], input_view=display[:, 0], input_thickness=thickness[:, 0],
            input_display=window_to_unit(crop[:, None])[:, 0], input_crop=crop, crops=crops_transforms,
            view_window=torch.cat(parts["window"])[:, 1:].double(),
            ct_hu=torch.cat(parts["hu"]), bone_probability=torch.cat(parts["mask"]),
            world_from_voxel=self.prior.world_from_voxel().double().cpu(), refined=self.refine is not None)

    @torch.no_grad()
    def suppress_bones(self, radiographs, strength: float = 1.0, *, check_view: bool = True,
                       progress=None) -> list[SuppressionResult]:
        """Bone image and bone-suppressed radiograph of each input at its full original resolution, by reversing
        CT2Xray (Algorithm 1) with the refined thickness maps at the input view over the crop
        (:func:`~xraysyn.physics.suppression.suppress_bone_upsampled`: the per-pixel factor of Algorithm 1 from the
        model's maps, upsampled bilinearly to the crop's original pixels); outside the crop the image is left as
        it was.

        Args:
            radiographs: as for :meth:`synthesize`.
            strength: in [0, 1]; 0 returns the input unchanged, 1 makes bone attenuate as the same mass of soft
                tissue (``factor`` of :func:`~xraysyn.physics.suppression.suppress_bone`).
            check_view: as for :meth:`synthesize`.
            progress: optional callable ``progress(done: int)``.

        Raises:
            ValueError: strength outside [0, 1]; InputImageError for unusable inputs.
        """
        _check_strength(strength)
        names, loaded = self.prepare(radiographs, check_view=check_view)
        results = []
        for index, (name, radiograph) in enumerate(zip(names, loaded)):
            crop, transform = self.crop(radiograph)
            crop = crop[None].to(self.device)
            hu, mask = self._estimate(crop)
            zero = torch.zeros(1, dtype=torch.float64)
            thickness = self._views(crop, hu, mask, zero, zero)["thickness"].double().clamp_min(0.0)
            original = radiograph.image.astype(np.float32)
            rows = slice(transform.row0, transform.row0 + transform.crop_rows)
            cols = slice(transform.col0, transform.col0 + transform.crop_cols)
            window = torch.from_numpy(original[rows, cols].astype(np.float64))[None, None].to(self.device)
            suppressed_window = original[rows, cols].copy()
            if strength > 0 and float(window.max()) > 0:
                out = suppress_bone_upsampled(window, thickness, factor=float(strength))
                suppressed_window = out.suppressed[0, 0].clamp(0.0, 1.0).float().cpu().numpy()
            suppressed = original.copy()
            suppressed[rows, cols] = suppressed_window
            thickness = F.interpolate(thickness, size=(transform.crop_rows, transform.crop_cols), mode="bilinear",
                                      align_corners=False)
            results.append(SuppressionResult(name=name, original=original, suppressed=suppressed,
                                             bone_image=original - suppressed,
                                             thickness=thickness[0].float().cpu().numpy(), crop=transform,
                                             strength=float(strength), radiograph=radiograph))
            if progress is not None:
                progress(index + 1)
        return results


def _check_strength(strength) -> None:
    if isinstance(strength, bool) or not (isinstance(strength, (int, float)) and math.isfinite(strength)
                                          and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a number in [0, 1] (0 = unchanged, 1 = full), got {strength!r}")


def _prior_num_samples(export: dict) -> int:
    """Projector samples per ray the 3DPN was trained with (its simulation config), for a 3DPN-only model."""
    prior = export.get("prior_export", export)
    simulation = prior.get("config", {}).get("simulation", {})
    value = simulation.get("num_samples")
    if value is None:
        raise ExportError("the 3DPN export does not record its simulation's samples per ray (config.simulation"
                          ".num_samples); re-export it with this version")
    return int(value)


def _meta(export: dict) -> dict[str, Any]:
    """The export's description without weights (what the model card and `evaluate` report)."""
    meta = {k: v for k, v in export.items() if k not in ("state_dict", "prior_export")}
    if "prior_export" in export:
        meta["prior_export"] = {k: v for k, v in export["prior_export"].items() if k != "state_dict"}
    return meta
