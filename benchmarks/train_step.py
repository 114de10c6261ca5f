"""Training-step benchmark of stage 1 (the 3DPN) and stage 2 (the 2DRN): one JSON line per (preset, variant).

    python benchmarks/train_step.py [--stage prior|refine|prior_drr|refiner2d|x2ct] [--device cpu|cuda]
        [--presets small,cpu64]
        [--variants float32,bf16] [--batch-size B] [--reps 3] [--warmup 1] [--loader-batches 8] [--threads T]

``--stage prior`` (the default) times :class:`~xraysyn.train.prior.PriorTask` of ``xraysyn train prior``,
``--stage refine`` :class:`~xraysyn.train.refine.RefineTask` of ``xraysyn train refine`` (see "Stage 2"
below). Every record names its ``stage``.

Stage 1
-------
Defaults: on CPU the presets ``small`` and ``cpu64``, variant ``float32``; on CUDA the preset ``paper``
(batch 2, 128³ volumes, 128² detector) in both variants, ``float32`` (``loop.bf16`` false) and ``bf16``
(``loop.bf16`` true: bf16 autocast of the network, the projector and losses in float32; CUDA only).
Cases come from the preset's data sources (procedural chest phantoms); nothing is downloaded.

Each record runs in a fresh Python process (so its peak memory is its own) and does, in this order:

1. **Steps as the loop runs them** (:mod:`xraysyn.train.loop`): a DataLoader over
   :meth:`PriorTask.items() <xraysyn.train.prior.PriorTask.items>` with the loop's settings (a
   :class:`~xraysyn.train.sources.GlobalBatchSampler`, the preset's ``data.num_workers``, pinned memory on
   CUDA, prefetch 2), then per step: wait for the batch and move it to the device, set the learning rate,
   :meth:`PriorTask.step`. ``--warmup`` untimed steps (worker start, Triton autotuning), then ``--reps``
   timed ones: ``step_s_*`` (the whole step, what the loop's ``s_per_step`` shows), ``compute_s_median``
   (``PriorTask.step`` alone) and ``data_wait_s_median`` (the wait for the batch), seconds.
2. **Peak memory** of those steps, ``peak_mib`` (MiB): on CUDA ``torch.cuda.max_memory_allocated`` after
   ``reset_peak_memory_stats`` before the first step; on CPU the growth of the training process's peak
   resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the steps minus before them; DataLoader
   workers are other processes: the largest one's peak resident set, shared pages included, is
   ``loader_worker_peak_rss_mib`` from ``RUSAGE_CHILDREN`` after they exited). ``peak_memory`` names the method.
3. **The split of a step** (``split_s``, seconds, median over ``--reps``; CUDA synchronised before and after
   each part), each part timed on its own on one batch, as :func:`xraysyn.train.stage1.stage1_losses` runs it:

   * ``data``: one batch from ``TrainingItems`` through the loop's DataLoader settings but in the training
     process (``num_workers=0``), collated and moved to the device, cases not seen before (their phantom
     generated / shard read, as in a run's first epoch); ``data_cached`` the same positions again (the
     case from the per-process case cache, the augmentation and views drawn again, as from epoch 2 on);
   * ``targets``: :func:`view_poses` and :func:`simulate_targets` (CT2Xray of the true CT at T and T');
   * ``bp``: :func:`simulated_network_input` (the perturbed, normalised input radiograph) and
     :func:`network_input_from_radiograph` (BP, eq. 7);
   * ``network_fwd_bwd``: :func:`predict_volumes` (under the variant's autocast) and its backward, seeded
     with the gradient that the full loss gives its outputs (computed once, untimed);
   * ``loss_projector_fwd_bwd``: CT2Xray of the predicted CT and bone mask at T and T' with the projection
     terms of eq. 10, forward and backward to the prediction (the differentiable projector in the loss);
   * ``optimizer``: gradient clipping (when configured) and the Adam step;
   * ``other``: ``compute_s_median`` minus the five compute parts above (the CT and mask losses, zeroing
     the gradients, Python overhead; near zero, negative within the timing noise).
4. **Loader throughput**: a fresh DataLoader with the preset's ``num_workers`` over ``--loader-batches``
   batches of new cases; ``loader_first_batch_s`` (worker start and the first batch) and
   ``loader_cases_per_s`` over the remaining batches (all of them when only one), against
   ``step_cases_per_s`` = batch / ``compute_s_median``; ``loader_to_step_ratio`` = their ratio (≥ 1: the
   workers keep up with the step, below 1 the step waits for data). Measured while nothing else runs in
   this process; in training the workers share the CPU with the step. With ``num_workers`` 0 the data is
   loaded in the training process and nothing overlaps (``step_s`` ≈ ``data_wait`` + ``compute``).

Also per record: the preset's sizes, ``parameters`` (trainable parameters of the 3DPN) and ``weights_mib``
(their float32 size), the last step's ``loss_total``, torch threads and the 1-minute load average at the
start (other processes share the CPU). A failure of a record (out of memory, a bad preset override, a
crash of its process) prints that record with ``"error"`` and the benchmark goes on to the next one;
the exit status is 1 when every record failed.

Stage 2
-------
``--stage refine`` with the stage-2 presets (:mod:`xraysyn.train.refine_config`; defaults ``small,cpu64``
on CPU, ``paper`` on CUDA; variant ``float32`` only: stage 2 has no bf16 path). Nothing is downloaded and no
export file is needed: the frozen 3DPN is a randomly initialised :class:`~xraysyn.models.PriorNet3D` of the
stage-1 preset of the same name (the one whose detector size the 2DRN preset refines; its values do not
change the cost of a step), and the "real" radiographs are :data:`RENDERED_RADIOGRAPHS` chest phantoms
rendered by CT2Xray at the 2DRN's input size, min-max windowed and written as 8-bit PNG to a temporary folder
(their rendering is not timed). The record runs, as for stage 1:

1. **Steps as the loop runs them**: the loop's DataLoader over :meth:`RefineTask.items()
   <xraysyn.train.refine.RefineTask.items>`, the learning rate of both optimisers set, :meth:`RefineTask.step`
   (D's update, then F + M's); ``step_s_*``, ``compute_s_median``, ``data_wait_s_median`` as for stage 1.
2. **Peak memory** ``peak_mib``, as for stage 1.
3. **The split of a step** ``split_s`` (seconds, median over ``--reps``, each part on its own on one batch):

   * ``data``: one batch through the loop's DataLoader settings in the training process (PNG decoded,
     cropped / resized, collated, moved to the device);
   * ``prior_3dpn``: the frozen 3DPN without gradients — the radiograph area-averaged to its detector,
     normalised, BP at T, the network forward (:func:`prior_volumes`);
   * ``prior_ct2xray``: the CT2Xray thickness maps t_m^CT of its CT and bone mask at T and T', no gradients
     (:func:`prior_thickness_from`);
   * ``d_step``: D on the real radiographs and the detached novel views T', the LSGAN loss, its backward,
     gradient clipping (when configured) and D's Adam step;
   * ``refine_fwd_bwd``: the 2DRN F + M forward (eq. 11) and its backward, seeded with the gradient that the
     generator loss gives t_m^ref (computed once, untimed);
   * ``g_loss_fwd_bwd``: from t_m^ref to the generator loss and back to t_m^ref: the physics (eq. 12), the
     display window, D on T', the L1, LSGAN and bone terms (eq. 13), and clearing D's gradients;
   * ``g_optimizer``: gradient clipping (when configured) and the Adam step of F + M;
   * ``other``: ``compute_s_median`` minus the six compute parts (Python overhead, timing noise).
4. **Loader throughput**, as for stage 1 (``loader_*``, ``step_cases_per_s``, ``loader_to_step_ratio``).

Also per record: ``image_size`` (the radiograph edge, pixels), ``thickness_size`` (the 3DPN's detector edge),
``volume_size``, ``num_samples`` (per ray of the 3DPN's CT2Xray), ``parameters`` (F + M, trainable),
``discriminator_parameters``, ``prior_parameters`` (frozen), ``weights_mib`` (F + M and D in float32),
``loss_total`` (F + M's) and ``loss_gan_d`` of the last step, threads, load average, torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import torch
from PIL import Image
from torch.utils.data import DataLoader

import torch.nn.functional as F

from xraysyn.data.input_domain import normalise_radiograph, window_to_unit
from xraysyn.data.phantom import make_chest_phantom
from xraysyn.models import PriorNet3D
from xraysyn.models.normalization import HUScale
from xraysyn.models.refine2d import RefineNetConfig
from xraysyn.physics import ct2xray, radiograph_from_thickness
from xraysyn.train.distributed import ProcessGroup
from xraysyn.train.loop import ignore_interrupts_in_worker, learning_rate_factor
from xraysyn.train.gan_losses import lsgan_discriminator_loss, lsgan_generator_loss
from xraysyn.train.losses import ct_loss, mask_loss, soft_dice_loss, stage1_generator_loss, xray_view_loss
from xraysyn.train.prior import PriorTask
from xraysyn.train.refine import RefineTask
from xraysyn.train.prior_config import PRESETS, SimulationConfig, preset_config
from xraysyn.train.prior_model import PriorModel
from xraysyn.train.refine_config import REFINE_PRESETS, refine_preset
from xraysyn.train.sources import GlobalBatchSampler, make_split, open_sources
from xraysyn.train.stage1 import (
    VIEWS_PER_VOLUME,
    network_input_from_radiograph,
    predict_volumes,
    simulate_targets,
    simulated_network_input,
    split_views,
    view_poses,
)

#: Variant name → ``loop.bf16``.
VARIANTS = {"float32": False, "bf16": True}
#: Stage → its presets.
STAGE_PRESETS = {"prior": PRESETS, "refine": REFINE_PRESETS,
                 # the ablation baselines trained on simulated CT data (refine_nom is `--stage refine` with
                 # static_hyper): whole-step time, memory and loader rate, no split into parts
                 "prior_drr": PRESETS, "refiner2d": PRESETS, "x2ct": PRESETS}
BASELINE_STAGES = ("prior_drr", "refiner2d", "x2ct")
DEFAULT_PRESETS = {"cpu": "small,cpu64", "cuda": "paper"}
DEFAULT_VARIANTS = {("prior", "cpu"): "float32", ("prior", "cuda"): "float32,bf16", ("refine", "cpu"): "float32",
                    ("refine", "cuda"): "float32",
                    **{(stage, device): "float32" for stage in BASELINE_STAGES for device in ("cpu", "cuda")}}
#: Phantom radiographs rendered as the stage-2 benchmark's "real" input (any count >= 2 costs the same per step).
RENDERED_RADIOGRAPHS = 8
#: Seed of the first rendered phantom and of the random 3DPN's weights.
RENDER_SEED = 1000
PRIOR_SEED = 0
BYTES_PER_MIB = 2**20
#: Units of ``ru_maxrss``: KiB on Linux, bytes on macOS.
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024
#: Batches the loop's DataLoader loads ahead per worker (as :func:`xraysyn.train.loop.run_training`).
PREFETCH_FACTOR = 2
SECONDS_DIGITS = 4
#: This script, run once per record in a fresh process.
SCRIPT = os.path.abspath(__file__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=tuple(STAGE_PRESETS), default="prior",
                        help="prior: the 3DPN step of `train prior` (default); refine: the 2DRN step of `train refine`")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", help=f"comma list of {', '.join(PRESETS)} (default: small,cpu64 on CPU, "
                                          "paper on CUDA)")
    parser.add_argument("--variants", help="comma list of float32, bf16 (stage 1 on CUDA only); default float32, "
                                           "and float32,bf16 for stage 1 on CUDA")
    parser.add_argument("--batch-size", type=int, help="override the preset's loop.batch_size")
    parser.add_argument("--reps", type=int, default=3, help="timed steps (and repetitions of each part)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--loader-batches", type=int, default=8, help="batches of the loader throughput")
    parser.add_argument("--threads", type=int, help="torch (and numba) CPU threads (default: torch's)")
    parser.add_argument("--record", help=argparse.SUPPRESS)  # internal: PRESET:VARIANT in this process
    args = parser.parse_args(argv)
    args.presets = _comma_list(parser, "--presets", args.presets or DEFAULT_PRESETS[args.device],
                               STAGE_PRESETS[args.stage])
    args.variants = _comma_list(parser, "--variants", args.variants or DEFAULT_VARIANTS[args.stage, args.device],
                                VARIANTS)
    if args.stage == "refine" and "bf16" in args.variants:
        parser.error("--variants bf16: stage 2 (--stage refine) trains in float32 only")
    if args.device == "cpu" and "bf16" in args.variants:
        parser.error("--variants bf16: bf16 autocast runs on CUDA only (the CPU trains in float32); use --device cuda")
    for name in ("reps", "loader_batches") + (("batch_size",) if args.batch_size is not None else ()) \
            + (("threads",) if args.threads is not None else ()):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    return args


def _comma_list(parser, flag: str, text: str, allowed) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        parser.error(f"{flag} must be a comma list of {', '.join(allowed)}, got {text!r}")
    return values


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """``(seconds, fn())``, CUDA synchronised before and after (``time.perf_counter``)."""
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


def median_time(fn, device: torch.device, reps: int) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(reps))


def make_task(preset: str, variant: str, device: torch.device, batch_size: int | None) -> PriorTask:
    """The preset's :class:`PriorTask` on ``device`` in one process (its sources opened, its split drawn)."""
    config = preset_config(preset).replace(loop__bf16=VARIANTS[variant], loop__device=device.type)
    if batch_size is not None:
        config = config.replace(loop__batch_size=batch_size)
    datasets = open_sources(config.data, config.loop.seed)
    split = make_split(config.data, datasets, config.loop.seed)
    return PriorTask(config, ProcessGroup(device=device), datasets, split)


