"""Stage 1 as a training run: :class:`PriorTask` for the loop of :mod:`xraysyn.train.loop`, and
:func:`train_prior`, behind ``xraysyn train prior``.

Validation follows the paper's test protocol on the held-out cases: the input at the frontal view T,
CT2Xray of the prediction against that of the truth at T and at ``validation.views`` views T' from
−``max_azimuth_deg`` to +``max_azimuth_deg`` azimuth, the 3-D PSNR of the CT in the network's normalised
units (range 2) and the Dice of the bone mask (threshold 0.5). The radiographs are compared as a
log-processed display shows them, in the line integral −log(I/I₀), with each true view's range as the
PSNR/SSIM data range: the linear display max(I) − I of eq. 5 spans only a few percent of its range behind
a chest (most of it is the air around the body), which makes its PSNR swing with tiny errors in the air.

``simulation.mode: drr`` (the 3DPN-DRR ablation, ``xraysyn train baseline prior_drr``) simulates the input, the
targets and the predictions as DRRs (:func:`xraysyn.train.stage1.simulate_views`) in training and validation;
the loss has the image term of eq. 10 only, and the sample grids have no thickness row.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import default_collate

from xraysyn.data.input_domain import sample_input_perturbation
from xraysyn.models.normalization import HUScale
from xraysyn.models.unet3d import PriorNet3D
from xraysyn.train.config_io import ConfigError
from xraysyn.train.distributed import ProcessGroup, start_processes
from xraysyn.train.loop import CONFIG_FILE, RunSummary, optimise, run_training
from xraysyn.train.prior_config import PriorTrainingConfig, dump_config
from xraysyn.train.sources import (
    INPUT_STREAM,
    ItemPlan,
    TrainingItems,
    make_split,
    open_sources,
    read_split,
    seeded_generator,
    write_split,
)
from xraysyn.train.stage1 import (
    network_input_from_radiograph,
    predict_volumes,
    simulate_views,
    simulated_network_input,
    stage1_losses,
    view_poses,
)

__all__ = ["PriorTask", "train_prior", "check_run_dir", "STAGE"]

STAGE = "prior"
#: Range of the network's normalised CT (−1 … 1) for the 3-D PSNR.
NORMALISED_CT_RANGE = 2.0
#: Bone probability threshold of the Dice.
MASK_THRESHOLD = 0.5
#: Cases cached in memory per loader process (a 64³ case holds ~2 MB).
CACHED_CASES = 512
CACHE_BYTES_LIMIT = 2 * 2**30


class PriorTask:
    """The 3DPN, its optimiser, the items and the validation of a stage-1 run."""

    stage = STAGE
    loss_names = ("total", "ct", "mask", "mask_dice", "xray_t", "xray_t_prime")
    metric_names = ("psnr_t", "ssim_t", "psnr_t_prime", "ssim_t_prime", "psnr_ct", "dice_bone")
    best_metric = "psnr_t_prime"

    def __init__(self, config: PriorTrainingConfig, group: ProcessGroup, datasets: list, split, *,
                 model: torch.nn.Module | None = None):
        self.config = config
        self.group = group
        self.device = group.device
        self.geometry = config.simulation.geometry()
        self.projector_kwargs = config.simulation.projector_kwargs()
        self.mode = config.simulation.mode
        self.hu_scale = HUScale()
        self.datasets = datasets
        self.split = split
        self.plan = ItemPlan(config.data, datasets, split, config.loop.seed)
        torch.manual_seed(config.loop.seed)  # the same initial weights on every process
        network = model if model is not None else PriorNet3D(config.model.network())
        network = network.to(self.device)
        if group.distributed and config.loop.sync_batchnorm:
            network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        self.network = network
        if group.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
        else:
            self.model = network
        optim = config.optim
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=optim.learning_rate, betas=optim.adam_betas)
        use_bf16 = config.loop.bf16 and self.device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        volume_bytes = 2 * 4 * config.data.volume_size ** 3
        self.cache_cases = int(min(CACHED_CASES, CACHE_BYTES_LIMIT // volume_bytes))
        self._validation_cases = None

    # ------------------------------------------------------------------ the loop's interface
    def items(self) -> TrainingItems:
        return TrainingItems(self.datasets, self.plan, cache_cases=self.cache_cases)

    def collate(self, items: list) -> dict:
        return default_collate(items)

    def collate_to_device(self, batch: dict) -> dict:
        non_blocking = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def epoch_of_step(self, step: int) -> int:
        return self.plan.epoch_of(max(0, step * self.config.loop.batch_size - 1))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"prior": self.network}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"prior": self.optimizer}

    def perturbations(self, positions: torch.Tensor) -> list:
        """The input perturbation of each item, seeded by ``(seed, position)``."""
        return [sample_input_perturbation(self.config.input, seeded_generator(self.config.loop.seed, INPUT_STREAM,
                                                                                int(p)))
                for p in positions.tolist()]

    def step(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        self.model.train()

        def losses(batch):
            return stage1_losses(self.model, batch, self.geometry, loss_weights=self.config.loss,
                                 hu_scale=self.hu_scale, perturbations=self.perturbations(batch["position"]),
                                 autocast_dtype=self.autocast_dtype, mode=self.mode, **self.projector_kwargs)

        terms = optimise(self.model, self.optimizer, losses, micro_batches, self.config.optim.grad_clip_norm)
        return {name: float(sum(float(t[name]) for t in terms) / len(terms)) for name in self.loss_names}

    # ------------------------------------------------------------------ validation
    def validation_cases(self) -> list[dict]:
        """The held-out cases (at most ``validation_cases_max``), without augmentation, on the device."""
        if self._validation_cases is None:
            from xraysyn.train.sources import case_ids

            cases = []
            for source, dataset in zip(self.config.data.sources, self.datasets):
                index_of = {c: i for i, c in enumerate(case_ids(source, dataset))}
                for case in self.split.validation[source.path]:
                    hu, bone, affine = dataset.load_case(index_of[case])
                    cases.append({"ct_hu": hu[None].float().to(self.device), "bone": bone[None].float().to(self.device),
                                  "world_from_voxel": affine[None].float().to(self.device), "id": case})
            self._validation_cases = cases[:self.config.data.validation_cases_max]
        return self._validation_cases

    def _validation_angles(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.config.validation
        azimuth = torch.cat([torch.zeros(1, dtype=torch.float64),
                             torch.linspace(-v.max_azimuth_deg, v.max_azimuth_deg, v.views, dtype=torch.float64)])
        return azimuth[None], torch.zeros_like(azimuth)[None]

    @torch.no_grad()
    def predict_case(self, case: dict) -> dict:
        """Truth and prediction of one validation case at T (view 0) and the T' views (1…)."""
        azimuth, elevation = self._validation_angles()
        poses = view_poses(azimuth.to(self.device), elevation.to(self.device), self.geometry)
        truth = simulate_views(case["ct_hu"], case["bone"], case["world_from_voxel"], poses, self.geometry,
                               mode=self.mode, **self.projector_kwargs)
        normalised = simulated_network_input(truth.thickness[:1], truth.i_atten[:1])
        self.network.eval()
        ct_normalized, predicted_hu, predicted_mask = self.predict_from_radiograph(normalised, case, poses[:1])
        predicted = simulate_views(predicted_hu, predicted_mask, case["world_from_voxel"], poses, self.geometry,
                                   mode=self.mode, **self.projector_kwargs)
        return {"azimuth_deg": azimuth[0], "input": normalised, "truth": truth, "predicted": predicted,
                "ct_normalized": ct_normalized, "true_ct_normalized": self.hu_scale.to_normalized(case["ct_hu"]),
                "mask": predicted_mask, "true_mask": case["bone"]}

    def predict_from_radiograph(self, normalised: torch.Tensor, case: dict, input_poses: torch.Tensor):
        """The network (eval mode) on a normalised radiograph ``(1, 1, rows, cols)`` at ``input_poses (1, 4, 4)``:
        BP into the case's grid, then :func:`~xraysyn.train.stage1.predict_volumes` (a baseline taking the
        radiograph itself overrides this)."""
        network_input = network_input_from_radiograph(normalised, case["world_from_voxel"], input_poses, self.geometry,
                                                      tuple(case["ct_hu"].shape[2:]),
                                                      backend=self.projector_kwargs["backend"])
        return predict_volumes(self.network, network_input, self.hu_scale, self.autocast_dtype)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from xraysyn.metrics import dice, psnr, ssim

        sums: dict[str, float] = {name: 0.0 for name in self.metric_names}
        cases = self.validation_cases()
        for case in cases:
            out = self.predict_case(case)
            pred, true = out["predicted"].line_integral.double(), out["truth"].line_integral.double()
            flat = true.reshape(true.shape[0], -1)
            data_range = (flat.max(dim=1).values - flat.min(dim=1).values).clamp(min=1e-12)
            view_psnr = psnr(pred, true, data_range).clamp(max=100.0)
            view_ssim = ssim(pred, true, data_range)
            sums["psnr_t"] += float(view_psnr[0])
            sums["ssim_t"] += float(view_ssim[0])
            sums["psnr_t_prime"] += float(view_psnr[1:].mean())
            sums["ssim_t_prime"] += float(view_ssim[1:].mean())
            sums["psnr_ct"] += float(psnr(out["ct_normalized"], out["true_ct_normalized"], NORMALISED_CT_RANGE)
                                     .clamp(max=100.0)[0])
            sums["dice_bone"] += float(dice(out["mask"], out["true_mask"], MASK_THRESHOLD)[0])
        return {name: value / max(1, len(cases)) for name, value in sums.items()}

    @torch.no_grad()
    def save_samples(self, path: Path, step: int) -> None:
        from xraysyn.train.figures import save_sample_grid

        cases = self.validation_cases()
        if not cases:
            return
        out = self.predict_case(cases[0])
        pred, true = out["predicted"], out["truth"]
        azimuth = out["azimuth_deg"].tolist()
        first, last = 1, len(azimuth) - 1

        def image(t):
            return t.detach().float().cpu().numpy()

        materials = pred.materials
        rows = [
            ("input", [("normalised input at T", image(out["input"][0, 0]))]),
            ("radiograph −log I", [("predicted T", image(pred.line_integral[0, 0])),
                                   ("true T", image(true.line_integral[0, 0])),
                                   (f"predicted {azimuth[first]:+.0f}°", image(pred.line_integral[first, 0])),
                                   (f"true {azimuth[first]:+.0f}°", image(true.line_integral[first, 0])),
                                   (f"predicted {azimuth[last]:+.0f}°", image(pred.line_integral[last, 0])),
                                   (f"true {azimuth[last]:+.0f}°", image(true.line_integral[last, 0]))]),
            *([("thickness g/cm²", [panel for m, name in enumerate(materials)
                                    for panel in ((f"predicted {name}", image(pred.thickness[0, m])),
                                                  (f"true {name}", image(true.thickness[0, m])))])]
              if materials else []),
            ("coronal slice", [("predicted CT", coronal_slice(out["ct_normalized"][0, 0])),
                               ("true CT", coronal_slice(out["true_ct_normalized"][0, 0])),
                               ("predicted bone", coronal_slice(out["mask"][0, 0])),
                               ("true bone", coronal_slice(out["true_mask"][0, 0]))]),
        ]
        title = "stage 1" if self.stage == STAGE else self.stage
        mode = " (DRR)" if self.mode == "drr" else ""
        save_sample_grid(path, rows, title=f"{title}{mode}, step {step}, validation case {cases[0]['id']}")


