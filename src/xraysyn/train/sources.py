"""CT cases for training: data sources, the seeded train/validation split, and a deterministic item plan.

Every training item is identified by its *global position* ``p`` (0, 1, 2, … over the whole run): the
plan maps ``p`` to a (source, case) pair, and all randomness of the item (views, augmentation, input
perturbation) is seeded by ``(seed, p)``. Step ``t`` trains on positions ``t·B … t·B + B − 1`` (``B`` the
global batch), split evenly over the processes and micro-batches. Hence a run is reproducible, resumes
exactly at any step, and gives the same global batch whatever the number of processes.

Epochs: an epoch has as many items as there are training cases; each source contributes its share by
weight, drawing its cases in a seeded random order without repetition (cycling when its share exceeds
its size); the epoch's items are then shuffled together.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xraysyn.data.datasets import CTShardDataset, PhantomDataset
from xraysyn.train.config_io import ConfigError
from xraysyn.train.prior_config import DataSource, PriorDataConfig

__all__ = ["CaseSplit", "ItemPlan", "TrainingItems", "GlobalBatchSampler", "open_sources", "make_split",
           "read_split", "write_split", "seeded_generator", "SPLIT_FILE"]

SPLIT_FILE = "split.json"
SPLIT_FORMAT = "xraysyn-split-1"
#: Stream ids of the seeded generators (one per kind of randomness of an item).
ITEM_STREAM, INPUT_STREAM, SPLIT_STREAM, EPOCH_STREAM = 0, 1, 2, 3


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of non-negative integers (through numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _source_key(source: DataSource) -> int:
    return zlib.crc32(source.path.encode("utf-8"))


def open_sources(config: PriorDataConfig, seed: int) -> list:
    """One dataset per source (:class:`PhantomDataset` or :class:`CTShardDataset`), validated.

    Raises:
        ConfigError: a missing or empty shard folder, or shards whose grid cannot be resampled.
    """
    datasets = []
    for source in config.sources:
        if source.is_phantom:
            datasets.append(PhantomDataset(config.phantom_cases, size=config.volume_size, seed=seed,
                                           augment=config.augment, max_angle_deg=config.max_angle_deg))
            continue
        root = Path(source.path)
        if not root.is_dir():
            raise ConfigError(f"data source {source.path!r} is not a folder of shards (nor 'phantom')")
        try:
            dataset = CTShardDataset(root, size=None, augment=config.augment,
                                     max_angle_deg=config.max_angle_deg, seed=seed)
        except ValueError as error:
            raise ConfigError(f"data source {source.path!r}: {error}") from None
        datasets.append(dataset)
    if all(len(d) < 2 for d in datasets):
        raise ConfigError("the data sources hold one case each; at least one source needs 2 or more cases "
                          "(validation cases are held out of every source with more than one)")
    return datasets


def case_ids(source: DataSource, dataset) -> list[str]:
    """Stable ids of a source's cases: ``phantom/0007`` or the shard's path relative to the folder."""
    if source.is_phantom:
        return [f"phantom/{i:05d}" for i in range(len(dataset))]
    return [p.relative_to(dataset.root).as_posix() for p in dataset.paths]


@dataclass(frozen=True)
class CaseSplit:
    """Per source (by path), the case ids for training and for validation."""

    train: dict[str, tuple[str, ...]]
    validation: dict[str, tuple[str, ...]]

    def to_json(self) -> dict:
        return {"format": SPLIT_FORMAT, "train": {k: list(v) for k, v in self.train.items()},
                "validation": {k: list(v) for k, v in self.validation.items()}}


def make_split(config: PriorDataConfig, datasets: list, seed: int) -> CaseSplit:
    """Hold out ``validation_fraction`` of each source's cases (at least one, at least one left to train; a
    source of a single case only trains),
    chosen by a generator seeded by ``(seed, source path)``."""
    train, validation = {}, {}
    for source, dataset in zip(config.sources, datasets):
        ids = case_ids(source, dataset)
        # a single-case source trains only; every other source holds out at least one case
        n_val = 0 if len(ids) < 2 else min(len(ids) - 1, max(1, round(config.validation_fraction * len(ids))))
        order = torch.randperm(len(ids), generator=seeded_generator(seed, SPLIT_STREAM, _source_key(source))).tolist()
        held = sorted(order[:n_val])
        validation[source.path] = tuple(ids[i] for i in held)
        train[source.path] = tuple(ids[i] for i in sorted(order[n_val:]))
    return CaseSplit(train, validation)


def write_split(split: CaseSplit, run_dir: Path) -> None:
    from xraysyn.atomic import atomic_write

    text = json.dumps(split.to_json(), indent=1) + "\n"
    atomic_write(Path(run_dir) / SPLIT_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_split(run_dir: Path, config: PriorDataConfig, datasets: list) -> CaseSplit:
    """The split saved in a run folder, checked against the sources' current cases."""
    path = Path(run_dir) / SPLIT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the saved split {str(path)!r}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not an xraysyn split file")
    try:
        split = CaseSplit({k: tuple(v) for k, v in data["train"].items()},
                          {k: tuple(v) for k, v in data["validation"].items()})
    except (KeyError, TypeError, AttributeError):
        raise ConfigError(f"{str(path)!r} is not a valid xraysyn split file (train and validation case lists "
                          f"per source)") from None
    for source, dataset in zip(config.sources, datasets):
        known = set(case_ids(source, dataset))
        saved = split.train.get(source.path, ()) + split.validation.get(source.path, ())
        missing = [c for c in saved if c not in known]
        if source.path not in split.train or missing:
            raise ConfigError(f"the saved split of {str(run_dir)!r} does not match data source {source.path!r}"
                              + (f" (missing cases, e.g. {missing[0]!r})" if missing else ""))
    return split