def make_loader(task: PriorTask | RefineTask, items, *, start_step: int, steps: int, num_workers: int) -> DataLoader:
    """A DataLoader with the settings of :func:`xraysyn.train.loop.run_training` over steps
    ``start_step … steps − 1`` of one process."""
    config = task.config
    sampler = GlobalBatchSampler(config.loop.batch_size, steps, start_step, 0, 1, config.optim.accumulation_steps)
    return DataLoader(items, batch_sampler=sampler, num_workers=num_workers, collate_fn=task.collate,
                      pin_memory=task.device.type == "cuda", persistent_workers=False,
                      worker_init_fn=ignore_interrupts_in_worker if num_workers else None,
                      prefetch_factor=PREFETCH_FACTOR if num_workers else None)


def run_steps(task: PriorTask | RefineTask, warmup: int, reps: int) -> dict:
    """Steps 0 … warmup + reps − 1 as the loop runs them; the timings of the last ``reps``."""
    config, device = task.config, task.device
    steps = warmup + reps
    loader = make_loader(task, task.items(), start_step=0, steps=steps, num_workers=config.data.num_workers)
    iterator = iter(loader)
    waits, computes, totals, losses, batches = [], [], [], {}, []
    for step in range(steps):
        wait, batches = timed(lambda: [task.collate_to_device(next(iterator)) for _ in
                                       range(config.optim.accumulation_steps)], device)
        for optimizer in task.optimizers().values():  # as the loop: every optimiser on the schedule
            for group in optimizer.param_groups:
                group["lr"] = config.optim.learning_rate * learning_rate_factor(step, steps, config.optim)
        compute, losses = timed(lambda: task.step(batches, step), device)
        if step >= warmup:
            waits.append(wait)
            computes.append(compute)
            totals.append(wait + compute)
    del iterator, loader
    return {"step_s": totals, "compute_s": statistics.median(computes), "data_wait_s": statistics.median(waits),
            "losses": losses}


