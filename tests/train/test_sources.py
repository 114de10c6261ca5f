"""Training data sources (xraysyn.train.sources): the seeded split, its file, the item plan, the training items
and the global batch sampler, on tiny phantoms and shard folders."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from xraysyn.data.shards import write_shard
from xraysyn.train.config_io import ConfigError
from xraysyn.train.prior_config import DataSource, PriorDataConfig
from xraysyn.train.sources import (
    SPLIT_FILE,
    GlobalBatchSampler,
    ItemPlan,
    TrainingItems,
    make_split,
    open_sources,
    read_split,
    write_split,
)

SHARD_SIDE = 8  # voxels per axis of the test shards
VOLUME = 16  # phantom voxels per axis
PHANTOMS = 10
SHARDS = 4
SEED = 5


def write_cases(folder, count):
    for i in range(count):
        hu = np.full((SHARD_SIDE,) * 3, 100.0 * i)
        write_shard(folder / f"case{i:02d}.npz", hu, np.zeros_like(hu), np.eye(4))
    return folder


@pytest.fixture()
def shard_folder(tmp_path):
    return write_cases(tmp_path / "shards", SHARDS)


def data_config(*sources, phantom_cases=PHANTOMS, **kwargs) -> PriorDataConfig:
    return PriorDataConfig(sources=tuple(sources), volume_size=VOLUME, phantom_cases=phantom_cases, num_workers=0,
                           **kwargs)


def opened(config, seed=SEED):
    datasets = open_sources(config, seed)
    return datasets, make_split(config, datasets, seed)


# ----------------------------------------------------------------------------- sources and split


def test_open_sources_gives_one_dataset_per_source(shard_folder):
    config = data_config(DataSource("phantom"), DataSource(str(shard_folder)))
    datasets = open_sources(config, SEED)
    assert [len(d) for d in datasets] == [PHANTOMS, SHARDS]


def test_open_sources_refuses_missing_and_empty_folders(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder of shards"):
        open_sources(data_config(DataSource(str(tmp_path / "missing"))), SEED)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty"):
        open_sources(data_config(DataSource(str(tmp_path / "empty"))), SEED)
    single = write_cases(tmp_path / "single", 1)
    with pytest.raises(ConfigError, match="one case each"):
        open_sources(data_config(DataSource(str(single))), SEED)


def test_split_is_seeded_disjoint_and_complete(shard_folder):
    config = data_config(DataSource("phantom"), DataSource(str(shard_folder)))
    datasets, split = opened(config)
    for source, size in ((config.sources[0], PHANTOMS), (config.sources[1], SHARDS)):
        train, validation = split.train[source.path], split.validation[source.path]
        assert not set(train) & set(validation)
        assert len(train) + len(validation) == size
        assert len(validation) == max(1, round(config.validation_fraction * size))
        assert list(train) == sorted(train) and list(validation) == sorted(validation)
    assert opened(config)[1] == split  # the same seed, the same split
    others = {opened(config, seed)[1].validation["phantom"] for seed in range(8)}
    assert len(others) > 1  # the seed decides which cases are held out


def test_split_of_a_source_does_not_depend_on_the_other_sources(shard_folder):
    both = opened(data_config(DataSource("phantom"), DataSource(str(shard_folder))))[1]
    reversed_order = opened(data_config(DataSource(str(shard_folder)), DataSource("phantom")))[1]
    alone = opened(data_config(DataSource("phantom")))[1]
    assert both.validation["phantom"] == reversed_order.validation["phantom"] == alone.validation["phantom"]
    assert both.validation[str(shard_folder)] == reversed_order.validation[str(shard_folder)]


def test_every_multi_case_source_holds_out_one_and_a_single_case_source_trains_only(tmp_path):
    two = write_cases(tmp_path / "two", 2)
    one = write_cases(tmp_path / "one", 1)
    # a fraction that rounds to zero cases still holds one out; one stays to train
    config = data_config(DataSource(str(two)), DataSource(str(one)), DataSource("phantom"), phantom_cases=3,
                         validation_fraction=0.01)
    _, split = opened(config)
    assert len(split.validation[str(two)]) == 1 and len(split.train[str(two)]) == 1
    assert split.validation[str(one)] == () and split.train[str(one)] == ("case00.npz",)
    assert len(split.validation["phantom"]) == 1
    # a fraction near one still leaves one case to train
    _, split = opened(data_config(DataSource("phantom"), phantom_cases=3, validation_fraction=0.99))
    assert len(split.train["phantom"]) == 1 and len(split.validation["phantom"]) == 2


def test_write_and_read_split_round_trip(shard_folder, tmp_path):
    config = data_config(DataSource("phantom"), DataSource(str(shard_folder)))
    datasets, split = opened(config)
    run = tmp_path / "run"
    write_split(split, run)
    saved = json.loads((run / SPLIT_FILE).read_text(encoding="utf-8"))
    assert saved["validation"]["phantom"] == list(split.validation["phantom"])
    assert read_split(run, config, datasets) == split
    assert not [p for p in run.iterdir() if p.name != SPLIT_FILE]  # no temporary file left


def test_read_split_refuses_a_changed_source(shard_folder, tmp_path):
    config = data_config(DataSource("phantom"), DataSource(str(shard_folder)))
    datasets, split = opened(config)
    run = tmp_path / "run"
    write_split(split, run)
    # a shard removed from the folder
    (shard_folder / split.train[str(shard_folder)][0]).unlink()
    shrunk = open_sources(config, SEED)
    with pytest.raises(ConfigError, match=r"does not match data source .*missing cases"):
        read_split(run, config, shrunk)
    # fewer phantoms than when the split was made
    fewer = data_config(DataSource("phantom"), DataSource(str(shard_folder)), phantom_cases=4)
    with pytest.raises(ConfigError, match="does not match data source 'phantom'"):
        read_split(run, fewer, open_sources(fewer, SEED))
    # a source the split never saw
    other = write_cases(tmp_path / "other", 3)
    added = data_config(DataSource("phantom"), DataSource(str(other)))
    with pytest.raises(ConfigError, match="does not match data source"):
        read_split(run, added, open_sources(added, SEED))


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"format": "other"}), json.dumps([1, 2]),
                                     json.dumps({"format": "xraysyn-split-1"}),
                                     json.dumps({"format": "xraysyn-split-1", "train": [], "validation": {}})])
def test_read_split_refuses_a_bad_file(tmp_path, content):
    config = data_config(DataSource("phantom"))
    datasets = open_sources(config, SEED)
    (tmp_path / SPLIT_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="split"):
        read_split(tmp_path, config, datasets)


def test_read_split_of_a_folder_without_one(tmp_path):
    config = data_config(DataSource("phantom"))
    with pytest.raises(ConfigError, match="cannot read the saved split"):
        read_split(tmp_path, config, open_sources(config, SEED))


# ----------------------------------------------------------------------------- item plan


def plan_for(config, seed=SEED):
    datasets, split = opened(config, seed)
    return ItemPlan(config, datasets, split, seed), datasets, split


def test_each_epoch_draws_each_source_by_its_weight(shard_folder):
    config = data_config(DataSource("phantom", 0.7), DataSource(str(shard_folder), 0.3))
    plan, _, split = plan_for(config)
    train_cases = sum(len(v) for v in split.train.values())  # 9 + 3
    assert plan.epoch_length == train_cases
    expected = [round(0.7 * train_cases), train_cases - round(0.7 * train_cases)]  # 8 and 4
    assert plan.shares == expected
    shard_train = set()
    datasets = open_sources(config, SEED)
    for i, path in enumerate(datasets[1].paths):
        if path.name in split.train[str(shard_folder)]:
            shard_train.add(i)
    for epoch in range(3):
        items = [plan(p) for p in range(epoch * plan.epoch_length, (epoch + 1) * plan.epoch_length)]
        assert Counter(s for s, _ in items) == {0: expected[0], 1: expected[1]}
        shard_draws = Counter(c for s, c in items if s == 1)
        # 4 draws from 3 training shards: each once, then one again (a fresh permutation)
        assert set(shard_draws) == shard_train and sorted(shard_draws.values()) == [1, 1, 2]
        phantom_draws = Counter(c for s, c in items if s == 0)
        assert max(phantom_draws.values()) == 1  # 8 of the 9 phantoms, none twice
        # validation cases are never trained on
        held = {int(c.split("/")[1]) for c in split.validation["phantom"]}
        assert not held & set(phantom_draws)


def test_weights_proportional_to_sizes_draw_each_case_once_per_epoch(shard_folder):
    config = data_config(DataSource("phantom", 9.0), DataSource(str(shard_folder), 3.0))
    plan, datasets, split = plan_for(config)
    train = {(0, int(c.split("/")[1])) for c in split.train["phantom"]}
    train |= {(1, i) for i, p in enumerate(datasets[1].paths) if p.name in split.train[str(shard_folder)]}
    orders = []
    for epoch in range(3):
        items = [plan(p) for p in range(epoch * plan.epoch_length, (epoch + 1) * plan.epoch_length)]
        assert sorted(items) == sorted(train)
        orders.append(items)
    assert orders[0] != orders[1] != orders[2]  # a new order every epoch
    assert plan.epoch_of(plan.epoch_length - 1) == 0 and plan.epoch_of(plan.epoch_length) == 1


def test_the_plan_is_deterministic_by_seed(shard_folder):
    config = data_config(DataSource("phantom", 0.5), DataSource(str(shard_folder), 0.5))
    positions = range(40)
    first = [plan_for(config)[0](p) for p in positions]
    again = plan_for(config)[0]
    assert [again(p) for p in positions] == first
    assert [again(p) for p in reversed(positions)][::-1] == first  # any order of access
    other = plan_for(config, seed=SEED + 1)[0]
    assert [other(p) for p in positions] != first


# ----------------------------------------------------------------------------- items


@pytest.fixture(scope="module")
def phantom_items():
    config = PriorDataConfig(sources=(DataSource("phantom"),), volume_size=VOLUME, phantom_cases=4, num_workers=0)

    def build(cache_cases=0):
        datasets = open_sources(config, SEED)
        split = make_split(config, datasets, SEED)
        return TrainingItems(datasets, ItemPlan(config, datasets, split, SEED), cache_cases=cache_cases)

    return build


def test_training_items_are_deterministic_in_the_position(phantom_items):
    one, two, cached = phantom_items(), phantom_items(), phantom_items(cache_cases=4)
    for position in (0, 5, 13):
        a, b, c = one[position], two[position], cached[position]
        assert set(a) == set(b) == set(c)
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), (position, key)
        assert int(a["position"]) == position
        assert a["ct_hu"].shape == (1, VOLUME, VOLUME, VOLUME) and a["azimuth_deg"].shape == (2,)
    # read again from one instance after other positions: still the same item
    assert torch.equal(one[5]["elevation_deg"], two[5]["elevation_deg"])
    assert torch.equal(one[5]["ct_hu"], two[5]["ct_hu"])


def test_different_positions_differ_in_angles(phantom_items):
    items = phantom_items()
    angles = [torch.cat([items[p]["azimuth_deg"], items[p]["elevation_deg"]]) for p in range(6)]
    for i in range(len(angles)):
        for j in range(i):
            assert not torch.equal(angles[i], angles[j]), (i, j)
    # the same case at two positions (3 training cases: positions 0..5 repeat each) gets other angles
    plan = items.plan
    by_case = {}
    for p in range(6):
        by_case.setdefault(plan(p), []).append(p)
    repeated = [ps for ps in by_case.values() if len(ps) > 1]
    assert repeated
    for ps in repeated:
        assert not torch.equal(items[ps[0]]["azimuth_deg"], items[ps[1]]["azimuth_deg"])
        assert torch.equal(items[ps[0]]["index"], items[ps[1]]["index"])


# ----------------------------------------------------------------------------- global batch sampler


def steps_of(sampler: GlobalBatchSampler) -> list[list[int]]:
    """The sampler's micro-batches grouped by step (micro_batches per step)."""
    batches = list(sampler)
    assert len(batches) == len(sampler)
    m = sampler.micro_batches
    return [sum(batches[i:i + m], []) for i in range(0, len(batches), m)]


