"""The ablation baselines of the paper (Table 1, Table 4, "Ablation study"), behind ``xraysyn train baseline NAME``.

Each is a task on the shared loop (:func:`xraysyn.train.loop.run_training`), trained by the stage it ablates:

* ``prior_drr`` — 3DPN-DRR: the 3DPN of stage 1 trained on DRR-mode simulation (``simulation.mode: drr``,
  :mod:`xraysyn.train.stage1`): input, targets and predictions are monochromatic DRRs, no material
  decomposition, so the loss keeps the image term of eq. 10 only. A stage-1 run (:func:`train_prior`), exported
  as a 3DPN.
* ``refine_nom`` — XraySyn without M: stage 2 (:func:`train_refine`) with ``static_hyper: true`` (a learned
  static 1×1 convolution instead of the hypernetwork's); exported as a 2DRN.
* ``refiner2d`` — the 2D Refiner: an RDN (paper: 20 residual dense blocks × 8 layers, growth 64, no per-sample
  convolution, no upsampling) on the 2-channel image ``concat(FP(BP(I_in^T, T), T'), I_in^T)`` predicting the
  true view at T' as the line integral −log I, trained with L1 on the simulated CT data of stage 1
  (:class:`Refiner2DTask`). BP is eq. 7 (per mm of chord), so FP(BP(I, T), T) = I: the first channel is the
  input radiograph smeared through the volume and seen from T', in the input's units.
* ``x2ct`` — X2CT-CNN (Ying et al. 2019): :class:`~xraysyn.models.x2ct.X2CTNet` on the normalised input
  radiograph itself (no BP), its 2-D features copied along the frontal view's rays into the 3-D decoder,
  trained with the losses of eq. 9 on the same CT2Xray targets as the 3DPN (:class:`X2CTTask`).

``refiner2d`` and ``x2ct`` read a :class:`BaselineTrainingConfig`: the sections of a stage-1 config (data,
simulation, input randomisation, eq. 9 weights, optimiser, loop, validation protocol; preset ``paper``,
``cpu64`` or ``small`` takes them from the stage-1 preset of that name, so a baseline trains on what the
3DPN of the same preset trains on) plus ``baseline`` and ``network`` (the network's preset). Their validation
is the 3DPN's protocol: the input at the frontal view T, PSNR / SSIM of −log I at T and at ``validation.views``
views T' within ±``validation.max_azimuth_deg`` (each true view's range as the data range); X2CT adds the
3-D PSNR of the CT and the bone Dice, as the 3DPN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xraysyn.data.input_domain import InputRandomisation
from xraysyn.models.rdn import RDN, RDNConfig
from xraysyn.models.x2ct import X2CTConfig, X2CTNet
from xraysyn.projector import backproject, forward_project
from xraysyn.train.config_io import (
    ConfigError,
    from_preset_mapping,
    preset_or_yaml_mapping,
    read_yaml,
    replace_fields,
    to_dict,
)
from xraysyn.train.distributed import ProcessGroup
from xraysyn.train.loop import CONFIG_FILE, RunSummary, optimise
from xraysyn.train.losses import Stage1LossWeights
from xraysyn.train.prior import PriorTask, train_prior
from xraysyn.train.prior_config import (
    PRESETS,
    LoopConfig,
    OptimConfig,
    PriorDataConfig,
    PriorTrainingConfig,
    SimulationConfig,
    ValidationConfig,
    preset_config,
)
from xraysyn.train.stage1 import VIEWS_PER_VOLUME, predict_volumes, simulate_views, simulated_network_input, \
    stage1_targets, stage1_terms, view_poses

__all__ = [
    "BASELINES",
    "SIMULATED_BASELINES",
    "BaselineTrainingConfig",
    "FrontalX2CT",
    "Refiner2DTask",
    "X2CTTask",
    "baseline_config_from_mapping",
    "baseline_export",
    "baseline_network",
    "check_baseline_name",
    "load_baseline_config",
    "load_baseline_export",
    "refiner2d_network_config",
    "saved_baseline_config",
    "simulated_baseline_preset",
    "train_baseline",
    "voxel_order_from_frontal_view",
]

#: Every baseline ``xraysyn train baseline`` knows.
BASELINES = ("refiner2d", "x2ct", "prior_drr", "refine_nom")
#: The baselines with their own network and task, trained on the simulated CT data of stage 1.
SIMULATED_BASELINES = ("refiner2d", "x2ct")
#: Blocks of the 2D Refiner's RDN in the paper (supplementary: "twenty Residual Dense Blocks").
PAPER_REFINER_BLOCKS = 20
#: The 2D Refiner's image: FP(BP(I_in, T), T') and I_in; its output: −log I at T'.
REFINER_IN_CHANNELS, REFINER_OUT_CHANNELS = 2, 1
#: PSNR values are capped here (a perfect prediction would give +inf), as in stage 1.
PSNR_CAP_DB = 100.0


def check_baseline_name(name: str) -> str:
    """``name`` if it is one of :data:`BASELINES`, else :class:`ConfigError` naming the known ones."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    return name