def data_times(task: PriorTask | RefineTask, first_step: int, reps: int) -> tuple[float, float, dict]:
    """Median seconds of one batch of new cases and of the same positions again, in this process, and the
    last batch (on the device)."""
    items = task.items()
    cold, cached, batch = [], [], None
    for rep in range(reps):
        step = first_step + rep

        def load():
            loader = make_loader(task, items, start_step=step, steps=step + 1, num_workers=0)
            return task.collate_to_device(next(iter(loader)))

        seconds, batch = timed(load, task.device)
        cold.append(seconds)
        cached.append(timed(load, task.device)[0])
    return statistics.median(cold), statistics.median(cached), batch


def split_times(task: PriorTask, batch: dict, reps: int) -> dict:
    """Median seconds of each compute part of a step on ``batch`` (see the module docstring)."""
    config, device, geometry, kwargs = task.config, task.device, task.geometry, task.projector_kwargs
    model = task.model
    model.train()
    ct_hu, bone, affine = batch["ct_hu"], batch["bone"], batch["world_from_voxel"]
    perturbations = task.perturbations(batch["position"])

    def targets():
        poses = view_poses(batch["azimuth_deg"], batch["elevation_deg"], geometry)
        return poses, simulate_targets(ct_hu, bone, affine, poses, geometry, **kwargs)

    poses, target = targets()
    thickness_t, _ = split_views(target.thickness)
    i_atten_t, _ = split_views(target.i_atten)

    def backprojection():
        normalised = simulated_network_input(thickness_t, i_atten_t, perturbations).to(ct_hu.dtype)
        return network_input_from_radiograph(normalised, affine, poses[0::VIEWS_PER_VOLUME], geometry,
                                             tuple(ct_hu.shape[2:]), backend=kwargs.get("backend", "auto"))

    network_input = backprojection()

    def xray_terms(predicted_hu, predicted_mask):
        predicted = ct2xray(predicted_hu, predicted_mask, affine, poses, geometry, **kwargs)
        image_t, image_t_prime = split_views(predicted.image)
        target_image_t, target_image_t_prime = split_views(target.image)
        pred_thickness_t, pred_thickness_t_prime = split_views(predicted.thickness)
        target_thickness_t, target_thickness_t_prime = split_views(target.thickness)
        return (xray_view_loss(image_t, target_image_t, pred_thickness_t, target_thickness_t),
                xray_view_loss(image_t_prime, target_image_t_prime, pred_thickness_t_prime, target_thickness_t_prime))

    # the gradient of the full loss (eq. 9) at the network's outputs, to seed the network's backward
    outputs = predict_volumes(model, network_input, task.hu_scale, task.autocast_dtype)
    leaves = [t.detach().requires_grad_(True) for t in outputs]
    ct_normalized, predicted_hu, predicted_mask = leaves
    xray_t, xray_t_prime = xray_terms(predicted_hu, predicted_mask)
    total = stage1_generator_loss(config.loss, ct=ct_loss(ct_normalized, task.hu_scale.to_normalized(ct_hu)),
                                  mask=mask_loss(predicted_mask, bone), mask_dice=soft_dice_loss(predicted_mask, bone),
                                  xray_t=xray_t, xray_t_prime=xray_t_prime)
    total.backward()
    seeds = [leaf.grad for leaf in leaves]
    del outputs, leaves, ct_normalized, predicted_hu, predicted_mask, total

    def network():
        task.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(predict_volumes(model, network_input, task.hu_scale, task.autocast_dtype), seeds)

    prediction = predict_volumes(model, network_input, task.hu_scale, task.autocast_dtype)
    hu_detached, mask_detached = prediction[1].detach(), prediction[2].detach()
    del prediction

    def loss_projector():
        hu_leaf, mask_leaf = hu_detached.detach().requires_grad_(True), mask_detached.detach().requires_grad_(True)
        terms = xray_terms(hu_leaf, mask_leaf)
        (config.loss.xray * (terms[0] + terms[1])).backward()

    def optimizer_step():
        if config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
        task.optimizer.step()

    parts = {"targets": median_time(targets, device, reps), "bp": median_time(backprojection, device, reps),
             "network_fwd_bwd": median_time(network, device, reps),
             "loss_projector_fwd_bwd": median_time(loss_projector, device, reps)}
    network()  # gradients for the optimiser's step
    parts["optimizer"] = median_time(optimizer_step, device, reps)
    return parts


