"""Public projector functions: forward projection FP (paper eq. 1), its exact adjoint (the
gradient of eq. 2) and the single-image backprojector BP (eq. 7).

All lengths are in mm; see :mod:`xraysyn.geometry` for the frame conventions and
:mod:`xraysyn.projector.rays` for the exact sampling model shared by every backend.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import cpu_numba, frames
from xraysyn.projector.backend import capabilities_of
from xraysyn.projector.errors import ProjectorInputError
from xraysyn.projector.frames import HostFrames
from xraysyn.projector.rays import RaySet, build_rays
from xraysyn.projector.reference import RayMarch, backend_forward, backproject_voxels, march_adjoint

__all__ = ["forward_project", "forward_project_adjoint", "backproject", "chord_lengths", "BACKENDS"]

BACKENDS = ("auto", "reference", "numba", "triton")
_DEFAULT_BUDGET_MIB = 512.0


# ---------------------------------------------------------------------------------------- validation
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32  # accumulate low-precision volumes in float32
    raise ProjectorInputError(f"volume dtype must be floating point, got {dtype}")


def _check_geometry(geometry) -> None:
    if not isinstance(geometry, ConeBeamGeometry):
        raise ProjectorInputError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")


def _check_spatial_shape(shape) -> tuple[int, int, int]:
    try:
        d, h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ProjectorInputError(f"volume spatial shape must be (D, H, W), got {shape!r}") from None
    if min(d, h, w) < 2:
        raise ProjectorInputError(
            f"volume spatial shape must be at least 2 voxels along each axis for trilinear sampling, got {(d, h, w)}"
        )
    return d, h, w


def _check_budget(memory_budget_mib) -> None:
    if not isinstance(memory_budget_mib, (int, float)) or not memory_budget_mib > 0:
        raise ProjectorInputError(f"memory_budget_mib must be positive, got {memory_budget_mib!r}")


def _check_march_options(geometry, step_mm, num_samples, memory_budget_mib) -> None:
    """The options :func:`forward_project` and :func:`forward_project_adjoint` share: the geometry, the sampling
    (``step_mm`` mm or ``num_samples``, at most one) and the memory budget (MiB)."""
    _check_geometry(geometry)
    if step_mm is not None and num_samples is not None:
        raise ProjectorInputError("give either step_mm or num_samples, not both")
    if step_mm is not None and (not isinstance(step_mm, (int, float)) or not math.isfinite(step_mm) or step_mm <= 0):
        raise ProjectorInputError(f"step_mm must be a positive number of mm, got {step_mm!r}")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ProjectorInputError(f"num_samples must be a positive integer, got {num_samples!r}")
    _check_budget(memory_budget_mib)


def _check_images(images, geometry: ConeBeamGeometry, layout: str) -> None:
    """``images`` is a 4-D tensor (``layout`` names its dimensions) with the detector's ``(rows, cols)``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ProjectorInputError(f"images must be a tensor of shape {layout}")
    if tuple(images.shape[-2:]) != geometry.detector_shape:
        raise ProjectorInputError(
            f"images are {tuple(images.shape[-2:])} pixels but the detector is {geometry.detector_shape}"
        )


def _check_one_pose_per_image(function: str, num_images: int, num_poses: int) -> None:
    if num_poses != num_images:
        raise ProjectorInputError(f"{function} takes one pose per image: {num_images} images but {num_poses} poses")


def _count_volumes(world_from_voxel) -> int:
    """B of ``world_from_voxel``: 1 for one ``(4, 4)`` affine, else its leading dimension."""
    affines = torch.as_tensor(world_from_voxel)
    return 1 if affines.dim() == 2 else affines.shape[0]


def _triton_backend():
    """The Triton GPU backend if it can run here (CUDA tensors, or TRITON_INTERPRET=1 on CPU), else None."""
    try:
        from xraysyn.projector import triton as triton_backend
    except ImportError:
        return None
    return triton_backend if triton_backend.available() else None


def _build_rays(chosen, host: HostFrames, *args, **kwargs):
    """Rays from the chosen backend's own ``build_rays`` where it has one (``Capabilities.builds_rays``: the
    Triton backend, used only without ray gradients, sets up all rays in one launch from the host copies of
    the frames), else the differentiable torch :func:`build_rays`."""
    if capabilities_of(chosen).builds_rays:
        return chosen.build_rays(*args, host_frames=host, **kwargs)
    return build_rays(*args, **kwargs)


