"""X2CT-CNN baseline network: parameter counts by hand, shape tables per preset, the depth copy, bad inputs."""

from __future__ import annotations

import pytest
import torch

from xraysyn.models.x2ct import X2CTConfig, X2CTInputError, X2CTNet, parameter_count

K2, K3 = 3 * 3, 3 * 3 * 3  # weights per channel pair of a 3×3 and a 3×3×3 kernel
AFFINE_NORM = 2  # weight and bias per channel (batch norm, affine instance norm)


def _hand_count(widths, dense_layers, growth, in_channels=1, out_channels=2) -> int:
    """Parameters by the architecture of the module docstring (every norm preset here is batch/instance)."""
    total = 0
    previous = in_channels
    for level, w in enumerate(widths):
        total += K2 * previous * w + (w if level == 0 else AFFINE_NORM * w)  # down: bias at level 0, else norm
        for c in range(dense_layers):  # dense layers (bias) and the 1×1 local fusion (bias)
            total += K2 * (w + c * growth) * growth + growth
        if dense_layers:
            total += (w + dense_layers * growth) * w + w
        total += w * w + AFFINE_NORM * w  # bridge 1×1, no bias, norm
        previous = w
    total += K3 * widths[-1] ** 2 + AFFINE_NORM * widths[-1]  # bottleneck
    for level in range(len(widths) - 2, -1, -1):
        w = widths[level]
        total += K3 * widths[level + 1] * w + AFFINE_NORM * w  # up
        total += K3 * 2 * w * w + AFFINE_NORM * w  # fuse
    total += K3 * widths[0] * out_channels + out_channels  # head, bias
    return total


@pytest.mark.parametrize("name, expected", [("paper", 68_938_626), ("cpu64", 1_206_930), ("small", 4_734)])
def test_parameter_counts_match_a_hand_count(name, expected):
    config = X2CTConfig.preset(name)
    assert _hand_count(config.widths, config.dense_layers, config.growth) == expected
    assert parameter_count(config) == expected


@pytest.mark.parametrize("name, batch, side", [("small", 2, 16), ("small", 1, 32), ("cpu64", 1, 64),
                                                ("paper", 2, 128)])
def test_shape_table(name, batch, side):
    config = X2CTConfig.preset(name)
    device = "meta" if name == "paper" else "cpu"  # the paper network's shapes without its memory
    with torch.device(device):
        model = X2CTNet(config)
        image = torch.rand(batch, 1, side, side)
        shapes, x = [], image
        for block in model.encoder:
            x = block(x)
            shapes.append(tuple(x.shape))
        out = model(image)
    expected = [(batch, w, side // 2 ** (i + 1), side // 2 ** (i + 1)) for i, w in enumerate(config.widths)]
    assert shapes == expected
    assert tuple(out.shape) == (batch, 2, side, side, side)
    if device == "cpu":
        assert float(out.detach().abs().max()) <= 1.0


def test_copy_along_depth_is_constant_along_depth_and_keeps_the_image():
    features = torch.randn(2, 3, 4, 4)
    volume = X2CTNet.copy_along_depth(features)
    assert volume.shape == (2, 3, 4, 4, 4)
    for d in range(4):
        assert torch.equal(volume[:, :, d], features)


def test_gradients_reach_the_first_encoder_layer():
    model = X2CTNet(X2CTConfig.small())
    model(torch.rand(2, 1, 16, 16)).square().mean().backward()
    assert float(model.encoder[0].down.conv.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("image, match", [
    (torch.zeros(1, 16, 16), "floating-point"),
    (torch.zeros(1, 1, 16, 16, dtype=torch.int64), "floating-point"),
    (torch.zeros(1, 2, 16, 16), r"\(B, 1, S, S\)"),
    (torch.zeros(1, 1, 16, 8), "square"),
    (torch.zeros(1, 1, 10, 10), "multiple of 4"),
])
def test_bad_inputs(image, match):
    with pytest.raises(X2CTInputError, match=match):
        X2CTNet(X2CTConfig.small())(image)


@pytest.mark.parametrize("kwargs", [{"widths": ()}, {"widths": (4, 0)}, {"dense_layers": -1}, {"growth": 0},
                                    {"norm": "layer"}, {"negative_slope": float("nan")}, {"in_channels": True}])
def test_bad_configs(kwargs):
    with pytest.raises(X2CTInputError):
        X2CTConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(X2CTInputError, match="paper"):
        X2CTConfig.preset("huge")
