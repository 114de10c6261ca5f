"""PatchGAN discriminator D (pix2pix n_layers=3, 64 filters, instance norm)."""

import pytest
import torch
from torch import nn

from xraysyn.models import DiscriminatorConfig, DiscriminatorInputError, PatchDiscriminator

K = 16  # 4×4 kernel weights per (input, output) channel pair

# Paper/release D by hand (1 input channel, f = 64, L = 3). Convolutions before a (non-affine)
# instance norm have no bias; instance norm without affine has no parameters.
#   conv0 K4 S2    1→64    16·1·64 + 64   =      1,088
#   conv1 K4 S2   64→128   16·64·128      =    131,072
#   conv2 K4 S2  128→256   16·128·256     =    524,288
#   conv3 K4 S1  256→512   16·256·512     =  2,097,152
#   conv4 K4 S1  512→1     16·512 + 1     =      8,193
#   total                                 =  2,761,793   (pix2pix: + 128 + 256 + 512 biases)
PAPER_D_PARAMETERS = 2_761_793
PAPER_CHANNELS = [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1)]


def _convs(model):
    return [m for m in model.layers if isinstance(m, nn.Conv2d)]


def test_hand_count_adds_up():
    rows = [K * 1 * 64 + 64, K * 64 * 128, K * 128 * 256, K * 256 * 512, K * 512 + 1]
    assert sum(rows) == PAPER_D_PARAMETERS


def test_paper_parameter_count_and_layout():
    model = PatchDiscriminator(DiscriminatorConfig.paper())
    count = sum(p.numel() for p in model.parameters())
    print(f"paper D parameters: {count:,}")
    assert count == PAPER_D_PARAMETERS
    convs = _convs(model)
    assert [(c.in_channels, c.out_channels) for c in convs] == PAPER_CHANNELS
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)] * 2
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    norms = [m for m in model.layers if isinstance(m, nn.InstanceNorm2d)]
    assert [n.num_features for n in norms] == [128, 256, 512]
    assert not any(n.affine for n in norms)
    acts = [m for m in model.layers if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == pytest.approx(0.2) for a in acts)
    assert isinstance(model.layers[-1], nn.Conv2d)  # raw logits, no activation


def _edge(size, layers):
    """Independent edge arithmetic: K4 P1 stride s maps n to floor((n + 2 - 4) / s) + 1."""
    for _ in range(layers):
        size = (size - 2) // 2 + 1
    return size - 2  # two stride-1 K4 P1 convolutions each remove one pixel


@pytest.mark.parametrize("name, size, out", [("paper", 256, 30), ("paper", 128, 14), ("cpu64", 128, 14),
                                             ("small", 32, 6), ("small", 16, 2)])
def test_shape_table(name, size, out):
    config = DiscriminatorConfig.preset(name)
    assert _edge(size, config.layers) == out == config.output_size(size)
    device = "meta" if name == "paper" else "cpu"
    with torch.device(device), torch.no_grad():
        logits = PatchDiscriminator(config)(torch.rand(2, 1, size, size))
    assert tuple(logits.shape) == (2, 1, out, out)


