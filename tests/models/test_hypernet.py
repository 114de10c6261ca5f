"""Hypernetwork M (supplementary Table 2) and the per-sample 1×1 convolution."""

import pytest
import torch
import torch.nn.functional as F

from xraysyn.models import HyperNetworkConfig, HyperNetworkInputError, HyperNetworkM, per_sample_conv1x1
from xraysyn.models.hypernet import convolutions_to_one_pixel

K = 9  # 3×3 kernel weights per (input, output) channel pair

# Table 2 by hand: eight K3 S2 P1 convolutions with bias, channels 1→32→…→4096.
#   conv0     1→32      9·1·32     + 32     =        320
#   conv1    32→64      9·32·64    + 64     =     18,496
#   conv2    64→128     9·64·128   + 128    =     73,856
#   conv3   128→256     9·128·256  + 256    =    295,168
#   conv4   256→512     9·256·512  + 512    =  1,180,160
#   conv5   512→1024    9·512·1024 + 1024   =  4,719,616
#   conv6  1024→2048    9·1024·2048 + 2048  = 18,876,416
#   conv7  2048→4096    9·2048·4096 + 4096  = 75,501,568
#   total                                   = 100,665,600
TABLE2_CHANNELS = [1, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TABLE2_PARAMETERS = 100_665_600


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_hand_count_adds_up():
    rows = [320, 18_496, 73_856, 295_168, 1_180_160, 4_719_616, 18_876_416, 75_501_568]
    assert rows == [K * a * b + b for a, b in zip(TABLE2_CHANNELS[:-1], TABLE2_CHANNELS[1:])]
    assert sum(rows) == TABLE2_PARAMETERS


def test_paper_parameter_count_and_layers():
    with torch.device("meta"):
        model = HyperNetworkM(HyperNetworkConfig.paper())
    count = _count(model)
    print(f"paper M parameters: {count:,}")
    assert count == TABLE2_PARAMETERS
    assert [model.convs[0].in_channels] + [c.out_channels for c in model.convs] == TABLE2_CHANNELS
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (1, 1) for c in model.convs)


def test_paper_output_shape_on_meta_device():
    with torch.device("meta"):
        model = HyperNetworkM(HyperNetworkConfig.paper())
        sizes = []
        for layer in model.convs:
            layer.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
        out = model(torch.empty(3, 1, 256, 256))
    assert tuple(out.shape) == (3, 64, 64)
    assert sizes == [128, 64, 32, 16, 8, 4, 2, 1]  # "decreases four times" in area per layer


# preset → (input edge, features, widths)
PRESETS = {
    "paper": (256, 64, (32, 64, 128, 256, 512, 1024, 2048, 4096)),
    "cpu64": (128, 32, (8, 16, 32, 64, 128, 256, 1024)),
    "small": (32, 8, (4, 8, 16, 32, 64)),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_table(name):
    size, features, widths = PRESETS[name]
    config = HyperNetworkConfig.preset(name)
    assert (config.input_size, config.features, config.widths) == (size, features, widths)
    assert widths[-1] == features ** 2
    hand = sum(K * a * b + b for a, b in zip((1, *widths[:-1]), widths))
    with torch.device("meta"):
        model = HyperNetworkM(config)
        out = model(torch.empty(2, 1, size, size))
    assert _count(model) == hand
    assert tuple(out.shape) == (2, features, features)


def test_small_forward_real_values():
    model = HyperNetworkM(HyperNetworkConfig.small())
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 8, 8)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # per-sample weights differ with the input


def test_output_is_last_conv_read_row_major():
    """W[n, o, i] is channel o·F + i of the last convolution's 1×1 output (the release's layout)."""
    model = HyperNetworkM(HyperNetworkConfig.small())
    x = torch.rand(2, 1, 32, 32)
    h = x
    for index, layer in enumerate(model.convs):
        h = layer(h)
        if index < len(model.convs) - 1:
            h = torch.relu(h)
    assert h.shape == (2, 64, 1, 1)
    weights = model(x)
    for o in range(8):
        for i in range(8):
            torch.testing.assert_close(weights[:, o, i], h[:, o * 8 + i, 0, 0])