def _select_backend(backend: str, device: torch.device, ray_grad: bool):
    if backend not in BACKENDS:
        raise ProjectorInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return None
    if backend == "triton":
        module = _triton_backend()
        if module is None:
            raise ProjectorInputError("backend 'triton' needs the triton package and a CUDA device "
                                      "(or TRITON_INTERPRET=1 for the CPU interpreter)")
        if ray_grad:
            raise ProjectorInputError("backend 'triton' computes volume gradients only; use 'reference' for pose gradients")
        return module.TritonBackend
    if device.type == "cuda" and not ray_grad:
        module = _triton_backend()
        if module is not None:
            return module.TritonBackend
    if backend == "numba":
        if device.type != "cpu" or not cpu_numba.available():
            raise ProjectorInputError("backend 'numba' needs CPU tensors and the numba package")
        if ray_grad:
            raise ProjectorInputError("backend 'numba' computes volume gradients only; use 'reference' for pose gradients")
        return cpu_numba.NumbaBackend
    if device.type == "cpu" and cpu_numba.available() and not ray_grad:
        return cpu_numba.NumbaBackend
    return None


# ---------------------------------------------------------------------------------------- FP
class PreparedMarch(NamedTuple):
    """What :func:`prepare_march` returns: the ``volume`` as the chosen backend reads it, the ray set, the
    ``backend`` (None for the torch reference) and what the backend prepared from the volume ahead of the
    march (``prepared``, or None)."""

    volume: torch.Tensor
    rays: RaySet
    backend: object
    prepared: object


def prepare_march(volume: torch.Tensor, world_from_voxel, poses, geometry: ConeBeamGeometry, *,
                  step_mm: float | None = None, num_samples: int | None = None, isocenter=None,
                  memory_budget_mib: float = _DEFAULT_BUDGET_MIB, backend: str = "auto"):
    """Validate the inputs of :func:`forward_project` and set up its rays.

    Returns a :class:`PreparedMarch`: the volume as the chosen backend reads it (float32/float64, or
    fp16/bf16 as stored for a backend that reads those), the :class:`~xraysyn.projector.rays.RaySet`,
    the backend class (None for the torch reference) and what the backend made from the volume ahead
    of the march (the Triton backend's marched layout); :func:`march_prepared` marches it.
    """
    if not isinstance(volume, torch.Tensor) or volume.dim() != 5:
        shape = tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__
        raise ProjectorInputError(f"volume must be a tensor of shape (B, C, D, H, W), got {shape}")
    _check_march_options(geometry, step_mm, num_samples, memory_budget_mib)
    b, c = volume.shape[:2]
    if b == 0 or c == 0:
        raise ProjectorInputError(f"volume must have at least one item and one channel, got {tuple(volume.shape)}")
    spatial = _check_spatial_shape(volume.shape[2:])
    dtype = _compute_dtype(volume.dtype)
    chosen = _select_backend(backend, volume.device, frames.any_requires_grad(world_from_voxel, poses, isocenter))
    # the Triton kernels read fp16/bf16 volumes as stored (half the bytes to gather) and accumulate in
    # float32; the other backends get a float32 copy
    capabilities = capabilities_of(chosen)
    low_precision_ok = capabilities.low_precision_volumes
    vol = volume if low_precision_ok and volume.dtype in (torch.float16, torch.bfloat16) else volume.to(dtype)
    scan = frames.needs_scan(volume)
    prepare_volume = chosen.prepare_volume if capabilities.prepares_volumes else None
    # A backend with prepare_volume starts its volume work (copy into the marched layout, fused NaN/inf scan)
    # first, so the GPU begins it as early as the call allows; the frames' conversions and their one
    # device→host copy go on a stream beside it (they wait for the work queued before the call, not for the
    # packing pass), and the volume work runs while the host validates the frames and sets up the rays. Its
    # scan result is copied back right before the march's launch and checked right after it (before_launch).
    # Other backends copy the volume's extrema back with the frames (one transfer).
    beside = frames.stream_beside(volume.device) if prepare_volume is not None else None
    prepared = prepare_volume(vol, memory_budget_mib, check_finite=scan) if prepare_volume is not None else None
    with frames.on_stream(beside):
        (affines, pose_t, iso), to_copy = frames.placed_frame_tensors(world_from_voxel, poses, isocenter, b, dtype,
                                                                      volume.device)
        pending = frames.PendingFrames(to_copy, volume if scan and prepare_volume is None else None)
    host_frames = pending.finish()
    frames.join_stream(beside, (affines, pose_t, iso))  # the frames' device tensors, made beside, now safe here
    rays = _build_rays(chosen, host_frames, pose_t, affines, spatial, geometry, step_mm=step_mm, num_samples=num_samples,
                       isocenter=iso)
    if prepared is not None and prepared.finite_probe is not None:
        prepared = prepared._replace(before_launch=_finite_check(prepared.finite_probe, volume))
    return PreparedMarch(vol, rays, chosen, prepared)


