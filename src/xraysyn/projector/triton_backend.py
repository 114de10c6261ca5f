"""Transition shim: the Triton backend now lives in :mod:`xraysyn.projector.triton`. Import from there; this
module re-exports the names older callers used and goes once no caller is left."""

from xraysyn.projector.triton import TritonBackend, TritonBackendInputError, available, backproject, build_rays
from xraysyn.projector.triton.layout import PreparedVolume, checked_launch
from xraysyn.projector.triton.runtime import _triton_importable, interpreting

__all__ = ["PreparedVolume", "TritonBackend", "TritonBackendInputError", "_triton_importable", "available",
           "backproject", "build_rays", "checked_launch", "interpreting"]