def refiner2d_network_config(preset: str) -> RDNConfig:
    """The 2D Refiner's RDN of a preset: ``paper`` 20 blocks × 8 layers, growth 64, 64 features (the paper's
    supplementary); ``cpu64`` / ``small`` the 2DRN F's presets; always 2 channels in, 1 out, no upsampling and
    no per-sample convolution."""
    base = RDNConfig.preset(preset)
    blocks = PAPER_REFINER_BLOCKS if preset == "paper" else base.blocks
    return dataclasses.replace(base, blocks=blocks, in_channels=REFINER_IN_CHANNELS,
                               out_channels=REFINER_OUT_CHANNELS, upscale=1, per_sample_fusion=False)


def voxel_order_from_frontal_view(volume: torch.Tensor) -> torch.Tensor:
    """``(B, C, depth, rows, cols)`` in the frontal view's frame → ``(B, C, X, Y, Z)`` RAS+ voxel order.

    At the canonical frontal pose (azimuth = elevation = 0) the rays run along the voxel axis Y (posterior ↔
    anterior), detector rows along −Z (superior at the top) and columns along −X (the patient's right on the
    image's left), for the axis-aligned RAS+ grids of the training data (checked against the projector in
    ``tests/train/test_baselines.py``). So ``voxel[x, y, z] = view[y, S−1−z, S−1−x]``.
    """
    if not isinstance(volume, torch.Tensor) or volume.dim() != 5:
        raise ValueError(f"volume must be a (B, C, depth, rows, cols) tensor, got "
                         f"{tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__}")
    return volume.permute(0, 1, 4, 2, 3).flip(2).flip(4)


