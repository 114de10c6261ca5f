"""The typed, fully resolved configuration of a stage-1 (3D PriorNet) training run, and its presets.

A config file (YAML) accepts exactly the fields of :class:`PriorTrainingConfig` (nested sections, any
subset; the rest from the preset named by ``preset``, default ``paper``). The resolved config, every
field included, is written to the run folder before the first step (:func:`dump_config`).

Presets:

* ``paper`` — Table 3 at 128³ with a 128² detector, batch norm, for a GPU (bf16 autocast).
* ``cpu64`` — a model worth using that trains in about an hour on 2 CPU cores: 64³ volumes, a 64²
  detector, encoder widths 16–128 with instance norm (652,578 parameters, 2.6 MB of float32 weights).
* ``small`` — 16³ volumes and a tiny network, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from xraysyn.data.input_domain import InputRandomisation
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.models.unet3d import NORMS, PriorNetConfig
from xraysyn.train.config_io import (
    ConfigError,
    from_preset_mapping,
    preset_or_yaml_mapping,
    replace_fields,
    to_dict,
    write_yaml_text,
)
from xraysyn.train.losses import Stage1LossWeights
from xraysyn.train.stage1 import SIMULATION_MODES

__all__ = [
    "DataSource",
    "PriorDataConfig",
    "PriorModelConfig",
    "SimulationConfig",
    "OptimConfig",
    "LoopConfig",
    "ValidationConfig",
    "PriorTrainingConfig",
    "PRESETS",
    "PHANTOM_SOURCE",
    "preset_config",
    "load_config",
    "dump_config",
]

#: The data source name of procedural chest phantoms generated on the fly.
PHANTOM_SOURCE = "phantom"
SCHEDULES = ("constant", "cosine", "step")

DEVICES = ("auto", "cpu", "cuda")


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive_float(value, name):
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class DataSource:
    """One source of CT cases: ``path`` a folder of shards from ``xraysyn prepare ct``, or ``phantom``;
    ``weight`` its share of the training items (weights are normalised over the sources)."""

    path: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.path:
            raise ConfigError("a data source path must not be empty")
        _positive_float(self.weight, f"weight of data source {self.path!r}")

    @property
    def is_phantom(self) -> bool:
        return self.path == PHANTOM_SOURCE

    @classmethod
    def parse(cls, text: str) -> DataSource:
        """``PATH`` or ``PATH:WEIGHT`` (e.g. ``shards/:0.7``, ``phantom:0.3``); text after the last colon that is
        not a number stays part of the path (``C:/x``); a number that is not a valid weight is an error."""
        path, sep, weight = str(text).rpartition(":")
        if sep and path and not weight.startswith(("/", "\\")):
            try:
                value = float(weight)
            except ValueError:
                pass
            else:
                return cls(path, value)  # a bad weight (0, negative, nan, inf) raises here, not a path
        return cls(str(text))


@dataclass(frozen=True)
class PriorDataConfig:
    """Where the CT cases come from and how they are drawn.

    Args:
        sources: the data sources and their mixing weights.
        volume_size: every CT is resampled to this many voxels per axis (its physical extent kept).
        phantom_cases: number of distinct phantoms of the ``phantom`` source.
        validation_fraction: share of each source's cases held out for validation (at least one case).
        validation_cases_max: at most this many held-out cases are evaluated per validation.
        augment: random rotation, scaling, HU and bone augmentation of the CT (:mod:`xraysyn.data.augment`).
        max_angle_deg: the views T and T' are uniform in ±this azimuth and elevation (paper: 18°).
        num_workers: DataLoader worker processes (0: load in the training process).
    """

    sources: tuple[DataSource, ...] = (DataSource(PHANTOM_SOURCE),)
    volume_size: int = 128
    phantom_cases: int = 256
    validation_fraction: float = 0.1
    validation_cases_max: int = 8
    augment: bool = True
    max_angle_deg: float = 18.0
    num_workers: int = 4

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("data.sources must name at least one data source")
        paths = [s.path for s in self.sources]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"data.sources names a source twice: {paths}")
        _positive_int(self.volume_size, "data.volume_size", 8)
        _positive_int(self.phantom_cases, "data.phantom_cases", 2)
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        _positive_int(self.validation_cases_max, "data.validation_cases_max")
        if not 0 <= self.max_angle_deg < 90:
            raise ConfigError(f"data.max_angle_deg must be in [0, 90) degrees, got {self.max_angle_deg!r}")
        _positive_int(self.num_workers, "data.num_workers", 0)


@dataclass(frozen=True)
class PriorModelConfig:
    """The 3DPN's hyper-parameters (:class:`xraysyn.models.PriorNetConfig`)."""

    widths: tuple[int, ...] = PriorNetConfig().widths
    norm: str = "batch"
    negative_slope: float = PriorNetConfig().negative_slope

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        self.network()

    def network(self) -> PriorNetConfig:
        try:
            return PriorNetConfig(widths=self.widths, norm=self.norm, negative_slope=self.negative_slope)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None