def loader_throughput(task: PriorTask | RefineTask, first_step: int, batches: int) -> tuple[float, float]:
    """``(first_batch_s, cases_per_s)`` of a DataLoader with the preset's workers over ``batches`` batches."""
    config, device = task.config, task.device
    micro = config.optim.accumulation_steps
    steps = -(-batches // micro)  # whole steps of micro-batches
    loader = make_loader(task, task.items(), start_step=first_step, steps=first_step + steps,
                         num_workers=config.data.num_workers)
    _synchronize(device)
    start = time.perf_counter()
    marks, cases = [], []
    for batch in loader:
        batch = task.collate_to_device(batch)
        _synchronize(device)
        marks.append(time.perf_counter())
        cases.append(int(batch["position"].shape[0]))
        if len(marks) == batches:
            break
    del loader
    first = marks[0] - start
    if len(marks) == 1:
        return first, cases[0] / first
    return first, sum(cases[1:]) / (marks[-1] - marks[0])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _seconds(value: float) -> float:
    return round(value, SECONDS_DIGITS)


def measure_steps(task: PriorTask | RefineTask, args) -> tuple[dict, dict]:
    """:func:`run_steps` with the peak memory of those steps: ``(steps, record fields)``."""
    device = task.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps = run_steps(task, args.warmup, args.reps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
        method = "torch.cuda.max_memory_allocated during the steps"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * MAXRSS_BYTES / BYTES_PER_MIB
        method = "growth of the training process's peak RSS (getrusage ru_maxrss) over the steps, workers excluded"
    step_s = steps["step_s"]
    return steps, {"step_s_median": _seconds(statistics.median(step_s)), "step_s_min": _seconds(min(step_s)),
                   "step_s_max": _seconds(max(step_s)), "compute_s_median": _seconds(steps["compute_s"]),
                   "data_wait_s_median": _seconds(steps["data_wait_s"]), "peak_mib": round(peak, 1),
                   "peak_memory": method}


def loader_fields(task: PriorTask | RefineTask, first_step: int, batches: int, compute_s: float) -> dict:
    """The loader throughput against the step rate (record fields, see the module docstring)."""
    first_s, loader_rate = loader_throughput(task, first_step, batches)
    step_rate = task.config.loop.batch_size / compute_s
    fields = {"loader_batches": batches, "loader_first_batch_s": _seconds(first_s),
              "loader_cases_per_s": round(loader_rate, 3), "step_cases_per_s": round(step_rate, 3),
              "loader_to_step_ratio": round(loader_rate / step_rate, 3)}
    if task.config.data.num_workers:
        worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * MAXRSS_BYTES / BYTES_PER_MIB
        fields["loader_worker_peak_rss_mib"] = round(worker_rss, 1)
    return fields


def _float32_mib(count: int) -> float:
    return round(count * torch.finfo(torch.float32).bits / 8 / BYTES_PER_MIB, 2)


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def make_baseline_task(stage: str, preset: str, variant: str, device: torch.device, batch_size: int | None):
    """The task of a simulated ablation baseline (:mod:`xraysyn.train.baselines`) for ``preset``."""
    from xraysyn.train.baselines import TASKS, simulated_baseline_preset

    if stage == "prior_drr":
        config, task_class = preset_config(preset).replace(simulation__mode="drr"), PriorTask
    else:
        config, task_class = simulated_baseline_preset(stage, preset), TASKS[stage]
    config = config.replace(loop__bf16=VARIANTS[variant], loop__device=device.type)
    if batch_size is not None:
        config = config.replace(loop__batch_size=batch_size)
    datasets = open_sources(config.data, config.loop.seed)
    split = make_split(config.data, datasets, config.loop.seed)
    return task_class(config, ProcessGroup(device=device), datasets, split)


def baseline_record(preset: str, variant: str, args) -> dict:
    """A baseline's record: the whole step (as the loop runs it), peak memory and the loader rate."""
    device = torch.device(args.device)
    _set_threads(args.threads)
    load = os.getloadavg()[0]
    task = make_baseline_task(args.stage, preset, variant, device, args.batch_size)
    parameters = sum(_trainable(m) for m in task.modules().values())
    record = {"benchmark": "train_step", "stage": args.stage, "preset": preset, "variant": variant,
              "device": device_name(device), "batch": task.config.loop.batch_size,
              "num_workers": task.config.data.num_workers, "parameters": parameters,
              "weights_mib": _float32_mib(parameters), "reps": args.reps, "warmup": args.warmup}
    steps, fields = measure_steps(task, args)
    record.update(fields)
    record.update(loader_fields(task, 2 * (args.warmup + args.reps), args.loader_batches, steps["compute_s"]))
    record.update({"loss_total": round(float(steps["losses"]["total"]), 5), "threads": torch.get_num_threads(),
                   "load_average_1min": round(load, 2), "torch": torch.__version__})
    return record


def bench_record(preset: str, variant: str, args) -> dict:
    """One record of this process: see the module docstring."""
    if args.stage == "refine":
        return refine_record(preset, variant, args)
    if args.stage in BASELINE_STAGES:
        return baseline_record(preset, variant, args)
    device = torch.device(args.device)
    _set_threads(args.threads)
    load = os.getloadavg()[0]
    task = make_task(preset, variant, device, args.batch_size)
    config = task.config
    parameters = _trainable(task.network)
    record = {"benchmark": "train_step", "stage": "prior", "preset": preset, "variant": variant,
              "device": device_name(device), "batch": config.loop.batch_size, "volume_size": config.data.volume_size,
              "detector_pixels": config.simulation.detector_pixels, "num_samples": config.simulation.num_samples,
              "projector_backend": config.simulation.projector_backend, "num_workers": config.data.num_workers,
              "parameters": parameters, "weights_mib": _float32_mib(parameters),
              "reps": args.reps, "warmup": args.warmup}
    steps, fields = measure_steps(task, args)
    record.update(fields)
    next_step = args.warmup + args.reps
    data_s, data_cached_s, batch = data_times(task, next_step, args.reps)
    next_step += args.reps
    split = {"data": data_s, "data_cached": data_cached_s, **split_times(task, batch, args.reps)}
    compute_parts = ("targets", "bp", "network_fwd_bwd", "loss_projector_fwd_bwd", "optimizer")
    split["other"] = steps["compute_s"] - sum(split[name] for name in compute_parts)
    record["split_s"] = {name: _seconds(value) for name, value in split.items()}
    record.update(loader_fields(task, next_step, args.loader_batches, steps["compute_s"]))
    record.update({"loss_total": round(float(steps["losses"]["total"]), 5), "threads": torch.get_num_threads(),
                   "load_average_1min": round(load, 2), "torch": torch.__version__})
    return record


# ---------------------------------------------------------------------------------------------------- stage 2
def random_prior(preset: str, device: torch.device) -> PriorModel:
    """A frozen, randomly initialised (seed :data:`PRIOR_SEED`) 3DPN of the stage-1 ``preset`` as the
    :class:`~xraysyn.train.prior_model.PriorModel` that ``load_prior`` would give for its export."""
    config = preset_config(preset)
    torch.manual_seed(PRIOR_SEED)
    network = PriorNet3D(config.model.network()).to(device).eval().requires_grad_(False)
    return PriorModel(network, config.simulation.geometry(), config.data.volume_size,
                      config.simulation.field_of_view_mm, HUScale(), {"stage": "prior", "random_seed": PRIOR_SEED})


def render_radiographs(folder: Path, preset: str, size: int, count: int = RENDERED_RADIOGRAPHS) -> list[Path]:
    """``count`` chest phantoms (the stage-1 ``preset``'s volume size and field of view) rendered by CT2Xray
    frontally on a ``size``² detector, min-max windowed line integrals (bright = attenuating) as 8-bit PNG."""
    config = preset_config(preset)
    geometry = SimulationConfig(detector_pixels=size, field_of_view_mm=config.simulation.field_of_view_mm).geometry()
    edge = config.data.volume_size
    spacing = config.simulation.field_of_view_mm / edge
    paths = []
    for i in range(count):
        phantom = make_chest_phantom((edge,) * 3, spacing_mm=(spacing,) * 3, seed=RENDER_SEED + i)
        line = ct2xray(torch.from_numpy(phantom.hu)[None, None].float(),
                       torch.from_numpy(phantom.bone_mask)[None, None].float(),
                       torch.from_numpy(phantom.world_from_voxel).float(), geometry.poses(torch.zeros(1)),
                       geometry).line_integral[0, 0].numpy()
        unit = (line - line.min()) / max(float(line.max() - line.min()), float(np.finfo(np.float32).tiny))
        path = folder / f"phantom_{i:02d}.png"
        Image.fromarray(np.round(unit * np.iinfo(np.uint8).max).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def make_refine_task(preset: str, device: torch.device, batch_size: int | None, folder: Path) -> RefineTask:
    """The stage-2 preset's :class:`RefineTask` on ``device`` in one process: a random 3DPN of the matching
    stage-1 preset, phantom radiographs rendered into ``folder`` (all of them train, the first validates)."""
    config = refine_preset(preset).replace(loop__device=device.type)
    if batch_size is not None:
        config = config.replace(loop__batch_size=batch_size)
    image_size = RefineNetConfig.preset(config.network).hypernet.input_size
    paths = render_radiographs(folder, config.network, image_size)
    return RefineTask(config, ProcessGroup(device=device), random_prior(config.network, device), paths, paths[:1])


@torch.no_grad()
def prior_volumes(task: RefineTask, image: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor) -> tuple:
    """The first half of :meth:`RefineTask.prior_thickness`: ``(poses, world_from_voxel, ct_hu, bone)`` of the
    frozen 3DPN for ``(N, 1, S, S)`` radiographs and ``(N, V)`` views (degrees)."""
    prior = task.prior
    poses = view_poses(azimuth, elevation, prior.geometry)
    small = F.interpolate(image, size=prior.geometry.detector_shape, mode="area")
    affine = prior.world_from_voxel()
    volume_input = network_input_from_radiograph(normalise_radiograph(small), affine, poses[0::azimuth.shape[1]],
                                                 prior.geometry, (prior.volume_size,) * 3)
    _, hu, mask = predict_volumes(prior.network, volume_input, prior.hu_scale)
    return poses, affine, hu, mask


@torch.no_grad()
def prior_thickness_from(task: RefineTask, poses, affine, hu, mask) -> torch.Tensor:
    """The second half: the CT2Xray thickness maps ``(N·V, 2, d, d)`` g/cm² of :func:`prior_volumes`' output."""
    return ct2xray(hu, mask, affine, poses, task.prior.geometry, num_samples=task.config.num_samples).thickness


def generator_loss(task: RefineTask, refined: torch.Tensor, thickness: torch.Tensor,
                   real: torch.Tensor) -> torch.Tensor:
    """F + M's loss of :meth:`RefineTask.step` from t_m^ref ``(2N, 2, S, S)`` (T, T' interleaved), the 3DPN's
    t_m^CT ``(2N, 2, d, d)`` and the windowed real radiographs ``(N, 1, S, S)``."""
    weights = task.config.loss
    display = window_to_unit(radiograph_from_thickness(refined).line_integral)
    recon = (display[0::2] - real).abs().mean()
    gan = lsgan_generator_loss(task.discriminator(display[1::2]))
    upsampled_bone = F.interpolate(thickness[:, :1], size=refined.shape[2:], mode="bilinear", align_corners=False)
    bone = (refined[:, :1] - upsampled_bone).abs().mean()
    return weights.recon * recon + weights.gan * gan + weights.bone * bone


def refine_split_times(task: RefineTask, batch: dict, reps: int) -> dict:
    """Median seconds of each compute part of a stage-2 step on ``batch`` (see the module docstring)."""
    config, device = task.config, task.device
    clip = config.optim.grad_clip_norm
    task.refine.train()
    task.discriminator.train()
    image, azimuth, elevation = batch["image"], batch["azimuth_deg"], batch["elevation_deg"]
    volumes = prior_volumes(task, image, azimuth, elevation)
    thickness = prior_thickness_from(task, *volumes)
    repeated = image.repeat_interleave(2, dim=0)
    real = window_to_unit(image)
    # the gradient of F + M's loss at t_m^ref, to seed the 2DRN's backward
    refined = task.refine(thickness, repeated).detach()
    leaf = refined.clone().requires_grad_(True)
    generator_loss(task, leaf, thickness, real).backward()
    seed = leaf.grad
    fake = window_to_unit(radiograph_from_thickness(refined).line_integral)[1::2]
    del leaf

    def d_step():
        task.optimizer_d.zero_grad(set_to_none=True)
        scores = task.discriminator(torch.cat([real, fake]))
        lsgan_discriminator_loss(scores[:real.shape[0]], scores[real.shape[0]:]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(task.discriminator.parameters(), clip)
        task.optimizer_d.step()

    def refine_network():
        task.optimizer_g.zero_grad(set_to_none=True)
        torch.autograd.backward(task.refine(thickness, repeated), seed)

    def g_loss():
        generator_loss(task, refined.clone().requires_grad_(True), thickness, real).backward()
        task.discriminator.zero_grad(set_to_none=True)

    def g_optimizer():
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(task.refine.parameters(), clip)
        task.optimizer_g.step()

    parts = {"prior_3dpn": median_time(lambda: prior_volumes(task, image, azimuth, elevation), device, reps),
             "prior_ct2xray": median_time(lambda: prior_thickness_from(task, *volumes), device, reps),
             "d_step": median_time(d_step, device, reps),
             "refine_fwd_bwd": median_time(refine_network, device, reps),
             "g_loss_fwd_bwd": median_time(g_loss, device, reps)}
    refine_network()  # gradients for the optimiser's step
    parts["g_optimizer"] = median_time(g_optimizer, device, reps)
    return parts


def refine_record(preset: str, variant: str, args) -> dict:
    """One stage-2 record of this process: see the module docstring."""
    device = torch.device(args.device)
    _set_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train_step_radiographs_") as folder:
        task = make_refine_task(preset, device, args.batch_size, Path(folder))
        config, prior = task.config, task.prior
        parameters, d_parameters = _trainable(task.refine), _trainable(task.discriminator)
        record = {"benchmark": "train_step", "stage": "refine", "preset": preset, "variant": variant,
                  "device": device_name(device), "batch": config.loop.batch_size, "image_size": task.image_size,
                  "thickness_size": prior.geometry.detector_shape[0], "volume_size": prior.volume_size,
                  "num_samples": config.num_samples, "num_workers": config.data.num_workers,
                  "radiographs": f"{len(task.train_paths)} rendered chest phantoms (PNG)",
                  "parameters": parameters, "discriminator_parameters": d_parameters,
                  "prior_parameters": sum(p.numel() for p in prior.network.parameters()),
                  "weights_mib": _float32_mib(parameters + d_parameters), "reps": args.reps, "warmup": args.warmup}
        steps, fields = measure_steps(task, args)
        record.update(fields)
        next_step = args.warmup + args.reps
        data_s, _, batch = data_times(task, next_step, args.reps)
        next_step += args.reps
        split = {"data": data_s, **refine_split_times(task, batch, args.reps)}
        compute_parts = ("prior_3dpn", "prior_ct2xray", "d_step", "refine_fwd_bwd", "g_loss_fwd_bwd", "g_optimizer")
        split["other"] = steps["compute_s"] - sum(split[name] for name in compute_parts)
        record["split_s"] = {name: _seconds(value) for name, value in split.items()}
        record.update(loader_fields(task, next_step, args.loader_batches, steps["compute_s"]))
    record.update({"loss_total": round(float(steps["losses"]["total"]), 5),
                   "loss_gan_d": round(float(steps["losses"]["gan_d"]), 5), "threads": torch.get_num_threads(),
                   "load_average_1min": round(load, 2), "torch": torch.__version__})
    return record


def _error_record(preset: str, variant: str, device: str, error: str, detail: str, stage: str = "prior") -> dict:
    return {"benchmark": "train_step", "stage": stage, "preset": preset, "variant": variant, "device": device,
            "error": error, "detail": detail[:500]}


def run_in_this_process(args) -> dict:
    preset, variant = args.record.split(":")
    try:
        return bench_record(preset, variant, args)
    except torch.cuda.OutOfMemoryError as error:
        return _error_record(preset, variant, args.device, "out of memory", str(error).splitlines()[0], args.stage)
    except Exception as error:  # noqa: BLE001 - reported in the record
        first = (str(error).splitlines() or [""])[0]
        return _error_record(preset, variant, args.device, type(error).__name__, first, args.stage)


def run_in_subprocess(preset: str, variant: str, args) -> dict:
    """One record in a fresh process (its own peak memory, no state left by an earlier record)."""
    command = [sys.executable, SCRIPT, "--record", f"{preset}:{variant}", "--stage", args.stage, "--device", args.device,
               "--presets", preset, "--variants", variant, "--reps", str(args.reps), "--warmup", str(args.warmup),
               "--loader-batches", str(args.loader_batches)]
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        return _error_record(preset, variant, args.device, f"the record's process failed (exit {proc.returncode})",
                             tail, args.stage)
    return json.loads(lines[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.record:
        print(json.dumps(run_in_this_process(args)), flush=True)
        return 0
    failures = total = 0
    for preset in args.presets:
        for variant in args.variants:
            record = run_in_subprocess(preset, variant, args)
            total += 1
            failures += "error" in record
            print(json.dumps(record), flush=True)
    return 1 if failures == total else 0


if __name__ == "__main__":
    sys.exit(main())
