"""The frames of a projector call — poses, affines, isocenter — as validated device tensors and float64
host copies, and the NaN/inf check of the values projected.

Every public projector function validates its frames on the host (shapes here, values from one
device→host copy, :class:`HostCopy`); the Triton ray set-up then reads the same host copies. Valid
frames are remembered by value (:mod:`xraysyn.host_cache`), so frames met again skip the
checks.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch

from xraysyn.geometry import validate_affine
from xraysyn.projector import static_volume
from xraysyn.projector.errors import ProjectorInputError
from xraysyn.host_cache import HostMemo, array_key

__all__ = ["NONFINITE_VOLUME", "HostCopy", "HostFrames", "PendingFrames", "any_requires_grad", "check_finite_host",
           "check_frames_host", "frame_tensors", "in_host_memory", "join_stream", "needs_scan", "on_stream",
           "placed_frame_tensors", "prepare_frames", "stream_beside", "to_device"]

NONFINITE_VOLUME = "volume contains non-finite values (NaN or inf)"
# Rotation blocks of poses must be orthonormal to this tolerance (float32 round-off of composed rotations).
_ORTHONORMAL_TOL = 1e-3
# Recently validated host copies of (affines, isocenter) and of poses: frames met again skip the checks.
_VALID_VOLUME_FRAMES = HostMemo(max_entries=64)
_VALID_POSES = HostMemo(max_entries=64)


class HostFrames(NamedTuple):
    """float64 numpy copies of the validated frames: ``poses (N, 4, 4)``, ``affines (B, 4, 4)``,
    ``isocenter (B, 3)`` or None. The Triton ray set-up reads them instead of copying the device tensors
    back again (each copy from a GPU is a synchronisation)."""

    poses: np.ndarray
    affines: np.ndarray
    isocenter: np.ndarray | None


class HostCopy:
    """float64 numpy copies of small tensors, in one device→host transfer.

    The tensors are concatenated in the first one's dtype (float32 or float64: exact for the float32,
    float16 and bfloat16 values met here). For GPU tensors the copy goes to pinned memory without
    blocking: the caller can queue more GPU work before :meth:`wait` (which waits for the copy only,
    not for work queued after it)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._shapes = [tuple(t.shape) for t in tensors]
        self._event = None
        if not tensors:
            self._flat = None
            return
        dtype = tensors[0].dtype
        with torch.no_grad():
            parts = [t.reshape(-1) if t.dtype == dtype else t.reshape(-1).to(dtype) for t in tensors]
            # one device tensor: copied to the host as it is (in stream order), no cat kernel first
            flat = parts[0] if len(parts) == 1 and parts[0].is_cuda else torch.cat(parts)
        if flat.is_cuda:
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(flat.device))
            flat = host
        self._flat = flat

    def wait(self) -> list[np.ndarray]:
        """The copies, in the order given (waits for the transfer)."""
        if self._flat is None:
            return []
        if self._event is not None:
            self._event.synchronize()
        flat = self._flat.numpy().astype(np.float64)
        out, start = [], 0
        for shape in self._shapes:
            size = math.prod(shape)
            out.append(flat[start:start + size].reshape(shape))
            start += size
        return out