@dataclass(frozen=True)
class SimulationConfig:
    """The simulated C-arm and projector of stage 1.

    Args:
        sdd_mm, sid_mm: source–detector and source–isocenter distances (mm).
        detector_pixels: square detector side in pixels (the 3DPN's input radiograph size).
        field_of_view_mm: the detector covers this width at the isocenter plane (mm).
        num_samples: samples per ray (None: half a voxel step).
        projector_backend: ``auto`` or ``reference``.
        mode: how the radiographs (input, targets, predictions) are simulated: ``ct2xray`` (paper eq. 3-6,
            the default) or ``drr`` (monochromatic line integral of μ, the 3DPN-DRR ablation; the loss then has
            only the image term of eq. 10, see :mod:`xraysyn.train.stage1`).
    """

    sdd_mm: float = 1200.0
    sid_mm: float = 1000.0
    detector_pixels: int = 128
    field_of_view_mm: float = 384.0
    num_samples: int | None = None
    projector_backend: str = "auto"
    mode: str = "ct2xray"

    def __post_init__(self):
        _positive_float(self.sdd_mm, "simulation.sdd_mm")
        _positive_float(self.sid_mm, "simulation.sid_mm")
        if not self.sid_mm < self.sdd_mm:
            raise ConfigError(f"simulation.sid_mm ({self.sid_mm}) must be smaller than sdd_mm ({self.sdd_mm})")
        _positive_int(self.detector_pixels, "simulation.detector_pixels", 2)
        _positive_float(self.field_of_view_mm, "simulation.field_of_view_mm")
        if self.num_samples is not None:
            _positive_int(self.num_samples, "simulation.num_samples", 2)
        if self.projector_backend not in ("auto", "reference"):
            raise ConfigError(f"simulation.projector_backend must be auto or reference, got {self.projector_backend!r}")
        if self.mode not in SIMULATION_MODES:
            raise ConfigError(f"simulation.mode must be one of {SIMULATION_MODES}, got {self.mode!r}")

    def geometry(self) -> ConeBeamGeometry:
        """Square detector whose width covers ``field_of_view_mm`` at the isocenter."""
        spacing = self.field_of_view_mm * self.sdd_mm / self.sid_mm / self.detector_pixels
        return ConeBeamGeometry(sdd=self.sdd_mm, sid=self.sid_mm,
                                detector_shape=(self.detector_pixels, self.detector_pixels),
                                pixel_spacing=(spacing, spacing))

    def projector_kwargs(self) -> dict:
        kwargs: dict = {"backend": self.projector_backend}
        if self.num_samples is not None:
            kwargs["num_samples"] = self.num_samples
        return kwargs


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (defaults: the official release's Adam, lr 1e-4, betas (0.5, 0.9)).

    Args:
        learning_rate: peak learning rate.
        adam_betas: Adam's betas.
        schedule: ``constant``, ``cosine`` (to ``min_lr_fraction`` × peak at the last step) or ``step``
            (× ``step_gamma`` every ``step_size`` steps).
        warmup_steps: linear warm-up from 0 over this many steps.
        grad_clip_norm: clip the global gradient norm to this (None: no clipping).
        accumulation_steps: micro-batches per optimiser step (the batch is split into this many).
    """

    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.5, 0.9)
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_fraction: float = 0.0
    step_size: int = 10000
    step_gamma: float = 0.5
    grad_clip_norm: float | None = None
    accumulation_steps: int = 1

    def __post_init__(self):
        _positive_float(self.learning_rate, "optim.learning_rate")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"optim.adam_betas must be in [0, 1), got {self.adam_betas!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _positive_int(self.warmup_steps, "optim.warmup_steps", 0)
        if not 0 <= self.min_lr_fraction <= 1:
            raise ConfigError(f"optim.min_lr_fraction must be in [0, 1], got {self.min_lr_fraction!r}")
        _positive_int(self.step_size, "optim.step_size")
        _positive_float(self.step_gamma, "optim.step_gamma")
        if self.grad_clip_norm is not None:
            _positive_float(self.grad_clip_norm, "optim.grad_clip_norm")
        _positive_int(self.accumulation_steps, "optim.accumulation_steps")


@dataclass(frozen=True)
class LoopConfig:
    """The training loop.

    Args:
        steps: optimiser steps in all.
        batch_size: CT cases per optimiser step, summed over all processes and micro-batches.
        seed: base seed of every random draw (split, views, augmentation, input perturbation).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        bf16: bf16 autocast for the network on CUDA (the projector and the losses stay float32).
        log_every, validate_every, sample_every, checkpoint_every: intervals in steps.
        keep_last: checkpoints kept besides ``best.pt``.
        sync_batchnorm: SyncBatchNorm across processes (batch norm models under torchrun).
    """

    steps: int = 100000
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    log_every: int = 10
    validate_every: int = 1000
    sample_every: int = 1000
    checkpoint_every: int = 500
    keep_last: int = 3
    sync_batchnorm: bool = False

    def __post_init__(self):
        _positive_int(self.steps, "loop.steps")
        _positive_int(self.batch_size, "loop.batch_size")
        _positive_int(self.seed, "loop.seed", 0)
        if self.device not in DEVICES:
            raise ConfigError(f"loop.device must be one of {DEVICES}, got {self.device!r}")
        for name in ("log_every", "validate_every", "sample_every", "checkpoint_every", "keep_last"):
            _positive_int(getattr(self, name), f"loop.{name}")


@dataclass(frozen=True)
class ValidationConfig:
    """The paper's test protocol: the input at the frontal view T, ``views`` target views T' evenly from
    −``max_azimuth_deg`` to +``max_azimuth_deg`` azimuth (paper: 20 views, ±9°)."""

    views: int = 20
    max_azimuth_deg: float = 9.0

    def __post_init__(self):
        _positive_int(self.views, "validation.views", 2)
        if not 0 < self.max_azimuth_deg < 90:
            raise ConfigError(f"validation.max_azimuth_deg must be in (0, 90), got {self.max_azimuth_deg!r}")


@dataclass(frozen=True)
class PriorTrainingConfig:
    """Everything a stage-1 run needs (see the module docstring)."""

    preset: str = "paper"
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    input: InputRandomisation = field(default_factory=InputRandomisation)
    loss: Stage1LossWeights = field(default_factory=Stage1LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        divisor = self.model.network().size_divisor
        if self.data.volume_size % divisor:
            raise ConfigError(f"data.volume_size {self.data.volume_size} must be a multiple of {divisor} "
                              f"(2**{len(self.model.widths)} for {len(self.model.widths)} encoder levels)")
        if self.loop.batch_size % self.optim.accumulation_steps:
            raise ConfigError(f"loop.batch_size {self.loop.batch_size} is not divisible by "
                              f"optim.accumulation_steps {self.optim.accumulation_steps}")

    def replace(self, **sections) -> PriorTrainingConfig:
        """A copy with some fields replaced; ``section__field=value`` replaces one field of a section."""
        return replace_fields(self, **sections)


def _paper() -> PriorTrainingConfig:
    return PriorTrainingConfig(preset="paper")


def _cpu64() -> PriorTrainingConfig:
    return PriorTrainingConfig(
        preset="cpu64",
        model=PriorModelConfig(widths=(16, 32, 64, 128), norm="instance"),
        data=PriorDataConfig(volume_size=64, phantom_cases=256, num_workers=1),
        simulation=SimulationConfig(detector_pixels=64, num_samples=96),
        optim=OptimConfig(learning_rate=2e-4, schedule="cosine", warmup_steps=50, min_lr_fraction=0.1,
                          grad_clip_norm=1.0),
        loop=LoopConfig(steps=3000, batch_size=2, bf16=False, log_every=10, validate_every=250, sample_every=250,
                        checkpoint_every=50),
        validation=ValidationConfig(views=20),
    )


def _small() -> PriorTrainingConfig:
    return PriorTrainingConfig(
        preset="small",
        model=PriorModelConfig(widths=(4, 8), norm="instance"),
        data=PriorDataConfig(volume_size=16, phantom_cases=6, validation_cases_max=2, num_workers=0),
        simulation=SimulationConfig(detector_pixels=16, num_samples=24),
        optim=OptimConfig(learning_rate=2e-3),
        loop=LoopConfig(steps=20, batch_size=2, bf16=False, log_every=1, validate_every=10, sample_every=10,
                        checkpoint_every=5),
        validation=ValidationConfig(views=4),
    )


PRESETS = {"paper": _paper, "cpu64": _cpu64, "small": _small}


def preset_config(name: str) -> PriorTrainingConfig:
    """The resolved config of preset ``name`` (``paper``, ``cpu64``, ``small``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def config_from_mapping(data: dict) -> PriorTrainingConfig:
    """A config from a (partial) mapping: the preset it names (default ``paper``) overridden by its fields."""
    return from_preset_mapping(PriorTrainingConfig, PRESETS, data)


def saved_run_mapping(data):
    """A run folder's saved ``config.yaml`` mapping as this version reads it: runs saved before the bone mask's
    soft-Dice term (a ``loss`` section without ``mask_dice``) continue with λ_dice = 0, the loss they were
    trained with, so that they resume exactly. Other mappings are returned as they are."""
    if isinstance(data, dict) and isinstance(data.get("loss"), dict) and "mask_dice" not in data["loss"]:
        return {**data, "loss": {**data["loss"], "mask_dice": 0.0}}
    return data


def load_config(preset_or_path: str | Path) -> PriorTrainingConfig:
    """A preset name, or a YAML file holding (a subset of) the fields of :class:`PriorTrainingConfig`."""
    name, mapping = preset_or_yaml_mapping(preset_or_path, PRESETS)
    return preset_config(name) if name is not None else config_from_mapping(mapping)


def dump_config(config: PriorTrainingConfig) -> str:
    """The resolved config as YAML text (every field)."""
    return write_yaml_text(to_dict(config))