@pytest.mark.parametrize("world_size,micro_batches", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)])
def test_the_union_over_ranks_is_the_global_batch(world_size, micro_batches):
    batch, steps = 8, 3
    per_rank = [steps_of(GlobalBatchSampler(batch, steps, rank=r, world_size=world_size, micro_batches=micro_batches))
                for r in range(world_size)]
    for step in range(steps):
        union = sorted(p for rank in per_rank for p in rank[step])
        assert union == list(range(step * batch, (step + 1) * batch))
        assert sum(len(rank[step]) for rank in per_rank) == batch  # no position twice
    for r in range(world_size):
        for micro in GlobalBatchSampler(batch, steps, rank=r, world_size=world_size, micro_batches=micro_batches):
            assert len(micro) == batch // (world_size * micro_batches)


def test_the_same_global_batches_for_one_or_two_processes_and_accumulation():
    batch, steps = 4, 5

    def global_batches(world_size, micro_batches):
        ranks = [steps_of(GlobalBatchSampler(batch, steps, rank=r, world_size=world_size,
                                             micro_batches=micro_batches)) for r in range(world_size)]
        return [sorted(sum((rank[s] for rank in ranks), [])) for s in range(steps)]

    reference = global_batches(1, 1)
    assert global_batches(2, 1) == reference
    assert global_batches(1, 2) == reference
    assert global_batches(2, 2) == reference