def _finite_check(probe: torch.Tensor, volume: torch.Tensor):
    """The deferred NaN/inf check of ``volume`` from its scan's ``probe`` (a few floats), in two steps (see
    ``PreparedVolume.before_launch``): queue the probe's device→host copy, then check what arrived."""

    def queue():
        copy = frames.HostCopy([probe])
        return lambda: frames.check_finite_host(copy.wait(), volume, frames.NONFINITE_VOLUME)

    return queue


def forward_project(
    volume: torch.Tensor,
    world_from_voxel: torch.Tensor,
    poses: torch.Tensor,
    geometry: ConeBeamGeometry,
    *,
    step_mm: float | None = None,
    num_samples: int | None = None,
    isocenter: torch.Tensor | None = None,
    memory_budget_mib: float = _DEFAULT_BUDGET_MIB,
    backend: str = "auto",
) -> torch.Tensor:
    """Cone-beam line integrals of a batch of volumes (paper eq. 1).

    Args:
        volume: ``(B, C, D, H, W)`` voxel values (any unit ``u``; C channels, e.g. materials).
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` affines, voxel index → world mm.
        poses: ``(B * V, 4, 4)`` ``camera_from_isocenter`` transforms, V views per volume, ordered
            volume-major; see :meth:`ConeBeamGeometry.poses`.
        geometry: C-arm (SDD, detector size and pixel spacing).
        step_mm: sample spacing along rays in mm (default: half the smallest voxel spacing);
            rounded per ray so the midpoint samples tile the clipped chord exactly.
        num_samples: alternatively, a fixed number of samples per ray.
        isocenter: ``(B, 3)`` or ``(3,)`` world mm; default the centre of each volume.
        memory_budget_mib: bound on the temporaries (rays are processed in chunks).
        backend: ``"auto"`` (Triton for CUDA tensors and numba for CPU tensors when only the volume
            needs gradients, else the torch reference), ``"reference"``, ``"numba"`` or ``"triton"``
            (see :data:`BACKENDS`).

    Returns:
        ``(B * V, C, rows, cols)`` line integrals in ``u × mm``; 0 for rays that miss the volume.
        Differentiable: the volume gradient is the exact adjoint of this discrete operator; the
        reference backend also differentiates with respect to poses, affines and isocenter.
    """
    march = prepare_march(volume, world_from_voxel, poses, geometry, step_mm=step_mm, num_samples=num_samples,
                          isocenter=isocenter, memory_budget_mib=memory_budget_mib, backend=backend)
    return march_prepared(march, geometry, memory_budget_mib)


def march_prepared(march: PreparedMarch, geometry: ConeBeamGeometry,
                   memory_budget_mib: float = _DEFAULT_BUDGET_MIB) -> torch.Tensor:
    """:func:`forward_project` on what :func:`prepare_march` returned: ``(B * V, C, rows, cols)``."""
    volume, rays = march.volume, march.rays
    if march.backend is not None and not (torch.is_grad_enabled() and volume.requires_grad):
        # nothing to differentiate (a backend is chosen only without ray gradients): skip the autograd node
        out = backend_forward(march.backend, volume, rays, float(memory_budget_mib), march.prepared)
    else:
        # the rays' float tensors again as separate inputs: autograd routes gradients only to tensors given
        # to apply (see RayMarch)
        out = RayMarch.apply(volume, rays.origin, rays.direction, rays.t_near, rays.delta, rays,
                             float(memory_budget_mib), march.backend, march.prepared)
    rows, cols = geometry.detector_shape
    return out.permute(0, 2, 1).reshape(out.shape[0], volume.shape[1], rows, cols)


def forward_project_adjoint(
    images: torch.Tensor,
    world_from_voxel: torch.Tensor,
    poses: torch.Tensor,
    geometry: ConeBeamGeometry,
    volume_shape,
    *,
    num_volumes: int | None = None,
    step_mm: float | None = None,
    num_samples: int | None = None,
    isocenter: torch.Tensor | None = None,
    memory_budget_mib: float = _DEFAULT_BUDGET_MIB,
    backend: str = "auto",
) -> torch.Tensor:
    """The exact transpose FPᵀ of :func:`forward_project` (ray-driven backprojection).

    Args:
        images: ``(B * V, C, rows, cols)`` in ``u × mm`` (the shape FP returns).
        volume_shape: ``(D, H, W)`` of the volumes.
        num_volumes: B; default the number of affines given.
        Other arguments as for :func:`forward_project` (same values give the same rays).

    Returns:
        ``(B, C, D, H, W)`` volumes with ``<FP v, w> = <v, FPᵀ w>`` for all v, w.
    """
    _check_march_options(geometry, step_mm, num_samples, memory_budget_mib)
    _check_images(images, geometry, "(B * V, C, rows, cols)")
    spatial = _check_spatial_shape(volume_shape)
    dtype = _compute_dtype(images.dtype)
    if num_volumes is None:
        num_volumes = _count_volumes(world_from_voxel)
    affines, pose_t, iso, host = frames.prepare_frames(world_from_voxel, poses, isocenter, num_volumes, dtype,
                                                 images.device)
    _check_one_pose_per_image("forward_project_adjoint", images.shape[0], pose_t.shape[0])
    chosen = _select_backend(backend, images.device, ray_grad=False)
    with torch.no_grad():
        rays = _build_rays(chosen, host, pose_t, affines, spatial, geometry, step_mm=step_mm,
                           num_samples=num_samples, isocenter=iso)
    n, c = images.shape[:2]
    grad = images.to(dtype).reshape(n, c, -1).permute(0, 2, 1).contiguous()
    adjoint = chosen.adjoint if chosen is not None else march_adjoint
    return adjoint(grad, (num_volumes, c, *spatial), rays, float(memory_budget_mib))