def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A copy of host ``values`` (numpy array, CPU tensor or nested sequence) on ``device``, in ``dtype`` if given, that never
    shares memory with ``values``. For a CUDA device the copy is staged in pinned memory and queued without
    blocking: a plain ``.to("cuda")`` from pageable memory synchronises the stream, i.e. waits for every
    kernel queued before it (here: the volume's packing pass), which would keep the host from queueing the
    next launches while the GPU works."""
    if isinstance(values, np.ndarray):
        tensor = torch.from_numpy(np.array(values))  # a copy: memo arrays are read-only
    else:
        tensor = torch.as_tensor(values, dtype=dtype)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if device.type != "cuda" or tensor.requires_grad:  # (a tensor in an autograd graph keeps the plain copy)
        return tensor.to(device=device, copy=True)
    # contiguous first: an expanded view (e.g. one affine broadcast over the batch) cannot be pinned as it is
    return tensor.contiguous().pin_memory().to(device, non_blocking=True)


def _on_device(value, dtype, device) -> torch.Tensor:
    """A frame argument as a ``dtype`` tensor on ``device``; one given in host memory for a GPU is copied
    there without synchronising (:func:`to_device`)."""
    if device.type == "cuda" and in_host_memory(value):
        return to_device(value, device, dtype)
    return torch.as_tensor(value, dtype=dtype, device=device)


def _affines_tensor(world_from_voxel, batch: int, dtype, device) -> torch.Tensor:
    a = _on_device(world_from_voxel, dtype, device)
    if a.dim() == 2:
        a = a.unsqueeze(0)
    if a.dim() != 3 or a.shape[-2:] != (4, 4):
        raise ProjectorInputError(f"world_from_voxel must have shape (4, 4) or (B, 4, 4), got {tuple(a.shape)}")
    if a.shape[0] == 1 and batch > 1:
        a = a.expand(batch, 4, 4)
    if a.shape[0] != batch:
        raise ProjectorInputError(f"world_from_voxel has {a.shape[0]} affines for a batch of {batch} volumes")
    return a


def _poses_tensor(poses, batch: int, dtype, device) -> torch.Tensor:
    p = _on_device(poses, dtype, device)
    if p.dim() == 2:
        p = p.unsqueeze(0)
    if p.dim() != 3 or p.shape[-2:] != (4, 4):
        raise ProjectorInputError(f"poses must have shape (N, 4, 4), got {tuple(p.shape)}")
    if p.shape[0] == 0 or p.shape[0] % batch != 0:
        raise ProjectorInputError(
            f"poses must hold V views for each of the {batch} volumes (N = B * V), got N = {p.shape[0]}"
        )
    return p


def _isocenter_tensor(isocenter, batch: int, dtype, device):
    if isocenter is None:
        return None
    c = _on_device(isocenter, dtype, device)
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.shape[-1] != 3 or c.dim() != 2 or c.shape[0] not in (1, batch):
        raise ProjectorInputError(f"isocenter must have shape (3,) or (B, 3), got {tuple(c.shape)}")
    return c.expand(batch, 3)


def _check_poses_host(host: np.ndarray) -> None:
    if not np.isfinite(host).all():
        raise ProjectorInputError("poses contain non-finite values")
    rot = host[:, :3, :3]
    err = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max()
    if err > _ORTHONORMAL_TOL:
        raise ProjectorInputError(f"pose rotation blocks must be orthonormal (max deviation {float(err):.2e})")


def frame_tensors(world_from_voxel, poses, isocenter, batch: int, dtype, device):
    """``(affines (B, 4, 4), poses (N, 4, 4), isocenter (B, 3) or None)`` in ``dtype`` on ``device``, shapes
    checked (their values are checked on a host copy, :func:`check_frames_host`)."""
    return (_affines_tensor(world_from_voxel, batch, dtype, device), _poses_tensor(poses, batch, dtype, device),
            _isocenter_tensor(isocenter, batch, dtype, device))


def in_host_memory(value) -> bool:
    """``value`` (a frame argument) needs no device→host transfer: None, a CPU tensor, numpy or a sequence."""
    return not isinstance(value, torch.Tensor) or value.device.type == "cpu"


def needs_scan(values: torch.Tensor | None) -> bool:
    """Whether ``values`` must be scanned for NaN/inf (not empty, and not a marked volume already checked)."""
    return values is not None and values.numel() > 0 and not static_volume.known_finite(values)


def check_finite_host(extrema: list[np.ndarray], values: torch.Tensor, error: str) -> None:
    """Raise ``error`` unless every host value in ``extrema`` is finite; else remember ``values`` as checked."""
    if extrema and not np.isfinite(np.concatenate([e.ravel() for e in extrema])).all():
        raise ProjectorInputError(error)
    static_volume.remember_finite(values)


class PendingFrames:
    """Frames whose host copy is under way: :meth:`finish` waits for it and validates them.

    ``frames``: ``(affines, poses, isocenter or None)`` tensors to copy (on a device, or in host memory:
    then nothing waits for the device). ``values`` (optional, on its own device): also scanned for NaN/inf
    through its extrema, copied with the frames in one transfer when both are on one device. GPU work
    queued between construction and :meth:`finish` runs while the host validates."""

    def __init__(self, frames, values: torch.Tensor | None = None, values_error: str = NONFINITE_VOLUME) -> None:
        affines, poses, iso = frames
        self._has_iso = iso is not None
        small = [poses, affines] + ([iso] if iso is not None else [])
        self._n_small = len(small)
        self._values, self._values_error = values, values_error
        extrema = [e.reshape(1) for e in torch.aminmax(values.detach().reshape(-1))] if values is not None else []
        if extrema and extrema[0].device != poses.device:
            self._copies = [HostCopy(small), HostCopy(extrema)]
        else:
            self._copies = [HostCopy(small + extrema)]

    def finish(self) -> HostFrames:
        """The validated host frames (raises :class:`ProjectorInputError`; the values' check comes first)."""
        host = [array for copy in self._copies for array in copy.wait()]
        if self._values is not None:
            check_finite_host(host[self._n_small:], self._values, self._values_error)
        frames = HostFrames(host[0], host[1], host[2] if self._has_iso else None)
        check_frames_host(frames)
        return frames


def any_requires_grad(*values) -> bool:
    """Whether autograd is on and one of the frame arguments ``values`` is a tensor that requires a gradient
    (their device copies made by :func:`frame_tensors` then do too)."""
    return torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)


_SIDE_STREAMS: dict = {}


def stream_beside(device: torch.device):
    """A CUDA stream beside ``device``'s current one that has waited for everything queued on it so far
    (one per device, made once): work queued on it next — the frames' conversions and their device→host
    copy — runs without waiting for what the current stream gets after this call (the volume's packing
    pass). None for a device that is not CUDA."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _SIDE_STREAMS.get(index)
    if stream is None:
        stream = _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    stream.wait_stream(torch.cuda.current_stream(index))
    return stream


def on_stream(stream):
    """Context: ``stream`` current (a :func:`stream_beside` result), or nothing for None."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def join_stream(stream, tensors=()) -> None:
    """Make the current stream wait for ``stream``'s work (None: nothing to wait for), so what was made
    there is safe to use on the current stream; ``tensors`` made there are also recorded as used on the
    current stream, so the allocator does not hand their memory out again before its work is done."""
    if stream is None:
        return
    current = torch.cuda.current_stream(stream.device)
    current.wait_stream(stream)
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            tensor.record_stream(current)


def placed_frame_tensors(world_from_voxel, poses, isocenter, batch: int, dtype, device):
    """``(frames on device, frames to copy to the host)``, each ``(affines, poses, isocenter or None)``: for a
    GPU ``device`` with all three given in host memory (numpy, lists, CPU tensors), the second are their CPU
    tensors, so validating them needs no device→host transfer (which would wait for all GPU work queued
    before the call); otherwise both are the device tensors."""
    on_host = device.type != "cpu" and all(in_host_memory(v) for v in (world_from_voxel, poses, isocenter))
    if not on_host:
        placed = frame_tensors(world_from_voxel, poses, isocenter, batch, dtype, device)
        return placed, placed
    host = frame_tensors(world_from_voxel, poses, isocenter, batch, dtype, torch.device("cpu"))
    return tuple(None if t is None else to_device(t, device) for t in host), host


def prepare_frames(world_from_voxel, poses, isocenter, batch: int, dtype, device, values=None,
                   values_error=NONFINITE_VOLUME):
    """Validated ``(affines (B, 4, 4), poses (N, 4, 4), isocenter (B, 3) or None, HostFrames)`` in ``dtype``
    on ``device``.

    ``values`` (optional, the volume or images being projected) is checked for NaN/inf too (once per
    version for a volume marked static). All host-side checks read one float64 copy of the small tensors
    plus the extrema of ``values``: one device→host transfer in total (none for the frames when they were
    given in host memory, :func:`placed_frame_tensors`).
    """
    placed, to_copy = placed_frame_tensors(world_from_voxel, poses, isocenter, batch, dtype, device)
    host = PendingFrames(to_copy, values if needs_scan(values) else None, values_error).finish()
    return (*placed, host)


def check_frames_host(frames: HostFrames) -> None:
    """Validate the host copies of the poses, affines and isocenter (raises :class:`ProjectorInputError`).
    Affines (with the isocenter) and poses are remembered separately once valid
    (:mod:`~xraysyn.host_cache`): a training loop that draws new poses every step for the same
    volumes re-checks only the poses."""
    volume_key = (array_key(frames.affines), array_key(frames.isocenter))
    if not _VALID_VOLUME_FRAMES.get(volume_key):
        try:
            validate_affine(frames.affines)
        except ValueError as exc:
            raise ProjectorInputError(str(exc)) from None
        if frames.isocenter is not None and not np.isfinite(frames.isocenter).all():
            raise ProjectorInputError("isocenter contains non-finite values")
        _VALID_VOLUME_FRAMES.put(volume_key, True)
    pose_key = array_key(frames.poses)
    if not _VALID_POSES.get(pose_key):
        _check_poses_host(frames.poses)
        _VALID_POSES.put(pose_key, True)