def test_start_step_skips_exactly():
    full = list(GlobalBatchSampler(6, 5, world_size=2, rank=1, micro_batches=3))
    for start in range(6):
        resumed = GlobalBatchSampler(6, 5, start_step=start, world_size=2, rank=1, micro_batches=3)
        assert list(resumed) == full[start * 3:]
        assert len(resumed) == len(full[start * 3:])


@pytest.mark.parametrize("batch,world_size,micro_batches", [(3, 2, 1), (4, 1, 3), (6, 2, 2), (2, 4, 1)])
def test_batch_not_divisible_is_an_error(batch, world_size, micro_batches):
    with pytest.raises(ConfigError, match=rf"batch size {batch} is not divisible"):
        GlobalBatchSampler(batch, 10, world_size=world_size, micro_batches=micro_batches)


@pytest.mark.parametrize("kwargs,name", [
    ({"rank": 2, "world_size": 2}, "rank"), ({"rank": -1, "world_size": 2}, "rank"),
    ({"world_size": 0}, "world_size"), ({"micro_batches": 0}, "micro_batches"),
    ({"start_step": -1}, "start_step"), ({"batch_size": 0}, "batch_size"), ({"steps": -1}, "steps"),
])
def test_sampler_arguments_out_of_range_are_errors(kwargs, name):
    arguments = {"batch_size": 4, "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        GlobalBatchSampler(**arguments)


def test_training_items_pickle_for_worker_processes(phantom_items):
    # DataLoader workers started by spawn or forkserver receive the dataset pickled
    for items in (phantom_items(), phantom_items(cache_cases=2)):
        copy = pickle.loads(pickle.dumps(items))
        for position in (0, 7):
            a, b = items[position], copy[position]
            assert all(torch.equal(a[key], b[key]) for key in a), position
        assert [copy.plan(p) for p in range(12)] == [items.plan(p) for p in range(12)]


def test_a_spawned_worker_loads_the_same_batches(phantom_items):
    items = phantom_items()
    sampler = GlobalBatchSampler(2, 2)
    inline = list(DataLoader(items, batch_sampler=sampler, num_workers=0))
    spawned = list(DataLoader(items, batch_sampler=sampler, num_workers=1, multiprocessing_context="spawn"))
    assert len(inline) == len(spawned) == 2
    for a, b in zip(inline, spawned):
        assert all(torch.equal(a[key], b[key]) for key in a)