class ItemPlan:
    """Global position → (source index, case index within the source's dataset); see the module docstring."""

    def __init__(self, config: PriorDataConfig, datasets: list, split: CaseSplit, seed: int):
        self.seed = seed
        self.case_indices = []  # per source: dataset indices of its training cases
        for source, dataset in zip(config.sources, datasets):
            index_of = {c: i for i, c in enumerate(case_ids(source, dataset))}
            self.case_indices.append([index_of[c] for c in split.train[source.path]])
        self.epoch_length = sum(len(c) for c in self.case_indices)
        weights = np.array([s.weight for s in config.sources], dtype=np.float64)
        shares = np.maximum(1, np.round(self.epoch_length * weights / weights.sum())).astype(int)
        shares[-1] = max(1, self.epoch_length - int(shares[:-1].sum()))
        self.shares = shares.tolist()
        self.epoch_length = int(sum(self.shares))
        self._epoch = lru_cache(maxsize=4)(self._epoch_items)

    def _epoch_items(self, epoch: int) -> list[tuple[int, int]]:
        items = []
        for s, (cases, share) in enumerate(zip(self.case_indices, self.shares)):
            draws = []
            cycle = 0
            while len(draws) < share:  # cycle through fresh permutations of the source's cases
                perm = torch.randperm(len(cases), generator=seeded_generator(self.seed, EPOCH_STREAM, epoch, s, cycle))
                draws.extend(cases[i] for i in perm.tolist())
                cycle += 1
            items.extend((s, c) for c in draws[:share])
        order = torch.randperm(len(items), generator=seeded_generator(self.seed, EPOCH_STREAM, epoch)).tolist()
        return [items[i] for i in order]

    def __getstate__(self) -> dict:  # the lru_cache wrapper does not pickle (DataLoader workers under spawn)
        return {k: v for k, v in self.__dict__.items() if k != "_epoch"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._epoch = lru_cache(maxsize=4)(self._epoch_items)

    def epoch_of(self, position: int) -> int:
        return position // self.epoch_length

    def __call__(self, position: int) -> tuple[int, int]:
        return self._epoch(position // self.epoch_length)[position % self.epoch_length]


class TrainingItems(Dataset):
    """Training items by global position: ``dataset[p]`` → the CT item dict of
    :mod:`xraysyn.data.datasets` (views and augmentation seeded by ``(seed, p)``) plus ``position``."""

    def __init__(self, datasets: list, plan: ItemPlan, cache_cases: int = 0):
        self.datasets = datasets
        self.plan = plan
        self.cache_cases = cache_cases
        self._load = lru_cache(maxsize=cache_cases)(self._load_case) if cache_cases > 0 else self._load_case

    def __getstate__(self) -> dict:  # as ItemPlan: each worker process starts with an empty case cache
        return {k: v for k, v in self.__dict__.items() if k != "_load"}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["datasets"], state["plan"], state["cache_cases"])

    def _load_case(self, source: int, case: int):
        return self.datasets[source].load_case(case)

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are used
        return 2**62

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        source, case = self.plan(int(position))
        item = self.datasets[source].make_item(case, seeded_generator(self.plan.seed, ITEM_STREAM, int(position)),
                                               case=self._load(source, case))
        item["position"] = torch.tensor(int(position), dtype=torch.int64)
        return item


class GlobalBatchSampler:
    """The positions this process loads, one micro-batch at a time, from step ``start_step`` to ``steps``.

    Step ``t``'s global batch is positions ``t·B … t·B + B − 1``; process ``rank`` of ``world_size`` takes
    the ``rank``-th contiguous ``B / world_size`` of them, cut into ``micro_batches`` equal micro-batches.
    """

    def __init__(self, batch_size: int, steps: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 micro_batches: int = 1):
        for name, value, minimum in (("batch_size", batch_size, 1), ("steps", steps, 0), ("start_step", start_step, 0),
                                     ("world_size", world_size, 1), ("micro_batches", micro_batches, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
        if batch_size % (world_size * micro_batches):
            raise ConfigError(f"the batch size {batch_size} is not divisible by the number of processes "
                              f"({world_size}) × micro-batches ({micro_batches})")
        self.batch_size, self.steps, self.start_step = batch_size, steps, start_step
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.micro_size = batch_size // (world_size * micro_batches)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.micro_batches

    def __iter__(self):
        per_rank = self.batch_size // self.world_size
        for step in range(self.start_step, self.steps):
            first = step * self.batch_size + self.rank * per_rank
            for m in range(self.micro_batches):
                start = first + m * self.micro_size
                yield list(range(start, start + self.micro_size))
