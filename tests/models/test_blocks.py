import pytest
import torch
from torch import nn

from xraysyn.models.blocks import ConvBlock, conv, norm_layer, upsample


@pytest.mark.parametrize("spatial_dims, size, stride, upsample_factor, out_size", [
    (2, 16, 1, None, 16), (2, 16, 2, None, 8), (2, 8, 1, 2, 16),
    (3, 8, 1, None, 8), (3, 8, 2, None, 4), (3, 4, 1, 2, 8),
])
def test_shape_table(spatial_dims, size, stride, upsample_factor, out_size):
    block = ConvBlock(spatial_dims, 3, 5, 3, stride=stride, norm="instance", activation=nn.ReLU(),
                      upsample_factor=upsample_factor)
    x = torch.randn(2, 3, *(size,) * spatial_dims)
    assert block(x).shape == (2, 5, *(out_size,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm, conv_bias, norm_params", [("none", 1, 0), ("batch", 0, 2), ("instance", 0, 2)])
def test_parameter_counts(spatial_dims, norm, conv_bias, norm_params):
    block = ConvBlock(spatial_dims, 4, 6, 3, norm=norm)
    weights = 6 * 4 * 3 ** spatial_dims
    assert sum(p.numel() for p in block.parameters()) == weights + 6 * conv_bias + 6 * norm_params
    assert [name for name, _ in block.named_children()] == (["conv"] if norm == "none" else ["conv", "norm"])


def test_pieces_match_torch_layers():
    torch.manual_seed(0)
    layer = conv(2, 2, 3, 5)
    assert isinstance(layer, nn.Conv2d) and layer.padding == (2, 2)
    assert isinstance(norm_layer(3, "batch", 4), nn.BatchNorm3d)
    assert norm_layer(2, "none", 4) is None
    x = torch.randn(1, 1, 3, 3, 3)
    expected = nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    assert torch.equal(upsample(3, 2)(x), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        conv(4, 1, 1, 3)
    with pytest.raises(ValueError, match="norm"):
        norm_layer(2, "group", 4)
