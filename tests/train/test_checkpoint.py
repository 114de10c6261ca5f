"""Training checkpoints (xraysyn.train.checkpoint): weights-only round trip, RNG capture and restore, skipping a
corrupt newest file, leftover temporary files, foreign files and other stages, pruning to the newest K."""

from __future__ import annotations

import random
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from xraysyn.train.checkpoint import (
    BEST_NAME,
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_checkpoint_path,
    step_checkpoints,
)

STAGE = "prior"


def payload(step: int, stage: str = STAGE) -> dict:
    """What a trainer saves: model and optimiser state dicts after one step, numbers, strings, the config."""
    torch.manual_seed(step)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    model(torch.randn(2, 1, 5, 5)).square().mean().backward()
    optimiser.step()
    return {"stage": stage, "step": step, "epoch": step // 10, "model": model.state_dict(),
            "optimizer": optimiser.state_dict(), "scheduler": {"last_epoch": step}, "rng": capture_rng_state(),
            "config": {"preset": "small", "loop": {"steps": 20, "seed": 0}, "widths": [4, 8]}, "best_metric": None}


def assert_same(a, b, where="payload"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    original = payload(3)
    path = step_checkpoint_path(tmp_path, 3)
    assert save_checkpoint(path, original) == path
    assert path.parent.name == CHECKPOINT_DIR and path.name == "step_00000003.pt"
    loaded = load_checkpoint(path, stage=STAGE)
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert_same({k: v for k, v in loaded.items() if k != "format"}, original)
    # the file itself loads with plain torch.load(weights_only=True): no pickled objects inside
    assert_same(torch.load(path, weights_only=True), loaded)
    # and the state dicts go back into fresh objects
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    model.load_state_dict(loaded["model"])
    optimiser = torch.optim.Adam(model.parameters())
    optimiser.load_state_dict(loaded["optimizer"])
    assert optimiser.param_groups[0]["betas"] == (0.5, 0.9)
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_a_payload_with_a_pickled_object_does_not_load(tmp_path):
    path = tmp_path / "odd.pt"
    save_checkpoint(path, {"stage": STAGE, "thing": Fraction(1, 3)})  # an arbitrary class: needs full unpickling
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def draw_everything() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(3).tolist(),
            torch.rand(4).tolist(), torch.randn(3).tolist())


@pytest.mark.parametrize("through_a_file", [False, True])
def test_rng_restore_reproduces_the_next_draws(tmp_path, through_a_file):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # leave both gaussian caches full: python's gauss and numpy's legacy normal keep the second of a pair
    random.gauss(0, 1)
    np.random.randn(1)
    state = capture_rng_state()
    if through_a_file:
        path = save_checkpoint(tmp_path / "rng.pt", {"rng": state})
        state = load_checkpoint(path)["rng"]
    expected = draw_everything()
    draw_everything()  # move every generator on
    restore_rng_state(state)
    assert draw_everything() == expected


def test_rng_state_holds_only_plain_values():
    state = capture_rng_state()
    for key, value in state.items():
        if key == "cuda":
            assert all(isinstance(v, torch.Tensor) for v in value)
        else:
            assert isinstance(value, (torch.Tensor, int, float, str, type(None))), key


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    for step in (5, 10):
        save_checkpoint(step_checkpoint_path(tmp_path, step), payload(step))
    newest = step_checkpoint_path(tmp_path, 10)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a write cut short
    with pytest.warns(UserWarning, match="skipping unusable checkpoint.*step_00000010"):
        path, loaded = latest_checkpoint(tmp_path, stage=STAGE)
    assert path == step_checkpoint_path(tmp_path, 5) and loaded["step"] == 5
    # an empty newest file is skipped as well; nothing usable at all gives None
    newest.write_bytes(b"")
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path)[0].name == "step_00000005.pt"
    step_checkpoint_path(tmp_path, 5).write_bytes(b"\x00" * 64)
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) is None


def test_latest_checkpoint_of_a_run_without_checkpoints_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    assert step_checkpoints(tmp_path / "missing") == []