class FrontalX2CT(nn.Module):
    """X2CT-CNN for XraySyn's grids: :class:`~xraysyn.models.x2ct.X2CTNet` ``(B, 1, S, S)`` normalised radiograph
    → ``(B, 2, S, S, S)`` in the CT's voxel order (:func:`voxel_order_from_frontal_view`): normalised CT and bone
    mask in tanh space, as the 3DPN's output."""

    def __init__(self, net: X2CTNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return voxel_order_from_frontal_view(self.net(image))


def baseline_network(baseline: str, preset: str) -> nn.Module:
    """The network of a simulated baseline: ``refiner2d`` → :class:`RDN`, ``x2ct`` → :class:`FrontalX2CT`."""
    if baseline == "refiner2d":
        return RDN(refiner2d_network_config(preset))
    if baseline == "x2ct":
        return FrontalX2CT(X2CTNet(X2CTConfig.preset(preset)))
    raise ConfigError(f"baseline must be one of {SIMULATED_BASELINES}, got {baseline!r}")


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BaselineTrainingConfig:
    """A ``refiner2d`` or ``x2ct`` run: the stage-1 sections (see :class:`PriorTrainingConfig`) plus the baseline.

    Args:
        preset: the preset the other fields start from (``paper``, ``cpu64``, ``small``).
        baseline: ``refiner2d`` or ``x2ct``.
        network: the network's preset (:func:`refiner2d_network_config`, :meth:`X2CTConfig.preset`).
        data, simulation, input, optim, loop, validation: as for stage 1.
        loss: λ of eq. 9 (``x2ct``; the 2D Refiner's loss is its L1 alone).
    """

    preset: str = "paper"
    baseline: str = "x2ct"
    network: str = "paper"
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
        if self.baseline not in SIMULATED_BASELINES:
            raise ConfigError(f"baseline must be one of {SIMULATED_BASELINES}, got {self.baseline!r}")
        if self.network not in PRESETS:
            raise ConfigError(f"network must be one of {tuple(PRESETS)}, got {self.network!r}")
        if self.loop.batch_size % self.optim.accumulation_steps:
            raise ConfigError(f"loop.batch_size {self.loop.batch_size} is not divisible by "
                              f"optim.accumulation_steps {self.optim.accumulation_steps}")
        if self.baseline == "x2ct":
            divisor = X2CTConfig.preset(self.network).size_divisor
            side, pixels = self.data.volume_size, self.simulation.detector_pixels
            if pixels != side:
                raise ConfigError(f"x2ct maps a {pixels}² radiograph to a cube of the same side: "
                                  f"simulation.detector_pixels ({pixels}) must equal data.volume_size ({side})")
            if side % divisor:
                raise ConfigError(f"data.volume_size {side} must be a multiple of {divisor} for the x2ct network "
                                  f"preset {self.network!r}")

    def replace(self, **sections) -> BaselineTrainingConfig:
        """As :meth:`PriorTrainingConfig.replace` (``section__field=value``)."""
        return replace_fields(self, **sections)


def simulated_baseline_preset(baseline: str, name: str) -> BaselineTrainingConfig:
    """The ``refiner2d`` / ``x2ct`` config of preset ``name``: the stage-1 preset's sections, network ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    stage1 = preset_config(name)
    return BaselineTrainingConfig(preset=name, baseline=baseline, network=name, data=stage1.data,
                                  simulation=stage1.simulation, input=stage1.input, loss=stage1.loss,
                                  optim=stage1.optim, loop=stage1.loop, validation=stage1.validation)


def baseline_config_from_mapping(data: dict) -> BaselineTrainingConfig:
    """A config from a (partial) mapping: the preset of its ``baseline`` (required) and ``preset`` (default
    ``paper``) overridden by its fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
    baseline = data.get("baseline")
    if baseline not in SIMULATED_BASELINES:
        raise ConfigError(f"baseline must be one of {SIMULATED_BASELINES}, got {baseline!r}")
    return from_preset_mapping(BaselineTrainingConfig, PRESETS, data,
                               preset_of=lambda name: simulated_baseline_preset(baseline, name))


def load_baseline_config(name: str, preset_or_path: str | Path):
    """The config of baseline ``name`` from a preset name or a YAML file, with what makes it that baseline forced:
    ``refine_nom`` → a :class:`~xraysyn.train.refine_config.RefineTrainingConfig` with ``static_hyper`` on,
    ``prior_drr`` → a :class:`PriorTrainingConfig` with ``simulation.mode: drr``, else a
    :class:`BaselineTrainingConfig` (a YAML ``baseline`` field must name the same baseline)."""
    from xraysyn.train.prior_config import load_config
    from xraysyn.train.refine_config import load_refine_config

    check_baseline_name(name)
    if name == "refine_nom":
        return load_refine_config(preset_or_path).replace(static_hyper=True)
    if name == "prior_drr":
        return load_config(preset_or_path).replace(simulation__mode="drr")
    text = str(preset_or_path)
    preset, mapping = preset_or_yaml_mapping(preset_or_path, PRESETS)
    if preset is not None:
        return simulated_baseline_preset(name, preset)
    if not isinstance(mapping, dict):
        raise ConfigError(f"{text!r}: a config must be a mapping of fields")
    if mapping.setdefault("baseline", name) != name:
        raise ConfigError(f"{text!r} is a config of baseline {mapping['baseline']!r}, not {name!r}")
    return baseline_config_from_mapping(mapping)


def saved_baseline_config(name: str, run_dir: str | Path):
    """The resolved config saved in the run folder of baseline ``name`` (for ``--resume``)."""
    from xraysyn.train.prior_config import config_from_mapping, saved_run_mapping
    from xraysyn.train.refine_config import refine_config_from_mapping

    check_baseline_name(name)
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a training run folder (no {CONFIG_FILE})")
    mapping = read_yaml(path)
    if name == "refine_nom":
        return refine_config_from_mapping(mapping)
    if name == "prior_drr":
        return config_from_mapping(saved_run_mapping(mapping))
    if isinstance(mapping, dict) and mapping.get("baseline") != name:
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run of baseline {name!r}")
    return baseline_config_from_mapping(saved_run_mapping(mapping))


# ---------------------------------------------------------------------------------------------- tasks
def _view_metrics(predicted: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view PSNR (dB, capped) and SSIM of ``(V, 1, rows, cols)`` images, each true view's range as data range."""
    from xraysyn.metrics import psnr, ssim

    pred, true = predicted.double(), true.double()
    flat = true.reshape(true.shape[0], -1)
    data_range = (flat.max(dim=1).values - flat.min(dim=1).values).clamp(min=1e-12)
    return psnr(pred, true, data_range).clamp(max=PSNR_CAP_DB), ssim(pred, true, data_range)


class X2CTTask(PriorTask):
    """X2CT-CNN on stage 1's items, targets, losses (eq. 9), validation and samples; only the network differs:
    it sees the normalised radiograph, not V_BP."""

    stage = "x2ct"

    def __init__(self, config: BaselineTrainingConfig, group: ProcessGroup, datasets: list, split):
        torch.manual_seed(config.loop.seed)
        super().__init__(config, group, datasets, split, model=baseline_network("x2ct", config.network))

    def modules(self) -> dict[str, nn.Module]:
        return {self.stage: self.network}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.stage: self.optimizer}

    def step(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        self.model.train()

        def losses(batch):
            poses, target, normalised = stage1_targets(batch, self.geometry,
                                                       perturbations=self.perturbations(batch["position"]),
                                                       mode=self.mode, **self.projector_kwargs)
            ct_normalized, hu, mask = predict_volumes(self.model, normalised, self.hu_scale, self.autocast_dtype)
            return stage1_terms(ct_normalized, hu, mask, batch, poses, target, self.geometry,
                                loss_weights=self.config.loss, hu_scale=self.hu_scale, mode=self.mode,
                                **self.projector_kwargs)

        terms = optimise(self.model, self.optimizer, losses, micro_batches, self.config.optim.grad_clip_norm)
        return {name: float(sum(float(t[name]) for t in terms) / len(terms)) for name in self.loss_names}

    def predict_from_radiograph(self, normalised: torch.Tensor, case: dict, input_poses: torch.Tensor):
        return predict_volumes(self.network, normalised, self.hu_scale, self.autocast_dtype)


class Refiner2DTask(PriorTask):
    """The 2D Refiner on stage 1's items: L1 between its −log I at T' and the simulated truth's."""

    stage = "refiner2d"
    loss_names = ("total",)
    metric_names = ("psnr_t", "ssim_t", "psnr_t_prime", "ssim_t_prime")
    best_metric = "psnr_t_prime"

    def __init__(self, config: BaselineTrainingConfig, group: ProcessGroup, datasets: list, split):
        torch.manual_seed(config.loop.seed)
        super().__init__(config, group, datasets, split, model=baseline_network("refiner2d", config.network))

    def modules(self) -> dict[str, nn.Module]:
        return {self.stage: self.network}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.stage: self.optimizer}

    def _autocast(self):
        return (torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype is not None
                else contextlib.nullcontext())

    @torch.no_grad()
    def refiner_input(self, normalised: torch.Tensor, world_from_voxel: torch.Tensor, input_poses: torch.Tensor,
                      target_poses: torch.Tensor, volume_shape) -> torch.Tensor:
        """``concat(FP(BP(I_in, T), T'), I_in)``: ``(B·V, 2, rows, cols)`` for ``(B, 1, rows, cols)`` normalised
        radiographs at ``input_poses (B, 4, 4)`` and ``V`` target views per item (``target_poses (B·V, 4, 4)``,
        volume-major), BP into each item's CT grid ``volume_shape (D, H, W)`` with ``world_from_voxel (B, 4, 4)``
        mm. Both channels are in the normalised input's units."""
        backend = self.projector_kwargs["backend"]
        smeared = backproject(normalised, world_from_voxel, input_poses, self.geometry, volume_shape, backend=backend)
        reprojected = forward_project(smeared, world_from_voxel, target_poses, self.geometry, **self.projector_kwargs)
        views = target_poses.shape[0] // normalised.shape[0]
        return torch.cat([reprojected.to(normalised.dtype), normalised.repeat_interleave(views, dim=0)], dim=1)

    def predict_views(self, model: nn.Module, normalised: torch.Tensor, world_from_voxel: torch.Tensor,
                      input_poses: torch.Tensor, target_poses: torch.Tensor, volume_shape) -> torch.Tensor:
        """The refiner's −log I ``(B·V, 1, rows, cols)`` at the target views (see :meth:`refiner_input`)."""
        image = self.refiner_input(normalised, world_from_voxel, input_poses, target_poses, volume_shape)
        with self._autocast():
            return model(image).float()

    def step(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        self.model.train()

        def losses(batch):
            poses, target, normalised = stage1_targets(batch, self.geometry,
                                                       perturbations=self.perturbations(batch["position"]),
                                                       mode=self.mode, **self.projector_kwargs)
            predicted = self.predict_views(self.model, normalised, batch["world_from_voxel"],
                                           poses[0::VIEWS_PER_VOLUME], poses[1::VIEWS_PER_VOLUME],
                                           tuple(batch["ct_hu"].shape[2:]))
            return (predicted - target.line_integral[1::VIEWS_PER_VOLUME]).abs().mean(), {}

        terms = optimise(self.model, self.optimizer, losses, micro_batches, self.config.optim.grad_clip_norm)
        return {"total": float(sum(float(t["total"]) for t in terms) / len(terms))}

    @torch.no_grad()
    def predict_case(self, case: dict) -> dict:
        """Truth and the refiner's views of one validation case: view 0 = T (frontal), then the T' views."""
        azimuth, elevation = self._validation_angles()
        poses = view_poses(azimuth.to(self.device), elevation.to(self.device), self.geometry)
        truth = simulate_views(case["ct_hu"], case["bone"], case["world_from_voxel"], poses, self.geometry,
                               mode=self.mode, **self.projector_kwargs)
        normalised = simulated_network_input(truth.thickness[:1], truth.i_atten[:1])
        self.network.eval()
        image = self.refiner_input(normalised, case["world_from_voxel"], poses[:1], poses,
                                   tuple(case["ct_hu"].shape[2:]))
        with self._autocast():
            predicted = self.network(image).float()
        return {"azimuth_deg": azimuth[0], "input": normalised, "reprojected": image[:, :1], "truth": truth,
                "predicted": predicted}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        sums = {name: 0.0 for name in self.metric_names}
        cases = self.validation_cases()
        for case in cases:
            out = self.predict_case(case)
            view_psnr, view_ssim = _view_metrics(out["predicted"], out["truth"].line_integral)
            sums["psnr_t"] += float(view_psnr[0])
            sums["ssim_t"] += float(view_ssim[0])
            sums["psnr_t_prime"] += float(view_psnr[1:].mean())
            sums["ssim_t_prime"] += float(view_ssim[1:].mean())
        return {name: value / max(1, len(cases)) for name, value in sums.items()}

    @torch.no_grad()
    def save_samples(self, path: Path, step: int) -> None:
        from xraysyn.train.figures import save_sample_grid

        cases = self.validation_cases()
        if not cases:
            return
        out = self.predict_case(cases[0])
        azimuth = out["azimuth_deg"].tolist()
        first, last = 1, len(azimuth) - 1

        def image(t):
            return t.detach().float().cpu().numpy()

        rows = [("input", [("normalised input at T", image(out["input"][0, 0]))]
                 + [(f"FP(BP) {azimuth[i]:+.0f}°", image(out["reprojected"][i, 0])) for i in (first, last)])]
        rows.append(("radiograph −log I", [panel for i in (0, first, last) for panel in (
            (f"predicted {azimuth[i]:+.0f}°", image(out["predicted"][i, 0])),
            (f"true {azimuth[i]:+.0f}°", image(out["truth"].line_integral[i, 0])))]))
        save_sample_grid(path, rows, title=f"2D Refiner, step {step}, validation case {cases[0]['id']}")


TASKS = {"refiner2d": Refiner2DTask, "x2ct": X2CTTask}


# ---------------------------------------------------------------------------------------------- training
def train_baseline(name: str, config, run_dir: str | os.PathLike, *, prior: str | os.PathLike | None = None,
                   resume: bool = False, progress: bool = True, group: ProcessGroup | None = None,
                   on_step=None) -> RunSummary:
    """Train (or resume) baseline ``name`` in ``run_dir``; everything is validated before anything is written.

    Args:
        name: one of :data:`BASELINES`.
        config: from :func:`load_baseline_config` (or :func:`saved_baseline_config` on resume); what makes the
            baseline is forced (``refine_nom``: ``static_hyper``; ``prior_drr``: ``simulation.mode: drr``).
        run_dir: the run folder (new and empty, or an existing run with ``resume``).
        prior: the 3DPN export of ``refine_nom`` (a new run); refused for the other baselines.
        resume, progress, group, on_step: as :func:`xraysyn.train.prior.train_prior`.
    """
    check_baseline_name(name)
    if prior is not None and name != "refine_nom":
        raise ConfigError(f"--prior is for refine_nom only; baseline {name!r} trains on simulated CT data")
    if name == "refine_nom":
        from xraysyn.train.refine import train_refine
        from xraysyn.train.refine_config import RefineTrainingConfig

        if not isinstance(config, RefineTrainingConfig):
            raise ConfigError(f"refine_nom needs a stage-2 config, got {type(config).__name__}")
        return train_refine(config.replace(static_hyper=True), prior, run_dir, resume=resume, progress=progress,
                            group=group, on_step=on_step)
    if name == "prior_drr":
        if not isinstance(config, PriorTrainingConfig):
            raise ConfigError(f"prior_drr needs a stage-1 config, got {type(config).__name__}")
        return train_prior(config.replace(simulation__mode="drr"), run_dir, resume=resume, progress=progress,
                           group=group, on_step=on_step)
    if not isinstance(config, BaselineTrainingConfig) or config.baseline != name:
        got = config.baseline if isinstance(config, BaselineTrainingConfig) else type(config).__name__
        raise ConfigError(f"baseline {name!r} needs its BaselineTrainingConfig, got {got!r}")
    return train_prior(config, run_dir, resume=resume, progress=progress, group=group, on_step=on_step,
                       task_class=TASKS[name], read_config=baseline_config_from_mapping)


# ---------------------------------------------------------------------------------------------- export
def baseline_export(run_dir: Path, payload: dict, half: bool) -> dict:
    """The weights-only export (see :mod:`xraysyn.train.export`) of a ``refiner2d`` or ``x2ct`` checkpoint."""
    import xraysyn
    from xraysyn.models.normalization import HUScale
    from xraysyn.train.export import EXPORT_FORMAT, state_dict_sha256

    config = baseline_config_from_mapping(payload["config"])
    state = payload["modules"][config.baseline]
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    sim = config.simulation
    if config.baseline == "x2ct":
        network = {"class": "FrontalX2CT", "config": to_dict(X2CTConfig.preset(config.network))}
        output = ("(B, 2, S, S, S) in the CT's voxel order: normalised CT (hu_scale) and bone mask, tanh space; "
                  "input (B, 1, S, S) normalised radiograph at the frontal view")
        scale = HUScale()
        extra = {"hu_scale": {"min_hu": float(scale.min_hu), "max_hu": float(scale.max_hu)}}
    else:
        network = {"class": "RDN", "config": to_dict(refiner2d_network_config(config.network))}
        output = ("(B, 1, rows, cols) -log I at T'; input (B, 2, rows, cols) = concat(FP(BP(I_in, T), T'), I_in), "
                  "I_in the normalised radiograph, BP per mm of chord")
        extra = {}
    return {
        "format": EXPORT_FORMAT,
        "xraysyn_version": xraysyn.__version__,
        "stage": config.baseline,
        "model_class": network["class"],
        "model_config": {"preset": config.network, **network["config"]},
        "state_dict": state,
        "sha256": state_dict_sha256(state),
        "input_normalisation": {"function": "xraysyn.data.input_domain.normalise_radiograph",
                                "detector_pixels": sim.detector_pixels, "field_of_view_mm": sim.field_of_view_mm,
                                "sdd_mm": sim.sdd_mm, "sid_mm": sim.sid_mm, "volume_size": config.data.volume_size,
                                "simulation_mode": sim.mode},
        "output": output,
        **extra,
        "steps": int(payload["step"]),
        "validation": dict(payload["validation"]),
        "best": dict(payload["best"]),
        "config": payload["config"],
    }


def load_baseline_export(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A ``refiner2d`` or ``x2ct`` export as ``(network in eval mode on device, export dict)``.

    Raises:
        ExportError: not an xraysyn export, damaged, or of another stage.
    """
    from xraysyn.train.export import ExportError, load_export

    export = load_export(path)
    if export.get("stage") not in SIMULATED_BASELINES:
        raise ExportError(f"{str(path)!r} is an export of stage {export.get('stage')!r}, not of "
                          f"{' or '.join(SIMULATED_BASELINES)}")
    network = baseline_network(export["stage"], export["model_config"]["preset"])
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in export["state_dict"].items()})
    return network.to(device).eval(), export