def test_receptive_field_is_70_pixels_plus_the_blur():
    """Each paper logit depends on a 70 × 70 window of the (blurred) input, 72 × 72 of the input itself: the
    gradient of one logit w.r.t. the input (without normalisation, which mixes all positions; the convolution
    geometry is the paper's)."""
    model = PatchDiscriminator(DiscriminatorConfig(norm="none")).double()
    image = torch.rand(1, 1, 96, 96, dtype=torch.float64, requires_grad=True)
    logits = model(image)
    assert logits.shape == (1, 1, 10, 10)
    logits[0, 0, 5, 5].backward()
    rows = torch.nonzero(image.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(image.grad[0, 0].abs().sum(0)).flatten()
    # receptive field, from the last convolution back to the input: r ← (r − 1)·stride + kernel
    r = 1
    for stride in (1, 1, 2, 2, 2):  # from the last conv back to the input
        r = (r - 1) * stride + 4
    assert r == 70
    r += 3 - 1  # the 3×3 binomial filter in front
    assert int(rows.max() - rows.min()) + 1 == r and int(cols.max() - cols.min()) + 1 == r


def test_binomial_blur_closed_forms():
    """Constants pass, patterns alternating every pixel vanish (reflect padding keeps the alternation: everywhere),
    a delta gives the [1,2,1]²/16 kernel."""
    from xraysyn.models.discriminator import binomial_blur

    constant = torch.full((2, 3, 9, 11), 0.7, dtype=torch.float64)
    torch.testing.assert_close(binomial_blur(constant), constant)
    i, j = torch.meshgrid(torch.arange(12), torch.arange(13), indexing="ij")
    for pattern in ((-1.0) ** i, (-1.0) ** j, (-1.0) ** (i + j)):
        assert float(binomial_blur(pattern.double()[None, None]).abs().max()) < 1e-15
    delta = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    delta[0, 0, 2, 2] = 1.0
    expected = torch.outer(torch.tensor([1.0, 2, 1]), torch.tensor([1.0, 2, 1])) / 16
    torch.testing.assert_close(binomial_blur(delta)[0, 0, 1:4, 1:4], expected.double())


def test_d_cannot_see_a_sub_pixel_pattern():
    """Adding any zero-mean 2×2 tiled pattern to an image leaves D's logits unchanged (so the generator gets no
    gradient toward one); the PatchGAN layers alone do see it."""
    torch.manual_seed(0)
    model = PatchDiscriminator(DiscriminatorConfig(filters=8, layers=2)).double()
    image = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    tile = torch.randn(2, 2, dtype=torch.float64)
    pattern = (tile - tile.mean()).repeat(20, 20)[None, None]
    with torch.no_grad():
        torch.testing.assert_close(model(image + 0.1 * pattern), model(image), rtol=0, atol=1e-12)
        assert float((model.layers(image + 0.1 * pattern) - model.layers(image)).abs().max()) > 1e-3


@pytest.mark.parametrize("norm, kind, with_bias", [("batch", nn.BatchNorm2d, False), ("none", None, True)])
def test_other_norms(norm, kind, with_bias):
    model = PatchDiscriminator(DiscriminatorConfig(filters=8, layers=2, norm=norm))
    convs = _convs(model)
    assert all((c.bias is not None) == with_bias for c in convs[1:-1])
    norms = [m for m in model.layers if kind is not None and isinstance(m, kind)]
    assert len(norms) == (0 if kind is None else 2)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 1, 6, 6)


def test_backward_reaches_first_conv():
    model = PatchDiscriminator(DiscriminatorConfig.small())
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    assert float(_convs(model)[0].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("images, match", [
    (torch.zeros(2, 1, 11, 11), "too small"),
    (torch.zeros(2, 1, 32, 11), "too small"),
    (torch.zeros(2, 3, 32, 32), r"\(N, 1, H, W\)"),
    (torch.zeros(1, 32, 32), "floating-point"),
    (torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "floating-point"),
    (torch.zeros(0, 1, 32, 32), "N >= 1"),
    ([[0.0]], "floating-point"),
])
def test_bad_inputs(images, match):
    with pytest.raises(DiscriminatorInputError, match=match):
        PatchDiscriminator(DiscriminatorConfig.small())(images)


@pytest.mark.parametrize("kwargs", [{"filters": 0}, {"layers": 0}, {"norm": "group"}, {"in_channels": 1.0},
                                    {"negative_slope": -0.1}, {"negative_slope": float("nan")}])
def test_bad_config_is_one_value_error(kwargs):
    with pytest.raises(DiscriminatorInputError, match=next(iter(kwargs))):
        DiscriminatorConfig(**kwargs)
    with pytest.raises(ValueError, match="preset"):
        DiscriminatorConfig.preset("huge")
    with pytest.raises(ValueError, match="DiscriminatorConfig"):
        PatchDiscriminator("paper")
