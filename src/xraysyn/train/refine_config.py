"""The typed configuration of a stage-2 run (2DRN F with hypernetwork M, discriminator D, LSGAN) and its
presets. Same rules as :mod:`xraysyn.train.prior_config`: YAML with any subset of the fields, unknown or
ill-typed fields refused, the resolved config written to the run folder.

Presets (the 2DRN preset must match the 3DPN export it refines: its thickness maps have the 3DPN's
detector size):

* ``paper`` — RDN 16×8, growth 64, M of Table 2 on 256² radiographs, for a 128² 3DPN; a GPU.
* ``cpu64`` — for the ``cpu64`` 3DPN (64² thickness maps → 128² radiographs), 2 CPU cores.
* ``small`` — for the ``small`` 3DPN (16² → 32²), tests.

Defaults from the official release: Adam lr 1e-4, betas (0.5, 0.9) for F+M and for D; λ_GAN = 0.02 with
λ_recon = 1; D updated before G each step; T within ±4.5° and T' within ±9° (the paper's text says
±18°: we follow the release, whose test protocol also spans ±9°). The bone-sparsity term (refined bone
map close to the 3DPN's, the release's addition) defaults to λ = 0.1: our choice, as its weight is not
stated in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xraysyn.train.config_io import (
    ConfigError,
    from_preset_mapping,
    preset_or_yaml_mapping,
    replace_fields,
    to_dict,
    write_yaml_text,
)
from xraysyn.train.prior_config import DataSource, LoopConfig, OptimConfig

__all__ = ["RadiographDataConfig", "RefineViews", "RefineLossWeights", "RefineTrainingConfig", "REFINE_PRESETS",
           "refine_preset", "load_refine_config", "refine_config_from_mapping", "dump_refine_config"]

CROP_MODES = ("center", "body")


@dataclass(frozen=True)
class RadiographDataConfig:
    """Real radiographs for stage 2.

    Args:
        sources: folders of radiographs (DICOM, PNG, JPEG; any nesting) with mixing weights.
        crop_mode: ``center`` (square images already cropped like TBX11K's, unchanged) or ``body`` (raw
            radiographs: the body's columns, :func:`xraysyn.data.radiograph.crop_and_resize`).
        validation_fraction, validation_cases_max: held-out radiographs, as in stage 1.
        num_workers: DataLoader worker processes.
    """

    sources: tuple[DataSource, ...] = ()
    crop_mode: str = "center"
    validation_fraction: float = 0.1
    validation_cases_max: int = 8
    num_workers: int = 2

    def __post_init__(self):
        paths = [s.path for s in self.sources]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"data.sources names a folder twice: {paths}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"data.crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.validation_cases_max < 1 or self.num_workers < 0:
            raise ConfigError("data.validation_cases_max must be >= 1 and data.num_workers >= 0")


@dataclass(frozen=True)
class RefineViews:
    """View sampling: the input view T uniform in ±``input_max_deg``, the novel view T' in ±``target_max_deg``
    (azimuth and elevation, degrees)."""

    input_max_deg: float = 4.5
    target_max_deg: float = 9.0

    def __post_init__(self):
        for name in ("input_max_deg", "target_max_deg"):
            if not 0 <= getattr(self, name) < 90:
                raise ConfigError(f"views.{name} must be in [0, 90) degrees, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RefineLossWeights:
    """λ of eq. 13 (``recon``, ``gan``) and of the bone-sparsity term (``bone``)."""

    recon: float = 1.0
    gan: float = 0.02
    bone: float = 0.1

    def __post_init__(self):
        for name in ("recon", "gan", "bone"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RefineTrainingConfig:
    """Everything a stage-2 run needs besides the 3DPN export (given on the command line)."""

    preset: str = "paper"
    network: str = "paper"  # RefineNetConfig / DiscriminatorConfig preset
    static_hyper: bool = False  # the refine_nom ablation: a learned static 1×1 convolution instead of M
    data: RadiographDataConfig = field(default_factory=RadiographDataConfig)
    views: RefineViews = field(default_factory=RefineViews)
    loss: RefineLossWeights = field(default_factory=RefineLossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    num_samples: int = 128  # projector samples per ray of the 3DPN's volume

    def __post_init__(self):
        if self.preset not in REFINE_PRESETS:
            raise ConfigError(f"preset must be one of {tuple(REFINE_PRESETS)}, got {self.preset!r}")
        if self.network not in REFINE_PRESETS:
            raise ConfigError(f"network must be one of {tuple(REFINE_PRESETS)}, got {self.network!r}")
        if self.loop.batch_size % self.optim.accumulation_steps:
            raise ConfigError(f"loop.batch_size {self.loop.batch_size} is not divisible by "
                              f"optim.accumulation_steps {self.optim.accumulation_steps}")
        if self.num_samples < 2:
            raise ConfigError(f"num_samples must be >= 2, got {self.num_samples!r}")

    def replace(self, **sections) -> RefineTrainingConfig:
        """As :meth:`xraysyn.train.prior_config.PriorTrainingConfig.replace`."""
        return replace_fields(self, **sections)


def _paper() -> RefineTrainingConfig:
    return RefineTrainingConfig(preset="paper", network="paper", num_samples=256)


def _cpu64() -> RefineTrainingConfig:
    return RefineTrainingConfig(
        preset="cpu64", network="cpu64", num_samples=96, data=RadiographDataConfig(num_workers=1),
        loop=LoopConfig(steps=1000, batch_size=2, bf16=False, log_every=10, validate_every=200, sample_every=200,
                        checkpoint_every=50))


def _small() -> RefineTrainingConfig:
    return RefineTrainingConfig(
        preset="small", network="small", num_samples=24,
        data=RadiographDataConfig(num_workers=0, validation_cases_max=2),
        optim=OptimConfig(learning_rate=3e-3),
        loop=LoopConfig(steps=20, batch_size=2, bf16=False, log_every=1, validate_every=10, sample_every=10,
                        checkpoint_every=5))


REFINE_PRESETS = {"paper": _paper, "cpu64": _cpu64, "small": _small}


def refine_preset(name: str) -> RefineTrainingConfig:
    if name not in REFINE_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(REFINE_PRESETS)}")
    return REFINE_PRESETS[name]()


def refine_config_from_mapping(data: dict) -> RefineTrainingConfig:
    """A config from a (partial) mapping over the preset it names (default ``paper``)."""
    return from_preset_mapping(RefineTrainingConfig, REFINE_PRESETS, data)


def load_refine_config(preset_or_path: str | Path) -> RefineTrainingConfig:
    name, mapping = preset_or_yaml_mapping(preset_or_path, REFINE_PRESETS)
    return refine_preset(name) if name is not None else refine_config_from_mapping(mapping)


def dump_refine_config(config: RefineTrainingConfig) -> str:
    return write_yaml_text(to_dict(config))
