"""2D RefineNet (2DRN) of XraySyn, paper eq. 11:

    t_m^ref = up(t_m^CT) + F(t_m^CT; φ, M(I_in^T))

``t_m^CT`` are the bone and soft-tissue thickness maps (g/cm²) that CT2Xray projects from the 3D
PriorNet's output at ``h × w`` (128² in the paper); ``up`` is bilinear upsampling by the RDN's
factor ``r`` (``align_corners=False``, as the release's ``nn.Upsample``); ``F`` is the residual
dense network of :mod:`xraysyn.models.rdn`, whose per-sample 1×1 convolution after global feature
fusion gets its weights from the hypernetwork ``M`` (:mod:`xraysyn.models.hypernet`) applied to
the real input radiograph ``I_in^T`` at ``r·h × r·w`` (256², display-normalised to [0, 1]).

``static_hyper=True`` is the ablation ``refine_nom`` (paper "XraySyn without M"): M is replaced by
one learned ``G0 × G0`` matrix shared by all samples, and the radiograph is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xraysyn.models.blocks import upsample
from xraysyn.models.hypernet import HyperNetworkConfig, HyperNetworkM
from xraysyn.models.rdn import RDN, RDNConfig

__all__ = ["RefineNet2D", "RefineNetConfig", "RefineNetInputError"]

#: Images: two spatial dimensions.
SPATIAL_DIMS = 2


class RefineNetInputError(ValueError):
    """A bad configuration or input of the 2D RefineNet."""


@dataclass(frozen=True)
class RefineNetConfig:
    """Hyper-parameters of :class:`RefineNet2D`.

    Args:
        rdn: the residual dense network F (its ``in_channels`` must equal ``out_channels``, the
            residual of eq. 11 adds them channel by channel).
        hypernet: the hypernetwork M (its ``features`` must equal ``rdn.features``); its
            ``input_size`` is the radiograph edge, ``rdn.upscale`` times the thickness-map edge.
        static_hyper: ``True`` for the ``refine_nom`` ablation: a learned static 1×1 convolution
            instead of M. No M is built, the thickness maps may have any size, and a radiograph,
            if passed, is only checked (``r`` times their size) and not used.
        thickness_scale_g_per_cm2: F works on thickness maps divided by this and its residual is
            multiplied by it, so the network sees values of order 1 (a chest's soft tissue is
            ~10–30 g/cm², its bone ~0–5 g/cm²).
    """

    rdn: RDNConfig = RDNConfig()
    hypernet: HyperNetworkConfig = HyperNetworkConfig()
    static_hyper: bool = False
    thickness_scale_g_per_cm2: float = 10.0

    def __post_init__(self):
        if not isinstance(self.rdn, RDNConfig):
            raise RefineNetInputError(f"rdn must be an RDNConfig, got {type(self.rdn).__name__}")
        if not isinstance(self.hypernet, HyperNetworkConfig):
            raise RefineNetInputError(f"hypernet must be a HyperNetworkConfig, got {type(self.hypernet).__name__}")
        if not isinstance(self.static_hyper, bool):
            raise RefineNetInputError(f"static_hyper must be True or False, got {self.static_hyper!r}")
        scale = self.thickness_scale_g_per_cm2
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise RefineNetInputError(f"thickness_scale_g_per_cm2 must be a positive finite number, got {scale!r}")
        if self.rdn.in_channels != self.rdn.out_channels:
            raise RefineNetInputError(
                f"rdn.in_channels ({self.rdn.in_channels}) must equal rdn.out_channels ({self.rdn.out_channels}): "
                "the refinement is a residual on each thickness map")
        if self.hypernet.features != self.rdn.features:
            raise RefineNetInputError(
                f"hypernet.features ({self.hypernet.features}) must equal rdn.features ({self.rdn.features}): "
                "M generates the 1x1 convolution on the RDN's features")
        if self.hypernet.input_size % self.rdn.upscale:
            raise RefineNetInputError(
                f"hypernet.input_size ({self.hypernet.input_size}) must be a multiple of rdn.upscale "
                f"({self.rdn.upscale}): the radiograph has the refined maps' size")

    @classmethod
    def paper(cls, *, static_hyper: bool = False) -> RefineNetConfig:
        """The paper's 2DRN: RDN 16 × 8, growth 64, 64 features, 128² → 256², M of Table 2."""
        return cls(RDNConfig.paper(), HyperNetworkConfig.paper(), static_hyper)

    @classmethod
    def cpu64(cls, *, static_hyper: bool = False) -> RefineNetConfig:
        """CPU-sized: RDN 4 × 4, growth 16, 32 features, 64² → 128², M on 128² radiographs."""
        return cls(RDNConfig.cpu64(), HyperNetworkConfig.cpu64(), static_hyper)

    @classmethod
    def small(cls, *, static_hyper: bool = False) -> RefineNetConfig:
        """For tests: RDN 2 × 2, growth 8, 8 features, 16² → 32², M on 32² radiographs."""
        return cls(RDNConfig.small(), HyperNetworkConfig.small(), static_hyper)

    @classmethod
    def preset(cls, name: str, *, static_hyper: bool = False) -> RefineNetConfig:
        """The named preset ``"paper"``, ``"cpu64"`` or ``"small"``."""
        presets = {"paper": cls.paper, "cpu64": cls.cpu64, "small": cls.small}
        if name not in presets:
            raise RefineNetInputError(f"preset must be one of {tuple(presets)}, got {name!r}")
        return presets[name](static_hyper=static_hyper)

    @property
    def thickness_size(self) -> int:
        """Edge of the input thickness maps (pixels): ``hypernet.input_size / rdn.upscale``."""
        return self.hypernet.input_size // self.rdn.upscale