def chord_lengths(
    world_from_voxel: torch.Tensor,
    poses: torch.Tensor,
    geometry: ConeBeamGeometry,
    volume_shape,
    *,
    isocenter: torch.Tensor | None = None,
) -> torch.Tensor:
    """Length (mm) of each detector pixel's ray inside the volume box, ``(B * V, rows, cols)``."""
    _check_geometry(geometry)
    spatial = _check_spatial_shape(volume_shape)
    wv = torch.as_tensor(world_from_voxel)
    dtype = wv.dtype if wv.is_floating_point() else torch.float32
    batch = _count_volumes(wv)
    affines, pose_t, iso, _ = frames.prepare_frames(wv, poses, isocenter, batch, dtype, wv.device)
    rays = build_rays(pose_t, affines, spatial, geometry, num_samples=1, isocenter=iso)
    return rays.length.reshape(pose_t.shape[0], *geometry.detector_shape)


# ---------------------------------------------------------------------------------------- BP
def backproject(
    images: torch.Tensor,
    world_from_voxel: torch.Tensor,
    poses: torch.Tensor,
    geometry: ConeBeamGeometry,
    volume_shape,
    *,
    isocenter: torch.Tensor | None = None,
    memory_budget_mib: float = _DEFAULT_BUDGET_MIB,
    backend: str = "auto",
) -> torch.Tensor:
    """Single-image backprojector BP (paper eq. 7), voxel-driven.

    Each voxel centre is projected onto the detector; it takes the bilinearly interpolated image
    value there divided by ``|l|``, the length (mm) inside the volume box of the ray from the source
    through that voxel centre. Voxels projecting outside the detector get 0. Hence
    ``FP(BP(I)) ≈ I`` on every pixel whose ray crosses the volume (exact for images constant
    along the detector; to interpolation accuracy otherwise).

    Args:
        images: ``(B, C, rows, cols)`` in ``u × mm`` (one view per volume).
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` affines (mm).
        poses: ``(B, 4, 4)`` ``camera_from_isocenter`` of each image.
        geometry: the C-arm that took the images.
        volume_shape: ``(D, H, W)`` of the output volumes.
        isocenter: ``(B, 3)`` world mm, default each volume's centre.
        memory_budget_mib: bound on the temporaries of the torch implementation (voxel chunks).
        backend: ``"auto"`` (the Triton gather kernel for CUDA tensors when no gradient is
            needed, else the differentiable torch implementation), ``"reference"`` or ``"triton"``.

    Returns:
        ``(B, C, D, H, W)`` in ``u`` (per mm). Differentiable w.r.t. images and poses (torch path).
    """
    _check_geometry(geometry)
    _check_images(images, geometry, "(B, C, rows, cols)")
    _check_budget(memory_budget_mib)
    spatial = _check_spatial_shape(volume_shape)
    b = images.shape[0]
    dtype = _compute_dtype(images.dtype)
    dev = images.device
    affines, pose_t, iso, host = frames.prepare_frames(world_from_voxel, poses, isocenter, b, dtype, dev, values=images,
                                                 values_error="images contain non-finite values (NaN or inf)")
    _check_one_pose_per_image("backproject", b, pose_t.shape[0])
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (images, pose_t, affines, iso))
    if backend not in ("auto", "reference", "triton"):
        raise ProjectorInputError(f"backproject backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    if backend == "triton" or (backend == "auto" and dev.type == "cuda" and not needs_grad):
        module = _triton_backend()
        if module is not None and not needs_grad:
            return module.backproject(images, affines, pose_t, geometry, spatial, isocenter=iso, host_frames=host)
        if backend == "triton":
            raise ProjectorInputError("backproject backend 'triton' needs triton on a CUDA device (or "
                                      "TRITON_INTERPRET=1) and inputs that do not require gradients")
    return backproject_voxels(images.to(dtype), affines, pose_t, iso, geometry, spatial, memory_budget_mib)
