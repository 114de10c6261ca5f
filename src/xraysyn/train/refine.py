"""Stage 2 as a training run: the 2DRN F with hypernetwork M and the discriminator D learn on real
radiographs behind a frozen 3DPN (paper eq. 11-14); :func:`train_refine` is ``xraysyn train refine``.

Per item: the real radiograph I_in (cropped, ``hypernet.input_size``², bright = attenuating) → the frozen
3DPN (:class:`~xraysyn.train.prior_model.PriorModel`: area-averaged to its detector, normalised, BP at the
input view T) → V_CT, V_mask → CT2Xray thickness maps t_m^CT at T and at a novel view T' → the 2DRN
t_m^ref = up(t_m^CT) + F(t_m^CT; M(I_in)) (eq. 11) → the physics (``radiograph_from_thickness``, eq. 12)
→ the line integral −log I through the display window :func:`~xraysyn.data.input_domain.window_to_unit`,
the same window as the real input's. Each step first updates D (LSGAN: D(real) → 1, D(fake T') → 0),
then F + M on λ_recon ‖I_final^T − I_in‖₁ + λ_GAN (D(I_final^T') − 1)² + λ_bone ‖t_bone^ref − up(t_bone^CT)‖₁.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from xraysyn.data.datasets import RadiographFolderDataset
from xraysyn.data.input_domain import window_to_unit
from xraysyn.data.radiograph import RadiographReadError, load_radiograph
from xraysyn.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig
from xraysyn.physics import ct2xray, radiograph_from_thickness
from xraysyn.train.config_io import ConfigError, read_yaml, to_dict
from xraysyn.train.distributed import ProcessGroup, start_processes
from xraysyn.train.export import file_sha256
from xraysyn.train.gan_losses import lsgan_discriminator_loss, lsgan_generator_loss
from xraysyn.train.loop import CONFIG_FILE, RunSummary, run_training
from xraysyn.train.prior import check_run_dir
from xraysyn.train.prior_model import PriorModel, load_prior
from xraysyn.train.refine_config import RefineTrainingConfig, dump_refine_config, refine_config_from_mapping
from xraysyn.train.sources import ITEM_STREAM, seeded_generator

__all__ = ["RadiographItems", "RefineTask", "train_refine", "scan_radiographs", "STAGE"]

STAGE = "refine"
PRIOR_FILE = "prior.json"
RADIOGRAPHS_FILE = "radiographs.json"
EPOCH_STREAM = 3


def scan_radiographs(config: RefineTrainingConfig) -> tuple[list[Path], list[dict]]:
    """Every radiograph of the sources that decodes (sorted), and those that do not (path and reason)."""
    usable, skipped = [], []
    for source in config.data.sources:
        try:
            folder = RadiographFolderDataset(source.path, size=2)
        except (ValueError, OSError) as error:
            raise ConfigError(f"data source {source.path!r}: {error}") from None
        for path in folder.paths:
            try:
                load_radiograph(path)
                usable.append(path)
            except (RadiographReadError, ValueError, OSError) as error:
                skipped.append({"path": str(path), "reason": str(error).splitlines()[0][:300]})
    if len(usable) < 2:
        raise ConfigError(f"the data sources hold {len(usable)} readable radiograph(s); at least 2 are needed "
                          f"(one to train, one to validate){'; unreadable: ' + str(len(skipped)) if skipped else ''}")
    return usable, skipped


class RadiographItems(Dataset):
    """Training items by global position ``p``: the radiograph of the seeded epoch order and the views T, T'
    drawn from ``(seed, p)``."""

    def __init__(self, paths: list[Path], size: int, crop_mode: str, config: RefineTrainingConfig):
        self.paths = [Path(p) for p in paths]
        self.size, self.crop_mode = size, crop_mode
        self.seed = config.loop.seed
        self.views = config.views

    def __len__(self) -> int:
        return 2**62

    def case_of(self, position: int) -> int:
        n = len(self.paths)
        order = torch.randperm(n, generator=seeded_generator(self.seed, EPOCH_STREAM, position // n))
        return int(order[position % n])

    def load(self, index: int) -> torch.Tensor:
        from xraysyn.data.radiograph import crop_and_resize

        radiograph = load_radiograph(self.paths[index])
        image, _ = crop_and_resize(radiograph.image, self.size, mode=self.crop_mode)
        return torch.from_numpy(image)[None].float()

    def __getitem__(self, position: int) -> dict:
        generator = seeded_generator(self.seed, ITEM_STREAM, int(position))
        u = torch.rand(4, generator=generator, dtype=torch.float64) * 2 - 1
        limits = torch.tensor([self.views.input_max_deg, self.views.target_max_deg], dtype=torch.float64)
        return {"image": self.load(self.case_of(int(position))),
                "azimuth_deg": (u[:2] * limits).float(), "elevation_deg": (u[2:] * limits).float(),
                "position": torch.tensor(int(position))}


class RefineTask:
    """F + M and D, their optimisers, the frozen 3DPN, the items and the validation of a stage-2 run."""

    stage = STAGE
    loss_names = ("total", "recon", "gan_g", "bone", "gan_d")
    metric_names = ("l1_t", "psnr_t", "ssim_t")
    best_metric = "psnr_t"

    def __init__(self, config: RefineTrainingConfig, group: ProcessGroup, prior: PriorModel, train_paths: list,
                 validation_paths: list):
        self.config, self.group, self.prior = config, group, prior
        self.device = group.device
        network_config = RefineNetConfig.preset(config.network, static_hyper=config.static_hyper)
        if network_config.thickness_size != prior.geometry.detector_shape[0]:
            raise ConfigError(f"the 2DRN preset {config.network!r} takes {network_config.thickness_size}² thickness "
                              f"maps, the 3DPN projects {prior.geometry.detector_shape[0]}²; pick the matching preset")
        self.image_size = network_config.hypernet.input_size
        torch.manual_seed(config.loop.seed)
        self.refine = RefineNet2D(network_config).to(self.device)
        self.discriminator = PatchDiscriminator(DiscriminatorConfig.preset(config.network)).to(self.device)
        if group.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.refine_ddp = torch.nn.parallel.DistributedDataParallel(self.refine, device_ids=ids)
            self.discriminator_ddp = torch.nn.parallel.DistributedDataParallel(self.discriminator, device_ids=ids)
        else:
            self.refine_ddp, self.discriminator_ddp = self.refine, self.discriminator
        optim = config.optim
        self.optimizer_g = torch.optim.Adam(self.refine.parameters(), lr=optim.learning_rate, betas=optim.adam_betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=optim.learning_rate,
                                            betas=optim.adam_betas)
        self.train_paths, self.validation_paths = train_paths, validation_paths
        self._items = RadiographItems(train_paths, self.image_size, config.data.crop_mode, config)
        self._validation = None

    # ------------------------------------------------------------------ the loop's interface
    def items(self) -> RadiographItems:
        return self._items

    def collate(self, items: list) -> dict:
        return default_collate(items)

    def collate_to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def epoch_of_step(self, step: int) -> int:
        return max(0, step * self.config.loop.batch_size - 1) // len(self.train_paths)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"refine": self.refine, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"refine": self.optimizer_g, "discriminator": self.optimizer_d}

    # ------------------------------------------------------------------ the computation
    @torch.no_grad()
    def prior_thickness(self, image: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` radiographs and ``(N, V)`` views → the 3DPN's thickness maps ``(N·V, 2, d, d)``."""
        from xraysyn.train.stage1 import network_input_from_radiograph, predict_volumes, view_poses
        from xraysyn.data.input_domain import normalise_radiograph

        prior = self.prior
        poses = view_poses(azimuth, elevation, prior.geometry)
        views = azimuth.shape[1]
        small = F.interpolate(image, size=prior.geometry.detector_shape, mode="area")
        affine = prior.world_from_voxel()
        volume_input = network_input_from_radiograph(normalise_radiograph(small), affine, poses[0::views],
                                                     prior.geometry, (prior.volume_size,) * 3)
        _, hu, mask = predict_volumes(prior.network, volume_input, prior.hu_scale)
        return ct2xray(hu, mask, affine, poses, prior.geometry, num_samples=self.config.num_samples).thickness

    def synthesise(self, thickness_ct: torch.Tensor, radiograph: torch.Tensor, model=None):
        """``t_m^CT (N, 2, d, d)`` and the matching radiographs ``(N, 1, S, S)`` → ``(t_ref, display)``:
        refined thickness ``(N, 2, S, S)`` g/cm² and the windowed −log I ``(N, 1, S, S)`` in [0, 1]."""
        model = model if model is not None else self.refine
        refined = model(thickness_ct, radiograph)
        line_integral = radiograph_from_thickness(refined).line_integral
        return refined, window_to_unit(line_integral)

    def step(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        weights = self.config.loss
        count = len(micro_batches)
        self.refine_ddp.train()
        self.discriminator_ddp.train()
        prepared = []
        for batch in micro_batches:
            image = batch["image"]
            thickness = self.prior_thickness(image, batch["azimuth_deg"], batch["elevation_deg"])
            repeated = image.repeat_interleave(2, dim=0)  # T and T' of each item share its radiograph (M's input)
            refined, display = self.synthesise(thickness, repeated, self.refine_ddp)
            prepared.append((window_to_unit(image), thickness, refined, display))
        # D first: real radiographs → 1, synthesised novel views T' → 0
        self.optimizer_d.zero_grad(set_to_none=True)
        d_losses = []
        for real, _, _, display in prepared:
            fake = display[1::2].detach()
            scores = self.discriminator_ddp(torch.cat([real, fake]))
            d_loss = lsgan_discriminator_loss(scores[:real.shape[0]], scores[real.shape[0]:])
            (d_loss / count).backward()
            d_losses.append(float(d_loss.detach()))
        if self.config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.config.optim.grad_clip_norm)
        self.optimizer_d.step()
        # then F + M
        self.optimizer_g.zero_grad(set_to_none=True)
        terms = {"total": 0.0, "recon": 0.0, "gan_g": 0.0, "bone": 0.0}
        for real, thickness, refined, display in prepared:
            recon = (display[0::2] - real).abs().mean()
            gan = lsgan_generator_loss(self.discriminator_ddp(display[1::2]))
            upsampled_bone = F.interpolate(thickness[:, :1], size=refined.shape[2:], mode="bilinear",
                                           align_corners=False)
            bone = (refined[:, :1] - upsampled_bone).abs().mean()
            total = weights.recon * recon + weights.gan * gan + weights.bone * bone
            (total / count).backward()
            for name, value in (("total", total), ("recon", recon), ("gan_g", gan), ("bone", bone)):
                terms[name] += float(value.detach()) / count
        self.discriminator.zero_grad(set_to_none=True)  # D's gradients from the G loss are not used
        if self.config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.refine.parameters(), self.config.optim.grad_clip_norm)
        self.optimizer_g.step()
        terms["gan_d"] = sum(d_losses) / count
        return terms

    # ------------------------------------------------------------------ validation
    def validation_images(self) -> list[torch.Tensor]:
        if self._validation is None:
            items = RadiographItems(self.validation_paths, self.image_size, self.config.data.crop_mode, self.config)
            count = min(len(self.validation_paths), self.config.data.validation_cases_max)
            self._validation = [items.load(i)[None].to(self.device) for i in range(count)]
        return self._validation

    @torch.no_grad()
    def predict(self, image: torch.Tensor, azimuth_deg: list[float]) -> dict:
        """One radiograph ``(1, 1, S, S)`` at T = frontal and the given novel azimuths: 3DPN thickness,
        refined thickness and windowed displays, view 0 = T."""
        azimuth = torch.tensor([[0.0, *azimuth_deg]], device=self.device)
        thickness = self.prior_thickness(image, azimuth, torch.zeros_like(azimuth))
        self.refine.eval()
        refined, display = self.synthesise(thickness, image.expand(thickness.shape[0], -1, -1, -1))
        unrefined = window_to_unit(radiograph_from_thickness(thickness).line_integral)
        return {"thickness_ct": thickness, "refined": refined, "display": display, "unrefined": unrefined,
                "real": window_to_unit(image)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from xraysyn.metrics import psnr, ssim

        sums = {name: 0.0 for name in self.metric_names}
        images = self.validation_images()
        for image in images:
            out = self.predict(image, [])
            fake, real = out["display"][:1].double(), out["real"].double()
            sums["l1_t"] += float((fake - real).abs().mean())
            sums["psnr_t"] += float(psnr(fake, real, 1.0).clamp(max=100.0)[0])
            sums["ssim_t"] += float(ssim(fake, real, 1.0)[0])
        return {name: value / max(1, len(images)) for name, value in sums.items()}

    @torch.no_grad()
    def save_samples(self, path: Path, step: int) -> None:
        from xraysyn.train.figures import save_sample_grid

        images = self.validation_images()
        if not images:
            return
        limit = self.config.views.target_max_deg
        out = self.predict(images[0], [-limit, limit])

        def array(t):
            return t.detach().float().cpu().numpy()

        rows = [
            ("input", [("real I_in (windowed)", array(out["real"][0, 0])),
                       ("synthesised T", array(out["display"][0, 0])),
                       ("3DPN only T", array(out["unrefined"][0, 0]))]),
            ("novel views", [(f"synthesised {a:+.0f}°", array(out["display"][i, 0]))
                             for i, a in ((1, -limit), (2, limit))]
             + [(f"3DPN only {a:+.0f}°", array(out["unrefined"][i, 0])) for i, a in ((1, -limit), (2, limit))]),
            ("thickness g/cm² at T", [("3DPN bone", array(out["thickness_ct"][0, 0])),
                                      ("refined bone", array(out["refined"][0, 0])),
                                      ("3DPN tissue", array(out["thickness_ct"][0, 1])),
                                      ("refined tissue", array(out["refined"][0, 1]))]),
        ]
        save_sample_grid(path, rows, title=f"stage 2, step {step}")


def _split(paths: list[Path], config: RefineTrainingConfig) -> tuple[list[Path], list[Path]]:
    n_val = min(len(paths) - 1, max(1, round(config.data.validation_fraction * len(paths))))
    order = torch.randperm(len(paths), generator=seeded_generator(config.loop.seed, 2, 7)).tolist()
    held = set(order[:n_val])
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def train_refine(config: RefineTrainingConfig, prior_path: str | os.PathLike | None, run_dir: str | os.PathLike, *,
                 resume: bool = False, progress: bool = True, group: ProcessGroup | None = None,
                 on_step=None) -> RunSummary:
    """Train (or resume) a stage-2 run; everything is validated before anything is written.

    ``prior_path``: the 3DPN export (a new run); on resume the run's own record of it is used and the file
    must still have the same SHA-256.
    """
    from xraysyn.atomic import atomic_write

    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    if resume:
        saved = refine_config_from_mapping(read_yaml(run_dir / CONFIG_FILE))
        if config.replace(loop__steps=saved.loop.steps, loop__device=saved.loop.device,
                          data__num_workers=saved.data.num_workers) != saved:
            raise ConfigError(f"--resume: the settings differ from those of the run in {str(run_dir)!r} "
                              "(only --steps, --device and the number of workers may change on resume)")
        record = json.loads((run_dir / PRIOR_FILE).read_text(encoding="utf-8"))
        prior_path = Path(record["path"])
        if not prior_path.is_file() or file_sha256(prior_path) != record["sha256"]:
            raise ConfigError(f"--resume: the 3DPN export {str(prior_path)!r} the run was trained with is missing "
                              "or has changed (SHA-256 differs)")
        listing = json.loads((run_dir / RADIOGRAPHS_FILE).read_text(encoding="utf-8"))
        train_paths = [Path(p) for p in listing["train"]]
        validation_paths = [Path(p) for p in listing["validation"]]
        skipped = listing["skipped"]
    else:
        if prior_path is None:
            raise ConfigError("--prior is required: a 3DPN export made by `xraysyn export` of a `train prior` run")
        if not config.data.sources:
            raise ConfigError("--data is required: one or more folders of real radiographs")
        prior_path = Path(prior_path).resolve()
        usable, skipped = scan_radiographs(config)
        train_paths, validation_paths = _split(usable, config)
    group = group if group is not None else start_processes(config.loop.device)
    if config.loop.batch_size % (group.world_size * config.optim.accumulation_steps):
        raise ConfigError(f"the batch size {config.loop.batch_size} is not divisible by the number of processes "
                          f"({group.world_size}) × accumulation steps ({config.optim.accumulation_steps})")
    from xraysyn.train.export import ExportError

    try:
        prior = load_prior(prior_path, group.device)
    except ExportError as error:
        raise ConfigError(f"--prior: {error}") from None
    task = RefineTask(config, group, prior, train_paths, validation_paths)
    if not resume and group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = dump_refine_config(config)
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        prior_record = json.dumps({"path": str(prior_path), "sha256": file_sha256(prior_path)}, indent=1)
        atomic_write(run_dir / PRIOR_FILE, lambda tmp: tmp.write_text(prior_record, encoding="utf-8"))
        listing = json.dumps({"train": [str(p) for p in train_paths], "validation": [str(p) for p in validation_paths],
                              "skipped": skipped}, indent=1)
        atomic_write(run_dir / RADIOGRAPHS_FILE, lambda tmp: tmp.write_text(listing, encoding="utf-8"))
    if skipped and group.is_main and not resume:
        print(f"skipped {len(skipped)} unreadable radiograph(s), listed in {run_dir / RADIOGRAPHS_FILE}",
              file=sys.stderr)
    group.barrier()
    loop = config.loop
    return run_training(task, run_dir=run_dir, config_dict=to_dict(config), optim=config.optim, steps=loop.steps,
                        batch_size=loop.batch_size, log_every=loop.log_every, validate_every=loop.validate_every,
                        sample_every=loop.sample_every, checkpoint_every=loop.checkpoint_every,
                        keep_last=loop.keep_last, num_workers=config.data.num_workers, group=group, resume=resume,
                        progress=progress, on_step=on_step)