class RefineNet2D(nn.Module):
    """The 2DRN: ``t_ref = up(t_CT) + F(t_CT; M(radiograph))`` (eq. 11).

    Submodules: ``rdn`` (:class:`~xraysyn.models.rdn.RDN`), ``hypernet``
    (:class:`~xraysyn.models.hypernet.HyperNetworkM`, ``None`` with ``static_hyper``),
    ``static_fusion`` (``nn.Conv2d`` 1×1 without bias, only with ``static_hyper``), ``upsample``.
    """

    def __init__(self, config: RefineNetConfig | None = None):
        super().__init__()
        config = config if config is not None else RefineNetConfig.paper()
        if not isinstance(config, RefineNetConfig):
            raise RefineNetInputError(f"config must be a RefineNetConfig, got {type(config).__name__}")
        self.config = config
        self.rdn = RDN(config.rdn)
        features = config.rdn.features
        if config.static_hyper:
            self.hypernet = None
            self.static_fusion = nn.Conv2d(features, features, 1, bias=False)
        else:
            self.hypernet = HyperNetworkM(config.hypernet)
            self.static_fusion = None
        self.upsample = upsample(SPATIAL_DIMS, config.rdn.upscale)

    def check_input(self, thickness_ct: torch.Tensor, radiograph: torch.Tensor | None) -> None:
        """Raise :class:`RefineNetInputError` unless ``thickness_ct`` is floating point
        ``(N, C, h, w)`` (``C = rdn.in_channels``) and ``radiograph`` is ``(N, 1, r·h, r·w)`` with
        ``r·h = r·w = hypernet.input_size``, same dtype and device (``radiograph`` may be ``None``
        only with ``static_hyper``)."""
        cfg = self.config
        channels = cfg.rdn.in_channels
        if (not isinstance(thickness_ct, torch.Tensor) or thickness_ct.dim() != 4
                or not thickness_ct.is_floating_point()):
            got = tuple(thickness_ct.shape) if isinstance(thickness_ct, torch.Tensor) else type(thickness_ct).__name__
            raise RefineNetInputError(f"thickness_ct must be a floating-point tensor (N, {channels}, h, w) in g/cm², "
                                      f"got {got}")
        n, c, h, w = thickness_ct.shape
        if n < 1 or c != channels or h < 1 or w < 1:
            raise RefineNetInputError(f"thickness_ct must have shape (N, {channels}, h, w) with N, h, w >= 1, "
                                      f"got {tuple(thickness_ct.shape)}")
        if radiograph is None:
            if not cfg.static_hyper:
                raise RefineNetInputError("radiograph is required: the hypernetwork M generates the 1x1 "
                                          "convolution from it (only static_hyper=True works without)")
            return
        r = cfg.rdn.upscale
        if not cfg.static_hyper and (h * r, w * r) != (cfg.hypernet.input_size,) * 2:
            raise RefineNetInputError(
                f"thickness_ct is {h}x{w}, the configuration expects "
                f"{cfg.thickness_size}x{cfg.thickness_size} (hypernet.input_size {cfg.hypernet.input_size} / "
                f"upscale {r})")
        expected = (n, 1, h * r, w * r)
        if not isinstance(radiograph, torch.Tensor) or not radiograph.is_floating_point():
            got = tuple(radiograph.shape) if isinstance(radiograph, torch.Tensor) else type(radiograph).__name__
            raise RefineNetInputError(f"radiograph must be a floating-point tensor {expected}, got {got}")
        if tuple(radiograph.shape) != expected:
            raise RefineNetInputError(f"radiograph must have shape {expected} (batch of thickness_ct, upscale {r} "
                                      f"times its size), got {tuple(radiograph.shape)}")
        if radiograph.dtype != thickness_ct.dtype or radiograph.device != thickness_ct.device:
            raise RefineNetInputError(f"radiograph ({radiograph.dtype}, {radiograph.device}) must have the dtype "
                                      f"and device of thickness_ct ({thickness_ct.dtype}, {thickness_ct.device})")

    def fusion_weights(self, radiograph: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The ``(batch, G0, G0)`` weights of the 1×1 convolution: ``M(radiograph)``, or the static
        matrix repeated over the batch with ``static_hyper``."""
        if self.static_fusion is not None:
            weight = self.static_fusion.weight
            return weight.reshape(weight.shape[0], weight.shape[1]).expand(batch, -1, -1)
        return self.hypernet(radiograph)

    def residual(self, thickness_ct: torch.Tensor, radiograph: torch.Tensor | None = None) -> torch.Tensor:
        """``F(t_CT; M(radiograph))`` alone: ``(N, C, h, w)`` → ``(N, C, r·h, r·w)`` in g/cm²."""
        self.check_input(thickness_ct, radiograph)
        return self._residual(thickness_ct, radiograph)

    def _residual(self, thickness_ct: torch.Tensor, radiograph: torch.Tensor | None) -> torch.Tensor:
        scale = self.config.thickness_scale_g_per_cm2
        return self.rdn(thickness_ct / scale, self.fusion_weights(radiograph, thickness_ct.shape[0])) * scale

    def forward(self, thickness_ct: torch.Tensor, radiograph: torch.Tensor | None = None) -> torch.Tensor:
        """Refined thickness maps (eq. 11).

        Args:
            thickness_ct: ``t_m^CT``, ``(N, C, h, w)`` in g/cm² (channel 0 bone, 1 soft tissue).
            radiograph: ``I_in^T``, ``(N, 1, r·h, r·w)`` display-normalised to [0, 1]; ``None``
                allowed only with ``static_hyper``.

        Returns:
            ``t_m^ref``, ``(N, C, r·h, r·w)`` in g/cm² (not clamped: the RDN's residual has either sign).
        """
        self.check_input(thickness_ct, radiograph)
        return self.upsample(thickness_ct) + self._residual(thickness_ct, radiograph)
