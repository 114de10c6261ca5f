"""One stage-1 training step of XraySyn: the 3D PriorNet learns CT + bone mask from a single
radiograph, supervised by the CT, the bone mask and projection consistency (paper eq. 7-10).

For a batch of CT volumes (HU) and bone masks:

1. :func:`sample_view_angles` draws an input view T and a second view T' per volume, azimuth and
   elevation uniform in ±``max_angle_deg`` (paper: ±18°);
2. :func:`simulate_targets` runs CT2Xray (eq. 3-6) on the true CT at T and T' without gradients:
   the input radiograph I_in^T and the target thickness maps t_m(T), t_m(T');
3. :func:`network_input_from_backprojection` backprojects I_in^T (eq. 7) into V_BP. We backproject
   the line integral ``−log I_atten`` (not the displayed radiograph): BP divides by the chord
   length, so V_BP is the mean attenuation coefficient (1/mm) along each ray, a μ-like volume.
   It is divided by :func:`reference_attenuation_per_mm` (μ of water at the spectrum's mean
   energy) so a ray through water only gives ≈ 1: a fixed physical scale, the same for every
   image (no per-image normalisation, which would hide the patient's thickness);
4. :func:`predict_volumes`: G(V_BP) (eq. 8) → CT (HU through :class:`HUScale`) and bone
   probability ``(t + 1) / 2``;
5. CT2Xray of the prediction at T and T' (gradients reach the network through the projector),
   the losses of eq. 9-10, backward and one optimizer step (:func:`stage1_step`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.models.normalization import HUScale, mask_probability_from_tanh
from xraysyn.models.unet3d import PriorNet3D, PriorNetConfig
from xraysyn.physics import (
    CT2XrayResult,
    MaterialTable,
    ct2xray,
    default_drr_energy_keV,
    linear_attenuation_per_mm,
)
from xraysyn.projector import backproject
from xraysyn.train.losses import (
    Stage1LossWeights,
    ct_loss,
    mask_loss,
    stage1_generator_loss,
    xray_view_loss,
)

__all__ = [
    "PAPER_MAX_ANGLE_DEG",
    "PROJECTOR_BACKENDS",
    "Stage1Config",
    "Stage1Views",
    "make_optimizer",
    "network_input_from_backprojection",
    "predict_volumes",
    "reference_attenuation_per_mm",
    "sample_view_angles",
    "simulate_targets",
    "split_views",
    "stage1_step",
]

#: Paper, Training details: "T and T' are sampled randomly from −18° to 18° in azimuth and elevation".
PAPER_MAX_ANGLE_DEG = 18.0
#: Projector backends a stage-1 step may request (valid for both forward projection and BP).
PROJECTOR_BACKENDS = ("auto", "reference")
#: Stage 1 of the paper: 128³ volumes and a 128² detector.
PAPER_DETECTOR_PIXELS = 128
#: Field of view (mm) of the default chest volume (that of :func:`xraysyn.data.phantom.make_chest_phantom`).
DEFAULT_FIELD_OF_VIEW_MM = 384.0
#: Optimiser of the official release (Adam, lr 1e-4, betas (0.5, 0.9)); see shared DESIGN notes.
PAPER_LEARNING_RATE = 1e-4
PAPER_ADAM_BETAS = (0.5, 0.9)
#: Views simulated per volume in one step: T and T'.
VIEWS_PER_VOLUME = 2
WATER_DENSITY_G_PER_CM3 = 1.0


@dataclass(frozen=True)
class Stage1Config:
    """Settings of a stage-1 step.

    Args:
        model_preset: :class:`PriorNetConfig` preset, ``"paper"`` (Table 3) or ``"small"``.
        sdd_mm, sid_mm: source–detector and source–isocenter distances (mm).
        detector_pixels: square detector size in pixels (paper: 128).
        field_of_view_mm: edge of the (cubic) volume in mm; the detector pixel spacing is chosen
            so the detector covers it at the isocenter plane: ``fov · sdd / sid / detector_pixels``.
        max_angle_deg: T and T' azimuth and elevation are uniform in ±this (degrees).
        learning_rate, adam_betas: Adam settings.
        projector_backend: ``"auto"`` or ``"reference"`` (forward projections and BP).
        num_samples, step_mm: projector ray sampling (at most one; default half a voxel step).
        loss_weights: λ of eq. 9.
        hu_scale: HU ↔ [-1, 1] mapping of the network's CT channel.
    """

    model_preset: str = "paper"
    sdd_mm: float = 1200.0
    sid_mm: float = 1000.0
    detector_pixels: int = PAPER_DETECTOR_PIXELS
    field_of_view_mm: float = DEFAULT_FIELD_OF_VIEW_MM
    max_angle_deg: float = PAPER_MAX_ANGLE_DEG
    learning_rate: float = PAPER_LEARNING_RATE
    adam_betas: tuple[float, float] = PAPER_ADAM_BETAS
    projector_backend: str = "auto"
    num_samples: int | None = None
    step_mm: float | None = None
    loss_weights: Stage1LossWeights = field(default_factory=Stage1LossWeights)
    hu_scale: HUScale = field(default_factory=HUScale)

    def __post_init__(self):
        PriorNetConfig.preset(self.model_preset)  # validates the name
        for name in ("field_of_view_mm", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.max_angle_deg, (int, float)) or not 0 <= self.max_angle_deg < 90:
            raise ValueError(f"max_angle_deg must be in [0, 90) degrees, got {self.max_angle_deg!r}")
        if isinstance(self.detector_pixels, bool) or not isinstance(self.detector_pixels, int) \
                or self.detector_pixels < 1:
            raise ValueError(f"detector_pixels must be a positive integer, got {self.detector_pixels!r}")
        if self.projector_backend not in PROJECTOR_BACKENDS:
            raise ValueError(f"projector_backend must be one of {PROJECTOR_BACKENDS}, got {self.projector_backend!r}")
        if self.num_samples is not None and self.step_mm is not None:
            raise ValueError("give at most one of num_samples and step_mm")
        betas = tuple(self.adam_betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", betas)
        if not isinstance(self.loss_weights, Stage1LossWeights):
            raise ValueError(f"loss_weights must be a Stage1LossWeights, got {type(self.loss_weights).__name__}")  # noqa: TRY004 (project convention: ValueError)
        if not isinstance(self.hu_scale, HUScale):
            raise ValueError(f"hu_scale must be a HUScale, got {type(self.hu_scale).__name__}")  # noqa: TRY004 (project convention: ValueError)
        self.geometry()  # validates sdd/sid

    def geometry(self) -> ConeBeamGeometry:
        """The C-arm: square detector whose width covers ``field_of_view_mm`` at the isocenter."""
        magnification = self.sdd_mm / self.sid_mm
        spacing = self.field_of_view_mm * magnification / self.detector_pixels
        return ConeBeamGeometry(sdd=self.sdd_mm, sid=self.sid_mm,
                                detector_shape=(self.detector_pixels, self.detector_pixels),
                                pixel_spacing=(spacing, spacing))

    def model_config(self) -> PriorNetConfig:
        """The :class:`PriorNetConfig` of ``model_preset``."""
        return PriorNetConfig.preset(self.model_preset)

    def projector_kwargs(self) -> dict:
        """Keyword arguments for :func:`xraysyn.physics.ct2xray` / the projector."""
        kwargs: dict = {"backend": self.projector_backend}
        if self.num_samples is not None:
            kwargs["num_samples"] = self.num_samples
        if self.step_mm is not None:
            kwargs["step_mm"] = self.step_mm
        return kwargs


def make_optimizer(model: torch.nn.Module, config: Stage1Config) -> torch.optim.Adam:
    """Adam over the model's parameters with the config's learning rate and betas."""
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.adam_betas)


@dataclass(frozen=True)
class Stage1Views:
    """The views of one step: ``azimuth_deg``/``elevation_deg`` ``(B, 2)`` degrees (column 0 = T,
    column 1 = T') and ``poses`` ``(B·2, 4, 4)`` camera_from_isocenter, volume-major
    (item b's T at row 2b, T' at row 2b+1)."""

    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    poses: torch.Tensor

    @property
    def input_poses(self) -> torch.Tensor:
        """``(B, 4, 4)`` poses of the input view T."""
        return self.poses[0::VIEWS_PER_VOLUME]


def split_views(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B·2, ...)`` volume-major → the T part and the T' part, each ``(B, ...)``."""
    return stacked[0::VIEWS_PER_VOLUME], stacked[1::VIEWS_PER_VOLUME]


def sample_view_angles(batch: int, geometry: ConeBeamGeometry, max_angle_deg: float = PAPER_MAX_ANGLE_DEG, *,
                       generator: torch.Generator | None = None, device=None) -> Stage1Views:
    """Draw T and T' per volume, azimuth and elevation independent and uniform in ±``max_angle_deg``.

    The draw happens on the CPU (``generator`` is a CPU generator) and the poses are moved to
    ``device`` (float32).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    uniform = torch.rand(2, batch, VIEWS_PER_VOLUME, generator=generator, dtype=torch.float64)
    angles = (2.0 * uniform - 1.0) * float(max_angle_deg)
    azimuth, elevation = angles[0].to(torch.float32), angles[1].to(torch.float32)
    poses = geometry.poses(azimuth.reshape(-1), elevation.reshape(-1), dtype=torch.float32)
    return Stage1Views(azimuth.to(device), elevation.to(device), poses.to(device))


@torch.no_grad()
def simulate_targets(ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel, views: Stage1Views,
                     config: Stage1Config) -> CT2XrayResult:
    """CT2Xray of the true CT at T and T' (no gradients): ``(B·2, ...)`` tensors, volume-major."""
    return ct2xray(ct_hu, bone_mask, world_from_voxel, views.poses, config.geometry(), **config.projector_kwargs())


@functools.lru_cache(maxsize=1)
def reference_attenuation_per_mm() -> float:
    """μ of water (1/mm) at :func:`xraysyn.physics.default_drr_energy_keV` (the tube spectrum's
    mean photon energy): the scale dividing V_BP."""
    energy_keV = default_drr_energy_keV()
    mass_attenuation = float(MaterialTable.default().mass_attenuation("water", energy_keV))
    return float(linear_attenuation_per_mm(mass_attenuation, WATER_DENSITY_G_PER_CM3))


def network_input_from_backprojection(line_integral: torch.Tensor, world_from_voxel, input_poses: torch.Tensor,
                                      geometry: ConeBeamGeometry, volume_shape, *,
                                      backend: str = "auto") -> torch.Tensor:
    """V_BP scaled for the network, ``(B, 1, D, H, W)`` dimensionless (≈ 1 for water).

    Args:
        line_integral: ``(B, 1, rows, cols)`` ``−log I_atten`` of the input view (dimensionless).
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` mm.
        input_poses: ``(B, 4, 4)`` poses of the input view.
        geometry: the C-arm.
        volume_shape: ``(D, H, W)``.
        backend: BP backend, see :func:`xraysyn.projector.backproject`.
    """
    bp_per_mm = backproject(line_integral, world_from_voxel, input_poses, geometry, volume_shape, backend=backend)
    return bp_per_mm / reference_attenuation_per_mm()


def predict_volumes(model: torch.nn.Module, network_input: torch.Tensor,
                    hu_scale: HUScale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G(V_BP) → ``(ct_normalized, ct_hu, bone_probability)``, each ``(B, 1, D, H, W)``:
    normalised CT in [-1, 1], CT in HU, bone probability in [0, 1]."""
    output = model(network_input)
    if output.dim() != 5 or output.shape[1] != 2:
        raise ValueError(f"the model must return (B, 2, D, H, W) (CT, mask), got {tuple(output.shape)}")
    ct_normalized = output[:, :1]
    return ct_normalized, hu_scale.to_hu(ct_normalized), mask_probability_from_tanh(output[:, 1:])


def _check_batch(ct_hu, bone_mask, model) -> None:
    if not isinstance(ct_hu, torch.Tensor) or ct_hu.dim() != 5 or ct_hu.shape[1] != 1:
        shape = tuple(ct_hu.shape) if isinstance(ct_hu, torch.Tensor) else type(ct_hu).__name__
        raise ValueError(f"ct_hu must be a tensor (B, 1, D, H, W) in HU, got {shape}")
    if not isinstance(bone_mask, torch.Tensor) or bone_mask.shape != ct_hu.shape:
        shape = tuple(bone_mask.shape) if isinstance(bone_mask, torch.Tensor) else type(bone_mask).__name__
        raise ValueError(f"bone_mask must be a tensor shaped like ct_hu {tuple(ct_hu.shape)}, got {shape}")
    if isinstance(model, PriorNet3D):
        model.check_input(ct_hu)


def stage1_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ct_hu: torch.Tensor,
                bone_mask: torch.Tensor, world_from_voxel, config: Stage1Config,
                generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimisation step of the 3DPN (paper eq. 7-10) on a batch; see the module docstring.

    Args:
        model: a network ``(B, 1, D, H, W)`` → ``(B, 2, D, H, W)`` in [-1, 1], e.g. :class:`PriorNet3D`.
        optimizer: over the model's parameters (e.g. :func:`make_optimizer`).
        ct_hu: ``(B, 1, D, H, W)`` CT in HU.
        bone_mask: ``(B, 1, D, H, W)`` bone probability in [0, 1] (binary or soft).
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` voxel → world mm; isocenter = volume centre.
        config: the step's settings (geometry, angles, projector, loss weights, HU scale).
        generator: CPU generator for the view angles (reproducible steps).

    Returns:
        Floats: ``total`` (L_G, eq. 9), ``ct`` (L_CT), ``mask`` (L_mask), ``xray_t`` (L_xray^T),
        ``xray_t_prime`` (L_xray^T').
    """
    _check_batch(ct_hu, bone_mask, model)
    geometry = config.geometry()
    projector_kwargs = config.projector_kwargs()
    views = sample_view_angles(ct_hu.shape[0], geometry, config.max_angle_deg, generator=generator,
                               device=ct_hu.device)
    target = simulate_targets(ct_hu, bone_mask, world_from_voxel, views, config)
    input_line_integral, _ = split_views(target.line_integral)
    with torch.no_grad():
        network_input = network_input_from_backprojection(
            input_line_integral, world_from_voxel, views.input_poses, geometry, tuple(ct_hu.shape[2:]),
            backend=config.projector_backend)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    ct_normalized, predicted_hu, predicted_mask = predict_volumes(model, network_input, config.hu_scale)
    predicted = ct2xray(predicted_hu, predicted_mask, world_from_voxel, views.poses, geometry, **projector_kwargs)

    image_t, image_t_prime = split_views(predicted.image)
    target_image_t, target_image_t_prime = split_views(target.image)
    thickness_t, thickness_t_prime = split_views(predicted.thickness)
    target_thickness_t, target_thickness_t_prime = split_views(target.thickness)
    terms = {
        "ct": ct_loss(ct_normalized, config.hu_scale.to_normalized(ct_hu)),
        "mask": mask_loss(predicted_mask, bone_mask),
        "xray_t": xray_view_loss(image_t, target_image_t, thickness_t, target_thickness_t),
        "xray_t_prime": xray_view_loss(image_t_prime, target_image_t_prime, thickness_t_prime,
                                       target_thickness_t_prime),
    }
    total = stage1_generator_loss(config.loss_weights, **terms)
    total.backward()
    optimizer.step()
    return {"total": float(total.detach()), **{name: float(value.detach()) for name, value in terms.items()}}