@pytest.mark.parametrize("size, count", [(2, 1), (3, 2), (4, 2), (5, 3), (128, 7), (129, 8), (200, 8), (256, 8)])
def test_convolutions_to_one_pixel(size, count):
    # independent truth: ceil-halving ⌈s / 2⌉ until 1, counted
    steps, s = 0, size
    while s > 1:
        s = -(-s // 2)
        steps += 1
    assert steps == count
    assert convolutions_to_one_pixel(size) == count


def test_doubling_builds_table2():
    assert HyperNetworkConfig.doubling(64, 256, 32) == HyperNetworkConfig.paper()
    config = HyperNetworkConfig.doubling(features=4, input_size=200, base_width=2)
    assert config.widths == (2, 4, 8, 16, 32, 64, 128, 16)
    with torch.device("meta"):
        assert HyperNetworkM(config)(torch.empty(1, 1, 200, 200)).shape == (1, 4, 4)


def _reference_per_sample(x, weights):
    return torch.cat([F.conv2d(x[n:n + 1], weights[n][:, :, None, None]) for n in range(x.shape[0])])


@pytest.mark.parametrize("n, c_in, c_out, h, w", [(1, 3, 5, 4, 6), (4, 8, 8, 7, 5), (3, 6, 2, 1, 1)])
def test_per_sample_conv_equals_conv2d_sample_by_sample(n, c_in, c_out, h, w):
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    weights = torch.randn(n, c_out, c_in, dtype=torch.float64)
    out = per_sample_conv1x1(x, weights)
    assert out.shape == (n, c_out, h, w)
    torch.testing.assert_close(out, _reference_per_sample(x, weights), rtol=1e-12, atol=1e-12)
    # and in float32 too
    torch.testing.assert_close(per_sample_conv1x1(x.float(), weights.float()),
                               _reference_per_sample(x, weights).float(), rtol=1e-5, atol=1e-5)


def test_per_sample_conv_with_hypernetwork_weights():
    model = HyperNetworkM(HyperNetworkConfig.small())
    weights = model(torch.rand(3, 1, 32, 32))
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(per_sample_conv1x1(x, weights), _reference_per_sample(x, weights))


def test_per_sample_conv_gradcheck():
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(per_sample_conv1x1, (x, weights))
    assert torch.autograd.gradgradcheck(per_sample_conv1x1, (x, weights))


@pytest.mark.parametrize("x, weights, match", [
    (torch.zeros(2, 3, 4), torch.zeros(2, 3, 3), "x must be"),
    (torch.zeros(2, 3, 4, 4, dtype=torch.int64), torch.zeros(2, 3, 3), "x must be"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 3, 1, 1), "weights must be"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 5, 3), r"expected \(2, C_out, 3\)"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4), r"expected \(2, C_out, 3\)"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 3, dtype=torch.float64), "dtype"),
    ("image", torch.zeros(2, 5, 3), "x must be"),
])
def test_per_sample_conv_bad_inputs(x, weights, match):
    with pytest.raises(HyperNetworkInputError, match=match):
        per_sample_conv1x1(x, weights)


@pytest.mark.parametrize("radiograph, match", [
    (torch.zeros(2, 1, 16, 16), r"\(N, 1, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32), r"\(N, 1, 32, 32\)"),
    (torch.zeros(1, 32, 32), "floating-point"),
    (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "floating-point"),
    (torch.zeros(0, 1, 32, 32), r"\(N, 1, 32, 32\)"),
])
def test_bad_radiograph(radiograph, match):
    model = HyperNetworkM(HyperNetworkConfig.small())
    with pytest.raises(HyperNetworkInputError, match=match):
        model(radiograph)


@pytest.mark.parametrize("kwargs, match", [
    ({"features": 0}, "features"),
    ({"input_size": 1, "widths": ()}, "at least 2"),
    ({"input_size": 256, "widths": (32, 4096)}, "exactly 8"),
    ({"features": 8, "input_size": 4, "widths": (4, 63)}, "features\\*\\*2 = 64"),
    ({"widths": (32, 64, 0, 256, 512, 1024, 2048, 4096)}, "positive integers"),
    ({"widths": 5}, "sequence"),
])
def test_bad_config_is_one_value_error(kwargs, match):
    with pytest.raises(HyperNetworkInputError, match=match):
        HyperNetworkConfig(**kwargs)
    assert issubclass(HyperNetworkInputError, ValueError)


def test_bad_preset_and_config_type():
    with pytest.raises(ValueError, match="preset"):
        HyperNetworkConfig.preset("huge")
    with pytest.raises(ValueError, match="HyperNetworkConfig"):
        HyperNetworkM("paper")
