"""The stage-1 computation of XraySyn: the 3D PriorNet learns CT + bone mask from a single radiograph,
supervised by the CT, the bone mask and projection consistency (paper eq. 7-10).

For a batch of CT volumes (HU), bone masks and per-item views [T, T']:

1. :func:`view_poses`: the C-arm poses of T and T' (volume-major, T at even rows);
2. :func:`simulate_targets`: CT2Xray (eq. 3-6) of the true CT at T and T' without gradients — the
   target radiographs and thickness maps t_m(T), t_m(T');
3. :func:`simulated_network_input`: the input radiograph I_in^T as a real one would arrive — simulated at
   the item's tube potential from t_m(T), perturbed (noise, blur, display transform), then brought into the
   input domain by :func:`xraysyn.data.input_domain.normalise_radiograph`; :func:`network_input_from_radiograph`
   backprojects it (eq. 7) into V_BP. The same two functions serve real radiographs at inference;
4. :func:`predict_volumes`: G(V_BP) (eq. 8) → CT (HU through :class:`HUScale`) and bone probability;
5. :func:`stage1_losses`: CT2Xray of the prediction at T and T' (gradients reach the network through the
   projector) and the losses of eq. 9-10.

:func:`stage1_losses` is :func:`stage1_targets` (steps 1-3 up to the normalised input radiograph), the network
(steps 3-4) and :func:`stage1_terms` (step 5); baselines whose network takes the radiograph itself (X2CT-CNN,
:mod:`xraysyn.train.baselines`) call the two parts around their own network.

Simulation modes (``mode``, :data:`SIMULATION_MODES`): ``ct2xray`` (default, eq. 3-6) or ``drr`` (the
3DPN-DRR ablation: :func:`xraysyn.physics.drr`, the line integral of μ at one effective energy, no material
decomposition; transmission ``exp(−DRR)``, displayed as eq. 5 ``max(I) − I``). A DRR has no thickness maps, so
its results carry ``(N, 0, rows, cols)`` thickness tensors and no materials, the tube-potential perturbation
of the input (which re-simulates the spectrum from the thicknesses) is not applied, and the thickness terms
of eq. 10 do not exist: L_xray^T is the image term ``mean|I_CT − I_in|`` alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from xraysyn.data.input_domain import NO_PERTURBATION, InputPerturbation, simulated_display_input
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.models.normalization import HUScale, mask_probability_from_tanh
from xraysyn.physics import CT2XrayResult, ct2xray, drr, radiograph_from_thickness, tube_spectrum
from xraysyn.physics.attenuation import display_image
from xraysyn.projector import backproject
from xraysyn.train.losses import (Stage1LossWeights, ct_loss, mask_loss, soft_dice_loss, stage1_generator_loss,
                                  xray_view_loss)

__all__ = [
    "VIEWS_PER_VOLUME",
    "SIMULATION_MODES",
    "simulate_views",
    "stage1_targets",
    "stage1_terms",
    "view_poses",
    "split_views",
    "simulate_targets",
    "simulated_network_input",
    "network_input_from_radiograph",
    "predict_volumes",
    "stage1_losses",
    "volume_edge_mm",
]

#: Views simulated per volume in one step: T and T'.
VIEWS_PER_VOLUME = 2
#: How radiographs are simulated: CT2Xray (eq. 3-6) or a monochromatic DRR (the 3DPN-DRR ablation).
SIMULATION_MODES = ("ct2xray", "drr")


def _check_mode(mode: str) -> None:
    if mode not in SIMULATION_MODES:
        raise ValueError(f"simulation mode must be one of {SIMULATION_MODES}, got {mode!r}")


def simulate_views(ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel, poses: torch.Tensor,
                   geometry: ConeBeamGeometry, *, mode: str = "ct2xray", **projector_kwargs) -> CT2XrayResult:
    """Radiographs of CT volumes in the given simulation ``mode`` (differentiable w.r.t. the CT and mask).

    Args:
        ct_hu: ``(B, 1, D, H, W)`` CT in HU.
        bone_mask: same shape, bone probability in [0, 1] (unused by ``drr``).
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` mm.
        poses: ``(B·V, 4, 4)`` camera_from_isocenter poses, volume-major.
        geometry: the C-arm.
        mode: ``ct2xray`` or ``drr`` (see the module docstring).
        **projector_kwargs: ``backend``, ``num_samples`` / ``step_mm``.

    Returns:
        :class:`~xraysyn.physics.CT2XrayResult` of ``(B·V, ...)`` tensors; in ``drr`` mode ``line_integral`` is
        the DRR (dimensionless), ``i_atten = exp(−DRR)``, ``image = max(i_atten) − i_atten`` per view, and
        ``thickness`` is ``(B·V, 0, rows, cols)`` with ``materials = ()``.
    """
    _check_mode(mode)
    if mode == "ct2xray":
        return ct2xray(ct_hu, bone_mask, world_from_voxel, poses, geometry, **projector_kwargs)
    line_integral = drr(ct_hu, world_from_voxel, poses, geometry, **projector_kwargs)
    i_atten = torch.exp(-line_integral)
    thickness = line_integral.new_zeros((line_integral.shape[0], 0, *line_integral.shape[2:]))
    return CT2XrayResult(display_image(i_atten), i_atten, line_integral, thickness, ())


def view_poses(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, geometry: ConeBeamGeometry) -> torch.Tensor:
    """``(B, V)`` azimuth / elevation (degrees) → ``(B·V, 4, 4)`` float32 camera_from_isocenter poses, volume-major."""
    azimuth = azimuth_deg.detach().to("cpu", torch.float64).reshape(-1)
    elevation = elevation_deg.detach().to("cpu", torch.float64).reshape(-1)
    return geometry.poses(azimuth, elevation, dtype=torch.float32).to(azimuth_deg.device)


def split_views(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B·2, ...)`` volume-major → the T part and the T' part, each ``(B, ...)``."""
    return stacked[0::VIEWS_PER_VOLUME], stacked[1::VIEWS_PER_VOLUME]


@torch.no_grad()
def simulate_targets(ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel, poses: torch.Tensor,
                     geometry: ConeBeamGeometry, *, mode: str = "ct2xray", **projector_kwargs) -> CT2XrayResult:
    """The simulation (:func:`simulate_views`, default CT2Xray) of the true CT at the given poses (no gradients):
    ``(B·V, ...)`` tensors, volume-major."""
    return simulate_views(ct_hu, bone_mask, world_from_voxel, poses, geometry, mode=mode, **projector_kwargs)


@functools.lru_cache(maxsize=64)
def _spectrum(kvp: float):
    return tube_spectrum(kvp)


@torch.no_grad()
def simulated_network_input(target_thickness_t: torch.Tensor, target_i_atten_t: torch.Tensor,
                            perturbations: list[InputPerturbation] | None = None) -> torch.Tensor:
    """The normalised input radiographs ``(B, 1, rows, cols)`` in [0, 1] of a batch.

    Args:
        target_thickness_t: ``(B, M, rows, cols)`` true thickness maps at T (g/cm²).
        target_i_atten_t: ``(B, 1, rows, cols)`` true transmission at T (default spectrum).
        perturbations: one per item (default none): its ``kvp`` re-simulates the transmission from the
            thickness maps at that tube potential, then noise, blur and the display transform follow.
    """
    batch = target_thickness_t.shape[0]
    perturbations = perturbations if perturbations is not None else [NO_PERTURBATION] * batch
    if len(perturbations) != batch:
        raise ValueError(f"{len(perturbations)} perturbations for a batch of {batch}")
    images = []
    for b, perturbation in enumerate(perturbations):
        transmission = target_i_atten_t[b:b + 1]
        if perturbation.kvp is not None:
            transmission = radiograph_from_thickness(target_thickness_t[b:b + 1],
                                                     _spectrum(round(float(perturbation.kvp), 1))).i_atten
        images.append(simulated_display_input(transmission, perturbation))
    return torch.cat(images).to(target_i_atten_t.device)


def volume_edge_mm(world_from_voxel: torch.Tensor, volume_shape) -> torch.Tensor:
    """``(B,)`` mean edge length (mm) of each volume's box: the length scale of V_BP."""
    affines = world_from_voxel if world_from_voxel.dim() == 3 else world_from_voxel[None]
    spacing = affines[:, :3, :3].norm(dim=1)  # (B, 3) mm per voxel along each voxel axis
    sizes = torch.tensor(volume_shape, dtype=spacing.dtype, device=spacing.device)
    return (spacing * sizes).mean(dim=1)


@torch.no_grad()
def network_input_from_radiograph(normalised: torch.Tensor, world_from_voxel, input_poses: torch.Tensor,
                                  geometry: ConeBeamGeometry, volume_shape, *, backend: str = "auto") -> torch.Tensor:
    """V_BP for the network, ``(B, 1, D, H, W)`` dimensionless.

    BP (eq. 7) divides each ray's value by its chord through the volume (mm); multiplying by the volume's
    mean edge (mm, :func:`volume_edge_mm`) makes a ray of value 1 crossing the whole box ≈ 1.

    Args:
        normalised: ``(B, 1, rows, cols)`` :func:`~xraysyn.data.input_domain.normalise_radiograph` output.
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` mm.
        input_poses: ``(B, 4, 4)`` poses of the input view.
        geometry: the C-arm.
        volume_shape: ``(D, H, W)``.
        backend: BP backend, see :func:`xraysyn.projector.backproject`.
    """
    bp_per_mm = backproject(normalised, world_from_voxel, input_poses, geometry, volume_shape, backend=backend)
    edge = volume_edge_mm(torch.as_tensor(world_from_voxel, dtype=bp_per_mm.dtype, device=bp_per_mm.device),
                          volume_shape)
    return bp_per_mm * edge.reshape(-1, 1, 1, 1, 1)


def predict_volumes(model: torch.nn.Module, network_input: torch.Tensor, hu_scale: HUScale,
                    autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G(V_BP) → ``(ct_normalized, ct_hu, bone_probability)``, each ``(B, 1, D, H, W)`` float32:
    normalised CT in [-1, 1], CT in HU, bone probability in [0, 1]. ``autocast_dtype``: run the network
    under CUDA autocast in this dtype (e.g. bf16); the outputs are cast back to float32."""
    context = (torch.autocast("cuda", dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
    with context:
        output = model(network_input)
    output = output.float()
    if output.dim() != 5 or output.shape[1] != 2:
        raise ValueError(f"the model must return (B, 2, D, H, W) (CT, mask), got {tuple(output.shape)}")
    ct_normalized = output[:, :1]
    return ct_normalized, hu_scale.to_hu(ct_normalized), mask_probability_from_tanh(output[:, 1:])


def stage1_targets(batch: dict, geometry: ConeBeamGeometry, *, perturbations: list[InputPerturbation] | None = None,
                   mode: str = "ct2xray", **projector_kwargs) -> tuple[torch.Tensor, CT2XrayResult, torch.Tensor]:
    """Steps 1-3 of a stage-1 batch: ``(poses, target, normalised)``.

    Args:
        batch: CT items, see :func:`stage1_losses`.
        geometry: the C-arm.
        perturbations: of the simulated input, one per item (default none); in ``drr`` mode their tube potential
            is ignored (a DRR has no spectrum).
        mode: the simulation, ``ct2xray`` or ``drr``.
        **projector_kwargs: ``backend``, ``num_samples`` / ``step_mm``.

    Returns:
        ``poses (B·2, 4, 4)`` of [T, T'] volume-major, the simulated truth at them (``(B·2, ...)``, no gradients)
        and the normalised input radiographs ``(B, 1, rows, cols)`` in [0, 1] at T (in the CT's dtype).
    """
    _check_mode(mode)
    ct_hu, bone, affine = batch["ct_hu"], batch["bone"], batch["world_from_voxel"]
    poses = view_poses(batch["azimuth_deg"], batch["elevation_deg"], geometry)
    target = simulate_targets(ct_hu, bone, affine, poses, geometry, mode=mode, **projector_kwargs)
    thickness_t, _ = split_views(target.thickness)
    i_atten_t, _ = split_views(target.i_atten)
    if mode == "drr" and perturbations is not None:
        perturbations = [dataclasses.replace(p, kvp=None) for p in perturbations]
    normalised = simulated_network_input(thickness_t, i_atten_t, perturbations).to(ct_hu.dtype)
    return poses, target, normalised


def _view_loss(image: torch.Tensor, target_image: torch.Tensor, thickness: torch.Tensor,
               target_thickness: torch.Tensor) -> torch.Tensor:
    """L_xray of eq. 10, or its image term alone when there are no thickness maps (DRR mode)."""
    if thickness.shape[1] == 0:
        return (image - target_image).abs().mean()
    return xray_view_loss(image, target_image, thickness, target_thickness)


def stage1_terms(ct_normalized: torch.Tensor, predicted_hu: torch.Tensor, predicted_mask: torch.Tensor, batch: dict,
                 poses: torch.Tensor, target: CT2XrayResult, geometry: ConeBeamGeometry, *,
                 loss_weights: Stage1LossWeights, hu_scale: HUScale, mode: str = "ct2xray",
                 **projector_kwargs) -> tuple[torch.Tensor, dict]:
    """Step 5: the simulation of the prediction at T and T' and L_G (eq. 9) with its terms.

    Args:
        ct_normalized, predicted_hu, predicted_mask: :func:`predict_volumes` output, each ``(B, 1, D, H, W)``.
        batch: the CT items (``ct_hu``, ``bone``, ``world_from_voxel``).
        poses, target: :func:`stage1_targets` output.
        geometry, loss_weights, hu_scale, mode, **projector_kwargs: as for :func:`stage1_losses`.

    Returns:
        ``(total, terms)`` as :func:`stage1_losses`.
    """
    ct_hu, bone, affine = batch["ct_hu"], batch["bone"], batch["world_from_voxel"]
    predicted = simulate_views(predicted_hu, predicted_mask, affine, poses, geometry, mode=mode, **projector_kwargs)
    image_t, image_t_prime = split_views(predicted.image)
    target_image_t, target_image_t_prime = split_views(target.image)
    pred_thickness_t, pred_thickness_t_prime = split_views(predicted.thickness)
    target_thickness_t, target_thickness_t_prime = split_views(target.thickness)
    terms = {
        "ct": ct_loss(ct_normalized, hu_scale.to_normalized(ct_hu)),
        "mask": mask_loss(predicted_mask, bone),
        "mask_dice": soft_dice_loss(predicted_mask, bone),
        "xray_t": _view_loss(image_t, target_image_t, pred_thickness_t, target_thickness_t),
        "xray_t_prime": _view_loss(image_t_prime, target_image_t_prime, pred_thickness_t_prime,
                                   target_thickness_t_prime),
    }
    total = stage1_generator_loss(loss_weights, **terms)
    return total, {name: value.detach() for name, value in terms.items()}


def stage1_losses(model: torch.nn.Module, batch: dict, geometry: ConeBeamGeometry, *, loss_weights: Stage1LossWeights,
                  hu_scale: HUScale, perturbations: list[InputPerturbation] | None = None,
                  autocast_dtype: torch.dtype | None = None, mode: str = "ct2xray",
                  **projector_kwargs) -> tuple[torch.Tensor, dict]:
    """L_G (eq. 9) of a batch and its terms; call ``.backward()`` on the first.

    Args:
        model: ``(B, 1, D, H, W)`` → ``(B, 2, D, H, W)`` in [-1, 1], e.g. :class:`~xraysyn.models.PriorNet3D`.
        batch: CT items (:mod:`xraysyn.data.datasets`): ``ct_hu``, ``bone`` ``(B, 1, D, H, W)``,
            ``world_from_voxel (B, 4, 4)``, ``azimuth_deg`` / ``elevation_deg (B, 2)`` of [T, T'].
        geometry: the C-arm.
        loss_weights, hu_scale: λ of eq. 9 and the network's HU scale.
        perturbations: of the simulated input, one per item (default none).
        autocast_dtype: network autocast dtype on CUDA (None: float32).
        mode: the simulation of targets and predictions, ``ct2xray`` (eq. 3-6) or ``drr`` (image term only).
        **projector_kwargs: ``backend``, ``num_samples`` / ``step_mm`` for the simulation and BP.

    Returns:
        ``(total, terms)``: the scalar loss and a dict of detached scalars ``ct``, ``mask``, ``mask_dice``, ``xray_t``,
        ``xray_t_prime``.
    """
    ct_hu, affine = batch["ct_hu"], batch["world_from_voxel"]
    poses, target, normalised = stage1_targets(batch, geometry, perturbations=perturbations, mode=mode,
                                               **projector_kwargs)
    network_input = network_input_from_radiograph(normalised, affine, poses[0::VIEWS_PER_VOLUME], geometry,
                                                  tuple(ct_hu.shape[2:]), backend=projector_kwargs.get("backend", "auto"))
    ct_normalized, predicted_hu, predicted_mask = predict_volumes(model, network_input, hu_scale, autocast_dtype)
    return stage1_terms(ct_normalized, predicted_hu, predicted_mask, batch, poses, target, geometry,
                        loss_weights=loss_weights, hu_scale=hu_scale, mode=mode, **projector_kwargs)
