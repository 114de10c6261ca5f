"""A process of a 2-process gloo group for the DDP tests (importable by spawned children)."""

from __future__ import annotations

import os

import torch


def one_step_gradients(rank: int, world_size: int, port: int, out_path: str, config_dict: dict) -> None:
    """Run step 0 of a stage-1 task on this rank's share of the global batch; rank 0 saves the gradients.

    In float64 (network, CT and geometry), so that the comparison shows the data-parallel arithmetic and not
    the order of float32 sums (in float32 a bias gradient differs by 1.2e-6 relative)."""
    from xraysyn.models import PriorNet3D
    from xraysyn.train.distributed import start_processes
    from xraysyn.train.prior import PriorTask
    from xraysyn.train.prior_config import config_from_mapping
    from xraysyn.train.sources import GlobalBatchSampler, make_split, open_sources

    if world_size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = config_from_mapping(config_dict)
    group = start_processes("cpu")
    try:
        datasets = open_sources(config.data, config.loop.seed)
        torch.manual_seed(config.loop.seed)
        network = PriorNet3D(config.model.network()).double()
        task = PriorTask(config, group, datasets, make_split(config.data, datasets, config.loop.seed), model=network)
        items = task.items()
        positions = next(iter(GlobalBatchSampler(config.loop.batch_size, 1, 0, group.rank, group.world_size)))
        batch = task.collate([items[p] for p in positions])
        batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        losses = group.all_reduce_mean(task.step([batch], 0))  # as the loop logs them
        if group.is_main:
            grads = {name: p.grad.detach().clone() for name, p in task.network.named_parameters()}
            torch.save({"grads": grads, "losses": losses}, out_path)
        group.barrier()  # as train_prior ends: no rank tears down gloo while another still uses it
    finally:
        group.close()
        torch.set_num_threads(threads)


def random_prior(preset: str, seed: int):
    """A frozen, randomly initialised 3DPN of the stage-1 ``preset`` as a
    :class:`~xraysyn.train.prior_model.PriorModel` (float32, CPU): the same weights in every process that
    draws it with the same ``seed``; no export file."""
    from xraysyn.models import PriorNet3D
    from xraysyn.models.normalization import HUScale
    from xraysyn.train.prior_config import preset_config
    from xraysyn.train.prior_model import PriorModel

    config = preset_config(preset)
    torch.manual_seed(seed)
    network = PriorNet3D(config.model.network()).eval().requires_grad_(False)
    return PriorModel(network, config.simulation.geometry(), config.data.volume_size,
                      config.simulation.field_of_view_mm, HUScale(), {"stage": "prior", "random_seed": seed})


def refine_one_step_gradients(rank: int, world_size: int, port: int, out_path: str, config_dict: dict,
                              image_paths: list, prior_seed: int) -> None:
    """Run step 0 of a stage-2 task on this rank's share of the global batch; rank 0 saves what both
    optimisers stepped on (the gradients of D in its update, then those of F + M in theirs), the logged
    losses (mean over the processes); every rank saves the 3DPN thickness maps of its items to
    ``out_path.rank<r>``.

    F + M, D and their losses run in float64: the task's modules are built under float64 as the default
    dtype, so DistributedDataParallel wraps (and buckets) float64 parameters. The frozen 3DPN stays in
    float32 as in training (``predict_volumes`` and ``view_poses`` are float32 by contract): its thickness
    maps, computed without gradients, per item, enter F as float64."""
    from xraysyn.train.distributed import start_processes
    from xraysyn.train.refine import RefineTask
    from xraysyn.train.refine_config import refine_config_from_mapping
    from xraysyn.train.sources import GlobalBatchSampler

    if world_size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = refine_config_from_mapping(config_dict)
    group = start_processes("cpu")
    default_dtype = torch.get_default_dtype()
    try:
        prior = random_prior(config.network, prior_seed)
        torch.set_default_dtype(torch.float64)
        try:
            task = RefineTask(config, group, prior, list(image_paths), list(image_paths[:1]))
        finally:
            torch.set_default_dtype(default_dtype)
        modules = {"refine": task.refine, "discriminator": task.discriminator}
        assert all(p.dtype == torch.float64 for m in modules.values() for p in m.parameters())
        prior_thickness, thickness = task.prior_thickness, []

        def float32_prior(image, azimuth, elevation):  # the 3DPN on the float32 radiograph, as in training
            maps = prior_thickness(image.float(), azimuth, elevation)
            thickness.append(maps)
            return maps.double()

        task.prior_thickness = float32_prior
        stepped = {}

        def keep(name):
            def hook(optimizer, args, kwargs):
                stepped[name] = {n: p.grad.detach().clone() for n, p in modules[name].named_parameters()}
            return hook

        task.optimizer_d.register_step_pre_hook(keep("discriminator"))
        task.optimizer_g.register_step_pre_hook(keep("refine"))
        items = task.items()
        positions = next(iter(GlobalBatchSampler(config.loop.batch_size, 1, 0, group.rank, group.world_size)))
        batch = task.collate([items[p] for p in positions])
        batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        losses = group.all_reduce_mean(task.step([batch], 0))  # as the loop logs them
        torch.save({"positions": list(positions), "thickness": thickness[0]}, f"{out_path}.rank{group.rank}")
        if group.is_main:
            torch.save({"grads": stepped, "losses": losses}, out_path)
        group.barrier()  # as train_refine ends: no rank tears down gloo while another still uses it
    finally:
        group.close()
        torch.set_num_threads(threads)