def test_newest_is_by_step_number_and_other_files_are_ignored(tmp_path):
    for step in (9, 100, 20):
        save_checkpoint(step_checkpoint_path(tmp_path, step), payload(step))
    folder = tmp_path / CHECKPOINT_DIR
    save_checkpoint(folder / BEST_NAME, payload(50))
    (folder / "step_7.pt").write_bytes(b"not ours")  # not the 8-digit name
    (folder / "step_00000300.pt.bak").write_bytes(b"not ours")
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_00000009.pt", "step_00000020.pt", "step_00000100.pt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, loaded = latest_checkpoint(tmp_path)
    assert path.name == "step_00000100.pt" and loaded["step"] == 100


def test_a_leftover_temporary_file_is_ignored_and_removed_by_prune(tmp_path):
    save_checkpoint(step_checkpoint_path(tmp_path, 1), payload(1))
    folder = tmp_path / CHECKPOINT_DIR
    # what a process killed inside atomic_write leaves: a hidden, partly written temporary file
    leftover = folder / ".step_00000002.pt.k3j9x.tmp"
    leftover.write_bytes(step_checkpoint_path(tmp_path, 1).read_bytes()[:100])
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_00000001.pt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path)[1]["step"] == 1
    prune_checkpoints(tmp_path, keep_last=3)
    assert not leftover.exists() and step_checkpoint_path(tmp_path, 1).exists()


def test_a_foreign_file_is_not_an_xraysyn_checkpoint(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, plain)  # loads fine, but has no format tag
    with pytest.raises(CheckpointError, match="is not an xraysyn training checkpoint"):
        load_checkpoint(plain)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor_only)
    with pytest.raises(CheckpointError, match="is not an xraysyn training checkpoint"):
        load_checkpoint(tensor_only)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a folder


def test_a_checkpoint_of_another_stage_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "refiner.pt", payload(4, stage="refiner"))
    with pytest.raises(CheckpointError, match="of stage 'refiner', not 'prior'"):
        load_checkpoint(path, stage=STAGE)
    assert load_checkpoint(path)["stage"] == "refiner"  # no stage asked: any stage loads
    # latest_checkpoint skips it (with a warning) rather than resuming another stage's run
    save_checkpoint(step_checkpoint_path(tmp_path, 4), payload(4, stage="refiner"))
    with pytest.warns(UserWarning, match="of stage 'refiner'"):
        assert latest_checkpoint(tmp_path, stage=STAGE) is None


@pytest.mark.parametrize("keep_last", [0, 1, 2, 5])
def test_prune_keeps_the_newest_k_and_best(tmp_path, keep_last):
    steps = [5, 10, 15, 100]
    for step in steps:
        save_checkpoint(step_checkpoint_path(tmp_path, step), {"stage": STAGE, "step": step})
    best = save_checkpoint(tmp_path / CHECKPOINT_DIR / BEST_NAME, {"stage": STAGE, "step": 10})
    prune_checkpoints(tmp_path, keep_last)
    kept = [step_checkpoint_path(tmp_path, s).name for s in steps[len(steps) - min(keep_last, len(steps)):]]
    assert [p.name for p in step_checkpoints(tmp_path)] == kept
    assert best.exists()


@pytest.mark.parametrize("keep_last", [-1, 1.5, True, "2"])
def test_prune_refuses_a_bad_count(tmp_path, keep_last):
    save_checkpoint(step_checkpoint_path(tmp_path, 1), {"stage": STAGE})
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last)
    assert step_checkpoint_path(tmp_path, 1).exists()


def test_prune_of_a_run_without_checkpoints_does_nothing(tmp_path):
    prune_checkpoints(tmp_path, 2)
    assert not (tmp_path / CHECKPOINT_DIR).exists()


def test_saving_over_an_existing_checkpoint_replaces_it_whole(tmp_path):
    path = step_checkpoint_path(tmp_path, 2)
    save_checkpoint(path, payload(1))
    save_checkpoint(path, payload(2))
    assert load_checkpoint(path)["step"] == 2

    # a payload torch.save cannot write (a lambda) fails without touching the previous file
    with pytest.raises(Exception):
        save_checkpoint(path, {"stage": STAGE, "bad": lambda: 0})
    assert load_checkpoint(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]