def coronal_slice(volume: torch.Tensor):
    """The central coronal slice of a ``(X, Y, Z)`` volume on a RAS+ voxel grid (x towards the patient's right,
    y towards anterior, z towards superior) as a display image: superior up, the patient's right on the
    image's left (radiological convention). Returns a float32 numpy ``(Z, X)`` array."""
    middle = volume.shape[1] // 2
    return volume[:, middle, :].detach().float().cpu().T.flip(0).flip(1).numpy()


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a missing or empty folder; a resume needs a run folder with its config."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a training run folder (no {CONFIG_FILE})")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"--out {str(run_dir)!r} already exists and is not empty; continue that run with "
                          "--resume or choose a new folder")
    parent = run_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {str(run_dir)!r}: cannot create it, {str(parent)!r} is not writable")


def train_prior(config: PriorTrainingConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                progress: bool = True, group: ProcessGroup | None = None, on_step=None, task_class=None,
                read_config=None) -> RunSummary:
    """Train (or resume) a stage-1 run in ``run_dir``; everything is validated before anything is written.

    On resume the saved ``config.yaml`` must equal ``config`` except for ``loop.steps`` (a run may be
    extended), ``loop.device`` and ``data.num_workers``. ``on_step``: see :func:`xraysyn.train.loop.run_training`.
    ``task_class(config, group, datasets, split)`` (default :class:`PriorTask`) and ``read_config(mapping)``
    (default :func:`~xraysyn.train.prior_config.config_from_mapping`): the baselines trained on the same
    simulated data (:mod:`xraysyn.train.baselines`) run through here with their own task and config.
    """
    from xraysyn.atomic import atomic_write
    from xraysyn.train.config_io import read_yaml
    from xraysyn.train.prior_config import config_from_mapping, saved_run_mapping

    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    if resume:
        saved = (read_config or config_from_mapping)(saved_run_mapping(read_yaml(run_dir / CONFIG_FILE)))
        comparable = config.replace(loop__steps=saved.loop.steps, loop__device=saved.loop.device,
                                    data__num_workers=saved.data.num_workers)
        if comparable != saved:
            raise ConfigError(f"--resume: the settings differ from those of the run in {str(run_dir)!r} "
                              "(only --steps, --device and the number of workers may change on resume)")
    group = group if group is not None else start_processes(config.loop.device)
    if config.loop.batch_size % (group.world_size * config.optim.accumulation_steps):
        raise ConfigError(f"the batch size {config.loop.batch_size} is not divisible by the number of processes "
                          f"({group.world_size}) × accumulation steps ({config.optim.accumulation_steps})")
    datasets = open_sources(config.data, config.loop.seed)
    for source, dataset in zip(config.data.sources, datasets):
        if not source.is_phantom and dataset.paths:
            hu, _, _ = dataset.load_case(0)
            if tuple(hu.shape[1:]) != (config.data.volume_size,) * 3:
                raise ConfigError(f"data source {source.path!r}: its shards hold {tuple(hu.shape[1:])} grids, the "
                                  f"config's data.volume_size is {config.data.volume_size} (prepare them with "
                                  f"`xraysyn prepare ct --size {config.data.volume_size}` or change volume_size)")
    if resume:
        split = read_split(run_dir, config.data, datasets)
    else:
        split = make_split(config.data, datasets, config.loop.seed)
        if group.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            text = dump_config(config)
            atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            write_split(split, run_dir)
        group.barrier()
    task = (task_class or PriorTask)(config, group, datasets, split)
    from xraysyn.train.config_io import to_dict

    loop = config.loop
    return run_training(task, run_dir=run_dir, config_dict=to_dict(config), optim=config.optim, steps=loop.steps,
                        batch_size=loop.batch_size, log_every=loop.log_every, validate_every=loop.validate_every,
                        sample_every=loop.sample_every, checkpoint_every=loop.checkpoint_every,
                        keep_last=loop.keep_last, num_workers=config.data.num_workers, group=group, resume=resume,
                        progress=progress, on_step=on_step)
