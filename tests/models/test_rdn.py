"""Residual dense network F of the 2D RefineNet: structure, parameter counts, data flow."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xraysyn.models import RDN, RDNConfig, RDNInputError, ResidualDenseBlock
from xraysyn.models.rdn import icnr_

K = 9  # 3×3 kernel weights per (input, output) channel pair

# The paper's F by hand (D = 16 blocks, C = 8 layers, G = 64, G0 = 64, 2 → 2 channels, ×2), every
# convolution with a bias (as in the release):
#   shallow1          2→64    9·2·64 + 64                          =      1,216
#   shallow2         64→64    9·64·64 + 64                         =     36,928
#   dense layer c    64+64c→64  9·(64+64c)·64 + 64, c = 0…7, sum   =  1,327,616
#   local fusion    576→64    576·64 + 64  (1×1)                   =     36,928
#   16 blocks       16 · (1,327,616 + 36,928)                      = 21,832,704
#   global fusion  1024→64    1024·64 + 64 (1×1)                   =     65,600
#                    64→64    9·64·64 + 64                         =     36,928
#   upsampler        64→256   9·64·256 + 256 (then pixel shuffle)  =    147,712
#                    64→2     9·64·2 + 2                           =      1,154
#   total                                                          = 22,122,242
PAPER_RDN_PARAMETERS = 22_122_242


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _hand_count(cfg: RDNConfig) -> int:
    g0, g, c, r = cfg.features, cfg.growth, cfg.layers_per_block, cfg.upscale
    shallow = (K * cfg.in_channels * g0 + g0) + (K * g0 * g0 + g0)
    block = sum(K * (g0 + i * g) * g + g for i in range(c)) + (g0 + c * g) * g0 + g0
    fusion = (cfg.blocks * g0 * g0 + g0) + (K * g0 * g0 + g0)
    up = (K * g0 * g * r * r + g * r * r) + (K * g * cfg.out_channels + cfg.out_channels)
    return shallow + cfg.blocks * block + fusion + up


def test_hand_count_adds_up():
    dense = [K * (64 + 64 * c) * 64 + 64 for c in range(8)]
    assert sum(dense) == 1_327_616
    rows = [1_216, 36_928, 16 * (sum(dense) + 36_928), 65_600, 36_928, 147_712, 1_154]
    assert sum(rows) == PAPER_RDN_PARAMETERS
    assert _hand_count(RDNConfig.paper()) == PAPER_RDN_PARAMETERS


@pytest.mark.parametrize("name", ["paper", "cpu64", "small"])
def test_parameter_counts(name):
    config = RDNConfig.preset(name)
    with torch.device("meta"):
        model = RDN(config)
    count = _count(model)
    print(f"{name} RDN parameters: {count:,}")
    assert count == _hand_count(config)
    if name == "paper":
        assert count == PAPER_RDN_PARAMETERS


def test_paper_structure():
    with torch.device("meta"):
        model = RDN(RDNConfig.paper())
    assert (model.shallow1.in_channels, model.shallow1.out_channels) == (2, 64)
    assert len(model.blocks) == 16
    for block in model.blocks:
        assert [(s[0].in_channels, s[0].out_channels) for s in block.layers] == [(64 + 64 * c, 64) for c in range(8)]
        assert all(s[0].kernel_size == (3, 3) and isinstance(s[1], nn.ReLU) for s in block.layers)
        assert (block.fusion.in_channels, block.fusion.out_channels, block.fusion.kernel_size) == (576, 64, (1, 1))
    gff1, gff3, act = model.global_fusion
    assert (gff1.in_channels, gff1.out_channels, gff1.kernel_size) == (1024, 64, (1, 1))
    assert (gff3.in_channels, gff3.out_channels, gff3.kernel_size) == (64, 64, (3, 3))
    assert isinstance(act, nn.ReLU)
    up, shuffle, out = model.upsampler
    assert (up.in_channels, up.out_channels) == (64, 256)
    assert isinstance(shuffle, nn.PixelShuffle) and shuffle.upscale_factor == 2
    assert (out.in_channels, out.out_channels) == (64, 2)


# preset → (input h, w) → output (h', w')
SHAPES = [("paper", (128, 128), (256, 256)), ("cpu64", (64, 64), (128, 128)), ("small", (16, 16), (32, 32)),
          ("small", (12, 20), (24, 40)), ("small", (1, 1), (2, 2))]


@pytest.mark.parametrize("name, size, out_size", SHAPES)
def test_shape_table(name, size, out_size):
    config = RDNConfig.preset(name)
    device = "meta" if name == "paper" else "cpu"
    with torch.device(device):
        model = RDN(config)
        weights = torch.randn(2, config.features, config.features) / config.features ** 0.5
        with torch.no_grad():
            out = model(torch.rand(2, 2, *size), weights)
    assert tuple(out.shape) == (2, 2, *out_size)
    if device == "cpu":
        assert torch.isfinite(out).all()


def _pixel_shuffle(x, r):
    """Independent sub-pixel rearrangement: out[n, c, h·r + i, w·r + j] = x[n, c·r² + i·r + j, h, w]."""
    n, c, h, w = x.shape
    out = torch.empty(n, c // (r * r), h * r, w * r, dtype=x.dtype)
    for ch in range(c // (r * r)):
        for i in range(r):
            for j in range(r):
                out[:, ch, i::r, j::r] = x[:, ch * r * r + i * r + j]
    return out


def _reference_forward(model: RDN, x, weights):
    """F written out layer by layer with F.conv2d on the model's parameters (float64)."""
    def c(layer, t):
        return F.conv2d(t, layer.weight, layer.bias, padding=layer.kernel_size[0] // 2)

    shallow = c(model.shallow1, x)
    feat = c(model.shallow2, shallow)
    outputs = []
    for block in model.blocks:
        inputs = [feat]
        for layer in block.layers:
            inputs.append(torch.relu(c(layer[0], torch.cat(inputs, 1))))
        feat = c(block.fusion, torch.cat(inputs, 1)) + feat
        outputs.append(feat)
    gff1, gff3, _ = model.global_fusion
    fused = torch.relu(c(gff3, c(gff1, torch.cat(outputs, 1)))) + shallow
    mixed = torch.einsum("noc,nchw->nohw", weights, fused)
    up, _, out = model.upsampler
    return c(out, _pixel_shuffle(c(up, mixed), model.config.upscale))


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_forward_matches_layer_by_layer_reference(upscale):
    config = RDNConfig(blocks=2, layers_per_block=3, growth=4, features=6, upscale=upscale)
    model = RDN(config).double()
    x = torch.rand(2, 2, 5, 7, dtype=torch.float64)
    weights = torch.randn(2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, weights), _reference_forward(model, x, weights), rtol=1e-10, atol=1e-12)


