"""3D PriorNet (paper Table 3) structure, shapes and the HU / mask conversions."""

import math

import pytest
import torch

from xraysyn.models import (
    HUScale,
    PriorNet3D,
    PriorNetConfig,
    PriorNetInputError,
    mask_probability_from_tanh,
    mask_tanh_from_probability,
)

K = 27  # 3×3×3 kernel weights per (input, output) channel pair

# Parameter count of Table 3, by hand. Convolutions followed by BatchNorm have no bias (documented
# choice); conv0 and the final conv have one. BatchNorm3d: weight + bias = 2 per channel.
#   encoder  conv0   1→96    27·1·96     + 96 bias          =      2,688
#            conv1  96→192   27·96·192   + BN 2·192         =    498,048
#            conv2 192→384   27·192·384  + BN 2·384         =  1,991,424
#            conv3 384→768   27·384·768  + BN 2·768         =  7,964,160
#            conv4 768→768   27·768·768  + BN 2·768         = 15,926,784
#            conv5 768→768   (same)                         = 15,926,784
#   decoder  conv6  768→768  (same)                         = 15,926,784
#            conv7 1536→768  27·1536·768 + BN 2·768         = 31,852,032
#            conv8 1536→384  27·1536·384 + BN 2·384         = 15,926,016
#            conv9  768→192  27·768·192  + BN 2·192         =  3,981,696
#            conv10 384→96   27·384·96   + BN 2·96          =    995,520
#            final  192→2    27·192·2    + 2 bias           =     10,370
#   total                                                   = 111,002,306
TABLE3_PARAMETERS = 111_002_306
TABLE3_ENCODER = [(1, 96), (96, 192), (192, 384), (384, 768), (768, 768), (768, 768)]
TABLE3_DECODER = [(768, 768), (1536, 768), (1536, 384), (768, 192), (384, 96)]
TABLE3_HEAD = (192, 2)


def _paper_on_meta() -> PriorNet3D:
    with torch.device("meta"):
        return PriorNet3D(PriorNetConfig.paper())


def test_hand_count_adds_up():
    rows = [K * 1 * 96 + 96, K * 96 * 192 + 384, K * 192 * 384 + 768, K * 384 * 768 + 1536,
            K * 768 * 768 + 1536, K * 768 * 768 + 1536, K * 768 * 768 + 1536, K * 1536 * 768 + 1536,
            K * 1536 * 384 + 768, K * 768 * 192 + 384, K * 384 * 96 + 192, K * 192 * 2 + 2]
    assert sum(rows) == TABLE3_PARAMETERS


def test_paper_parameter_count_matches_table3():
    model = _paper_on_meta()
    assert sum(p.numel() for p in model.parameters()) == TABLE3_PARAMETERS


def test_paper_layers_match_table3():
    model = _paper_on_meta()
    enc = [(b.conv.in_channels, b.conv.out_channels) for b in model.encoder]
    dec = [(b.conv.in_channels, b.conv.out_channels) for b in model.decoder]
    assert enc == TABLE3_ENCODER
    assert dec == TABLE3_DECODER
    assert (model.head.conv.in_channels, model.head.conv.out_channels) == TABLE3_HEAD
    assert all(b.conv.stride == (2, 2, 2) and b.conv.kernel_size == (3, 3, 3) and b.conv.padding == (1, 1, 1)
               for b in model.encoder)
    assert all(b.conv.stride == (1, 1, 1) for b in [*model.decoder, model.head])
    # conv0 has no BatchNorm, conv1..conv5 and every decoder conv do; the head ends in tanh.
    assert not hasattr(model.encoder[0], "norm")
    assert all(isinstance(b.norm, torch.nn.BatchNorm3d) for b in [*model.encoder[1:], *model.decoder])
    assert all(b.act.negative_slope == pytest.approx(0.2) for b in model.encoder)
    assert all(isinstance(b.act, torch.nn.ReLU) for b in model.decoder)
    assert isinstance(model.head.act, torch.nn.Tanh)
    assert all(b.upsample.mode == "trilinear" and b.upsample.scale_factor == 2 for b in [*model.decoder, model.head])


def test_paper_shapes_on_meta_device():
    model = _paper_on_meta()
    shapes = []
    for block in model.decoder:
        block.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    out = model(torch.empty(1, 1, 128, 128, 128, device="meta"))
    assert tuple(out.shape) == (1, 2, 128, 128, 128)
    # conv6..conv10 outputs (before concatenation): 4³…64³
    assert shapes == [(1, 768, 4, 4, 4), (1, 768, 8, 8, 8), (1, 384, 16, 16, 16), (1, 192, 32, 32, 32),
                      (1, 96, 64, 64, 64)]


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_small_preset_output_shape_and_range(norm):
    config = PriorNetConfig(widths=(4, 8, 8), norm=norm)
    model = PriorNet3D(config)
    x = 50.0 * torch.randn(2, 1, 16, 8, 24)  # large inputs drive tanh to saturation
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, 16, 8, 24)
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) <= 1.0
    assert float(out.std()) > 0


def test_small_preset_backward_reaches_first_conv():
    model = PriorNet3D(PriorNetConfig.small())
    model(torch.randn(1, 1, 16, 16, 16)).square().mean().backward()
    assert float(model.encoder[0].conv.weight.grad.abs().sum()) > 0


def test_spatial_size_must_be_divisible():
    model = PriorNet3D(PriorNetConfig.small())
    assert model.config.size_divisor == 8
    with pytest.raises(PriorNetInputError, match="multiples of 8"):
        model(torch.zeros(1, 1, 16, 12, 16))
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 2, 16, 16, 16))


@pytest.mark.parametrize("kwargs", [{"widths": ()}, {"widths": (8, 0)}, {"norm": "group"},
                                    {"in_channels": 0}, {"negative_slope": -1.0}])
def test_bad_config_is_one_value_error(kwargs):
    with pytest.raises(ValueError):
        PriorNetConfig(**kwargs)
    with pytest.raises(ValueError, match="preset"):
        PriorNetConfig.preset("huge")


def test_hu_scale_endpoints_and_round_trip():
    scale = HUScale(-1000.0, 1000.0)
    hu = torch.tensor([-1000.0, 0.0, 1000.0, 250.0], dtype=torch.float64)
    # closed form: n = hu / 1000 for a window symmetric about 0 with half-width 1000
    torch.testing.assert_close(scale.to_normalized(hu), hu / 1000.0)
    default = HUScale()
    values = torch.linspace(default.min_hu, default.max_hu, 101, dtype=torch.float64)
    torch.testing.assert_close(default.to_hu(default.to_normalized(values)), values)
    assert float(default.to_normalized(torch.tensor(-3000.0))) == -1.0  # clamped below the window
    assert float(default.to_normalized(torch.tensor(5000.0))) == 1.0
    with pytest.raises(ValueError, match="max_hu"):
        HUScale(100.0, 100.0)


def test_mask_conversions():
    t = torch.linspace(-1, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(mask_probability_from_tanh(t), torch.linspace(0, 1, 11, dtype=torch.float64))
    torch.testing.assert_close(mask_tanh_from_probability(mask_probability_from_tanh(t)), t)
    # (tanh(x) + 1) / 2 is the logistic sigmoid of 2x
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    expected = 1.0 / (1.0 + torch.exp(-2.0 * x))
    torch.testing.assert_close(mask_probability_from_tanh(torch.tanh(x)), expected)
    assert math.isclose(float(mask_probability_from_tanh(torch.tensor(1.0 + 1e-7))), 1.0)
