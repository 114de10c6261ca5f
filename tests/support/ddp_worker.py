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
    finally:
        group.close()
        torch.set_num_threads(threads)
