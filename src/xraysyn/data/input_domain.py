"""The input domain of the 3D PriorNet: one normalisation for simulated and real radiographs.

A real radiograph reaches XraySyn as a display image: log-processed, windowed, gamma- or LUT-mapped
by the modality, with an unknown scale. Only the *order* of its pixel values (brighter = more
attenuation) can be trusted. :func:`normalise_radiograph` therefore maps an image to its own
empirical distribution function (per-image histogram equalisation with mid-ranks for ties): each
pixel becomes the fraction of the image's pixels that are darker than it, plus half of those equal
to it, in ``[0, 1]``. This is exactly invariant to every strictly increasing display transform
(window level/width without clipping, gamma, log versus linear transmission, any monotone LUT), and
changes only where a window clips. The same function is applied to simulated inputs in training and
to real inputs at inference (:mod:`xraysyn.train.prior`, the end-to-end pipeline).

The official release min–max normalises ``max(I) − I`` instead; that keeps the scale of a simulated
image but varies with every display transform of a real one.

Beyond the paper, :class:`InputRandomisation` perturbs the simulated input during training so the
network meets real data robustly: the tube potential, quantum noise, detector blur and the display
transform (log or linear, window, gamma). Each is drawn per item from a seeded generator
(:func:`sample_input_perturbation`) and applied by :func:`simulated_display_input`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "InputRandomisation",
    "InputPerturbation",
    "normalise_radiograph",
    "window_to_unit",
    "sample_input_perturbation",
    "simulated_display_input",
    "NO_PERTURBATION",
]

#: Gaussian kernel half-width in standard deviations (the kernel covers ±3σ).
BLUR_KERNEL_HALF_WIDTH_SIGMAS = 3.0
#: Transmission floor before a logarithm (noise can make a pixel count 0 quanta).
TRANSMISSION_FLOOR = 1e-6


def normalise_radiograph(image: torch.Tensor) -> torch.Tensor:
    """Per-image mid-rank empirical distribution function, ``[0, 1]``, same shape as ``image``.

    Args:
        image: ``(N, C, rows, cols)`` (or ``(N, rows, cols)``) radiographs, bright = attenuating, any
            real scale; every image (over its channels and pixels) is normalised on its own.

    Returns:
        float32 tensor: pixel value ``(#{darker} + #{equal} / 2) / #{pixels}``; a constant image gives 0.5
        everywhere. Invariant to any strictly increasing transform of each image.
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a floating-point tensor (N, C, rows, cols) or (N, rows, cols), got {shape}")
    if image.numel() == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    flat = image.detach().reshape(image.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("image contains NaN or infinite values")
    ordered = flat.sort(dim=1).values
    darker = torch.searchsorted(ordered, flat, right=False)
    not_brighter = torch.searchsorted(ordered, flat, right=True)
    ranks = (darker + not_brighter).to(torch.float64) / (2.0 * flat.shape[1])
    return ranks.to(torch.float32).reshape(image.shape)


#: Percentiles of the differentiable display window of stage 2 (1 % of the pixels clip at each end).
WINDOW_LOW_FRACTION, WINDOW_HIGH_FRACTION = 0.01, 0.99


def window_to_unit(image: torch.Tensor, low_fraction: float = WINDOW_LOW_FRACTION,
                   high_fraction: float = WINDOW_HIGH_FRACTION) -> torch.Tensor:
    """A differentiable per-image display window: ``(x − q_low) / (q_high − q_low)`` clamped to [0, 1].

    Stage 2 compares its synthesised radiographs with real ones and needs gradients through the
    normalisation, which :func:`normalise_radiograph` (a rank transform) does not give. The window is
    invariant to any increasing affine map of an image (exactly, up to rounding) but not to a gamma.

    Args:
        image: ``(N, C, rows, cols)`` (or ``(N, rows, cols)``), bright = attenuating, any real scale.
        low_fraction, high_fraction: quantiles mapped to 0 and 1 (linear interpolation between pixels).

    Returns:
        Same shape and dtype, in [0, 1]; a constant image gives 0.
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a floating-point tensor (N, C, rows, cols) or (N, rows, cols), got {shape}")
    if not 0 <= low_fraction < high_fraction <= 1:
        raise ValueError(f"need 0 <= low_fraction < high_fraction <= 1, got {low_fraction}, {high_fraction}")
    low, high = display_window(image, low_fraction, high_fraction)
    return apply_window(image.reshape(image.shape[0], -1), low, high).reshape(image.shape)


def display_window(image: torch.Tensor, low_fraction: float = WINDOW_LOW_FRACTION,
                   high_fraction: float = WINDOW_HIGH_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """The values :func:`window_to_unit` maps to 0 and 1: per image the ``low_fraction`` and ``high_fraction``
    quantiles, each ``(N,)`` in the image's units."""
    flat = image.reshape(image.shape[0], -1)
    levels = torch.tensor([low_fraction, high_fraction], dtype=flat.dtype, device=flat.device)
    low, high = torch.quantile(flat, levels, dim=1)
    return low, high


def apply_window(flat: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``(N, P)`` values through per-image windows ``low``, ``high`` ``(N,)``: ``(x − low) / (high − low)`` clamped
    to [0, 1] (a zero-width window maps everything at or below it to 0)."""
    width = (high - low).clamp(min=torch.finfo(flat.dtype).tiny)
    return ((flat - low[:, None]) / width[:, None]).clamp(0.0, 1.0)


@dataclass(frozen=True)
class InputRandomisation:
    """Which perturbations of the simulated input are drawn during training, and their ranges.

    Args:
        kvp: draw the tube potential uniformly in ``kvp_range`` (kVp; 60–140 is tabulated) instead of
            the simulator's default.
        noise: add quantum noise with unattenuated quanta per pixel log-uniform in ``photons_range``.
        blur: Gaussian detector blur with σ uniform in ``[0, blur_max_px]`` pixels.
        display: draw the display transform: log or linear transmission (equal odds), a window that
            clips up to ``window_max_fraction`` of the pixels at each end, gamma log-uniform in
            ``gamma_range``.
    """

    kvp: bool = True
    kvp_range: tuple[float, float] = (90.0, 130.0)
    noise: bool = True
    photons_range: tuple[float, float] = (1e3, 1e5)
    blur: bool = True
    blur_max_px: float = 1.0
    display: bool = True
    window_max_fraction: float = 0.02
    gamma_range: tuple[float, float] = (0.7, 1.4)

    def __post_init__(self):
        for name in ("kvp", "noise", "blur", "display"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"input randomisation {name} must be true or false, got {getattr(self, name)!r}")
        for name, lowest in (("kvp_range", 0.0), ("photons_range", 0.0), ("gamma_range", 0.0)):
            pair = tuple(getattr(self, name))
            if (len(pair) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair)
                    or not lowest < pair[0] <= pair[1]):
                raise ValueError(f"{name} must be two finite numbers 0 < low <= high, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (float(pair[0]), float(pair[1])))
        if not isinstance(self.blur_max_px, (int, float)) or not 0 <= self.blur_max_px <= 10:
            raise ValueError(f"blur_max_px must be in [0, 10] pixels, got {self.blur_max_px!r}")
        if not isinstance(self.window_max_fraction, (int, float)) or not 0 <= self.window_max_fraction < 0.5:
            raise ValueError(f"window_max_fraction must be in [0, 0.5), got {self.window_max_fraction!r}")

    @classmethod
    def off(cls) -> InputRandomisation:
        """No perturbation (validation, and the paper's setting)."""
        return cls(kvp=False, noise=False, blur=False, display=False)


@dataclass(frozen=True)
class InputPerturbation:
    """One drawn perturbation (None / neutral values where that perturbation is off).

    ``kvp`` (kVp or None: the default spectrum), ``photons_per_pixel`` (None: no noise), ``noise_seed``,
    ``blur_sigma_px``, ``log_display`` (display −log I instead of 1 − I), ``window_low_fraction`` /
    ``window_high_fraction`` (fractions of pixels clipped at each end), ``gamma``.
    """

    kvp: float | None = None
    photons_per_pixel: float | None = None
    noise_seed: int = 0
    blur_sigma_px: float = 0.0
    log_display: bool = False
    window_low_fraction: float = 0.0
    window_high_fraction: float = 0.0
    gamma: float = 1.0


NO_PERTURBATION = InputPerturbation()


def sample_input_perturbation(config: InputRandomisation, generator: torch.Generator) -> InputPerturbation:
    """Draw one :class:`InputPerturbation` (CPU ``generator``; the same number of draws whatever is on)."""
    u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))

    def log_uniform(low: float, high: float, x: float) -> float:
        return math.exp(math.log(low) + x * (math.log(high) - math.log(low)))

    return InputPerturbation(
        kvp=config.kvp_range[0] + u[0] * (config.kvp_range[1] - config.kvp_range[0]) if config.kvp else None,
        photons_per_pixel=log_uniform(*config.photons_range, u[1]) if config.noise else None,
        noise_seed=noise_seed,
        blur_sigma_px=u[2] * config.blur_max_px if config.blur else 0.0,
        log_display=u[3] < 0.5 if config.display else False,
        window_low_fraction=u[4] * config.window_max_fraction if config.display else 0.0,
        window_high_fraction=u[5] * config.window_max_fraction if config.display else 0.0,
        gamma=log_uniform(*config.gamma_range, u[6]) if config.display else 1.0,
    )


def _gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``(1, C, rows, cols)`` blurred by a separable normalised Gaussian (σ pixels), edges replicated."""
    radius = max(1, math.ceil(BLUR_KERNEL_HALF_WIDTH_SIGMAS * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def simulated_display_input(transmission: torch.Tensor, perturbation: InputPerturbation = NO_PERTURBATION
                            ) -> torch.Tensor:
    """A simulated radiograph as the network sees it: perturbed, displayed, then normalised.

    Args:
        transmission: ``(1, 1, rows, cols)`` transmitted fraction ``I_atten`` in ``[0, 1]`` of one item
            (already simulated with the perturbation's ``kvp``).
        perturbation: what to apply: quantum noise, detector blur, display (log or linear, window, gamma).

    Returns:
        ``(1, 1, rows, cols)`` :func:`normalise_radiograph` of the display image, float32.
    """
    from xraysyn.physics.noise import add_noise

    if not isinstance(transmission, torch.Tensor) or transmission.dim() != 4 or transmission.shape[:2] != (1, 1):
        shape = tuple(transmission.shape) if isinstance(transmission, torch.Tensor) else type(transmission).__name__
        raise ValueError(f"transmission must be a tensor (1, 1, rows, cols), got {shape}")
    p = perturbation
    image = transmission.detach().to(torch.float64)
    if p.photons_per_pixel is not None:
        generator = torch.Generator(device=image.device).manual_seed(p.noise_seed)
        image = add_noise(image.clamp(min=0.0), p.photons_per_pixel, generator=generator)
    if p.blur_sigma_px > 0:
        image = _gaussian_blur(image, p.blur_sigma_px)
    image = image.clamp(min=TRANSMISSION_FLOOR)
    display = -torch.log(image) if p.log_display else 1.0 - image  # bright = attenuating either way
    if p.window_low_fraction > 0 or p.window_high_fraction > 0:
        flat = display.reshape(-1)
        low = torch.quantile(flat, p.window_low_fraction)
        high = torch.quantile(flat, 1.0 - p.window_high_fraction)
        display = display.clamp(min=float(low), max=float(high))
    if p.gamma != 1.0:
        low, high = display.min(), display.max()
        scaled = (display - low) / (high - low).clamp(min=torch.finfo(display.dtype).tiny)
        display = scaled ** p.gamma
    return normalise_radiograph(display)
