"""xraysyn.train.animation: a looping GIF with one grey range over all frames; bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from xraysyn.train.animation import GIF_TIME_UNIT_MS, save_view_sweep_gif
from xraysyn.train.figures import FigureInputError


def _sweep(count=5, shape=(24, 32)):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    # A blob moving right on a background that brightens from frame to frame.
    return [np.exp(-((cols - 8 - 4 * k) ** 2 + (rows - 12) ** 2) / 20.0) + 0.2 * k for k in range(count)]


def _frames_of(path):
    with Image.open(path) as gif:
        info = dict(gif.info)
        frames = [np.asarray(frame.convert("L"), dtype=np.float64) for frame in ImageSequence.Iterator(gif)]
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    return info, frames, durations


def test_gif_loops_forever_with_every_frame_and_the_duration(tmp_path):
    path = save_view_sweep_gif(tmp_path / "sweep" / "views.gif", _sweep(), duration_ms=120)
    assert path == tmp_path / "sweep" / "views.gif"
    info, frames, durations = _frames_of(path)
    assert info["loop"] == 0
    assert len(frames) == 5 and all(frame.shape == (24, 32) for frame in frames)
    assert durations == [120] * 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["views.gif"]


def test_frames_share_one_grey_range(tmp_path):
    # Frame k is the same pattern plus 0.2·k: with one common window the mean grey rises
    # frame by frame; per-frame windows would make all frames look alike.
    _, frames, _ = _frames_of(save_view_sweep_gif(tmp_path / "v.gif", _sweep()))
    means = [frame.mean() for frame in frames]
    assert all(later > earlier + 20 for earlier, later in zip(means, means[1:]))
    # The common window spans the 1-99 percentiles of all pixels: the darkest frame reaches black,
    # the brightest white.
    assert frames[0].min() == 0 and frames[-1].max() == 255


def test_frames_map_linearly_into_the_common_window(tmp_path):
    ramp = np.tile(np.linspace(0.0, 100.0, 101), (3, 1))
    _, frames, _ = _frames_of(save_view_sweep_gif(tmp_path / "r.gif", [ramp, ramp[:, ::-1].copy()]))
    # window (1, 99): value v → round((v - 1) / 98 · 255), clipped.
    expected = np.round(np.clip((ramp - 1.0) / 98.0, 0, 1) * 255)
    np.testing.assert_array_equal(frames[0], expected)


def test_labels_are_drawn_and_tensors_accepted(tmp_path):
    frames = [torch.zeros(32, 64) + k for k in range(3)]
    plain = _frames_of(save_view_sweep_gif(tmp_path / "plain.gif", frames))[1]
    labelled = _frames_of(save_view_sweep_gif(tmp_path / "labelled.gif", frames,
                                              labels=["az -9.0°", "az 0.0°", ""]))[1]
    assert (labelled[0] != plain[0]).any() and (labelled[1] != plain[1]).any()
    np.testing.assert_array_equal(labelled[2], plain[2])  # an empty label draws nothing
    assert (labelled[0][20:] == plain[0][20:]).all()  # the label stays in the top-left corner


def test_single_frame_and_non_finite_pixels(tmp_path):
    frame = np.linspace(0, 1, 64).reshape(8, 8)
    frame[0, 0], frame[0, 1] = np.nan, np.inf
    _, frames, _ = _frames_of(save_view_sweep_gif(tmp_path / "one.gif", [frame]))
    assert len(frames) == 1 and frames[0][0, 0] == 0 and frames[0][0, 1] == 255


@pytest.mark.parametrize("kwargs, match", [
    (dict(frames=[]), "frames must be a non-empty list"),
    (dict(frames=np.zeros((3, 4))), "frames must be a non-empty list"),
    (dict(frames=[np.zeros((4, 4)), np.zeros((4, 5))]), r"frames\[1\] has shape \(4, 5\)"),
    (dict(frames=[np.zeros((4, 4, 3))]), r"frames\[0\] must be a 2-D array"),
    (dict(frames=[np.zeros((4, 4))], labels=["a", "b"]), "labels has 2 entries for 1 frames"),
    (dict(frames=[np.zeros((4, 4))], labels="a"), "labels must be a list of str"),
    (dict(frames=[np.zeros((4, 4))], labels=[3]), r"labels\[0\] must be a str"),
    (dict(frames=[np.zeros((4, 4))], duration_ms=0), f"multiple of {GIF_TIME_UNIT_MS} ms"),
    (dict(frames=[np.zeros((4, 4))], duration_ms=85), "multiple of"),
    (dict(frames=[np.zeros((4, 4))], duration_ms=80.0), "multiple of"),
])
def test_bad_inputs_raise_and_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(FigureInputError, match=match):
        save_view_sweep_gif(tmp_path / "out" / "views.gif", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_path_leaves_an_existing_file(tmp_path):
    with pytest.raises(FigureInputError, match="must end in .gif"):
        save_view_sweep_gif(tmp_path / "views.png", _sweep())
    path = save_view_sweep_gif(tmp_path / "views.gif", _sweep())
    before = path.read_bytes()
    with pytest.raises(FigureInputError):
        save_view_sweep_gif(path, _sweep() + [np.zeros((2, 2))])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views.gif"]