def test_block_with_zero_fusion_is_identity():
    block = ResidualDenseBlock(features=6, growth=4, layers=3).double()
    nn.init.zeros_(block.fusion.weight)
    nn.init.zeros_(block.fusion.bias)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), x)  # the local residual alone


def test_samples_are_independent():
    model = RDN(RDNConfig.small())
    x = torch.rand(3, 2, 8, 8)
    weights = torch.randn(3, 8, 8)
    with torch.no_grad():
        together = model(x, weights)
        for n in range(3):
            torch.testing.assert_close(together[n:n + 1], model(x[n:n + 1], weights[n:n + 1]), rtol=1e-5, atol=1e-6)
        swapped = model(x, weights.flip(0))
    assert not torch.allclose(swapped[0], together[0])  # the weights do change sample 0


def test_backward_reaches_first_layer_and_weights():
    model = RDN(RDNConfig.small())
    weights = torch.randn(2, 8, 8, requires_grad=True)
    model(torch.rand(2, 2, 8, 8), weights).square().mean().backward()
    assert float(model.shallow1.weight.grad.abs().sum()) > 0
    assert float(weights.grad.abs().sum()) > 0


@pytest.mark.parametrize("x, weights, match", [
    (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8), r"\(N, 2, h, w\)"),
    (torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), "floating-point"),
    (torch.zeros(1, 2, 8, 8, dtype=torch.int32), torch.zeros(1, 8, 8), "floating-point"),
    (torch.zeros(1, 2, 0, 8), torch.zeros(1, 8, 8), "h, w >= 1"),
    (torch.zeros(2, 2, 8, 8), torch.zeros(1, 8, 8), r"\(2, 8, 8\)"),
    (torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 4), r"\(2, 8, 8\)"),
    (torch.zeros(2, 2, 8, 8), None, r"\(2, 8, 8\)"),
    (torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.float64), "dtype"),
])
def test_bad_inputs(x, weights, match):
    model = RDN(RDNConfig.small())
    with pytest.raises(RDNInputError, match=match):
        model(x, weights)


@pytest.mark.parametrize("kwargs", [{"blocks": 0}, {"growth": -1}, {"features": 2.5}, {"upscale": True},
                                    {"in_channels": "2"}])
def test_bad_config_is_one_value_error(kwargs):
    with pytest.raises(RDNInputError, match=next(iter(kwargs))):
        RDNConfig(**kwargs)
    with pytest.raises(ValueError, match="preset"):
        RDNConfig.preset("huge")
    with pytest.raises(ValueError, match="RDNConfig"):
        RDN({"blocks": 2})


@pytest.mark.parametrize("upscale", [2, 3])
def test_upsampler_starts_as_nearest_neighbour(upscale):
    """ICNR: conv + pixel shuffle of a new RDN equal nearest-neighbour upsampling of a conv with C = G outputs
    (a float64 reference built from the first kernel of each sub-pixel group); every r×r block is constant."""
    torch.manual_seed(0)
    config = RDNConfig(blocks=1, layers_per_block=1, growth=4, features=6, upscale=upscale)
    up = RDN(config).double().upsampler[0].requires_grad_(False)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    shuffled = F.pixel_shuffle(up(x), upscale)
    first = slice(0, None, upscale * upscale)  # channel c·r² is sub-pixel (0, 0) of output channel c
    reference = F.conv2d(x, up.weight[first], up.bias[first], padding=1)
    torch.testing.assert_close(shuffled, F.interpolate(reference, scale_factor=upscale, mode="nearest"))
    blocks = shuffled.unfold(2, upscale, upscale).unfold(3, upscale, upscale)  # (N, C, h, w, r, r)
    assert float((blocks - blocks[..., :1, :1]).abs().max()) < 1e-12  # a random start: ~0.1
    # The kernels are those of a default-initialised conv with G outputs: same bound (1/sqrt(fan_in)).
    bound = 1.0 / (6 * 9) ** 0.5
    assert float(up.weight.abs().max()) <= bound and float(up.weight.abs().max()) > 0.5 * bound


def test_icnr_refuses_a_channel_count_that_is_not_a_multiple():
    with pytest.raises(ValueError, match="not a multiple of upscale"):
        icnr_(nn.Conv2d(4, 6, 3), 2)
