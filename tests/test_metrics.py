"""xraysyn.metrics against closed forms and an independent float64 numpy SSIM with explicit loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from xraysyn.metrics import (
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW_SIZE,
    MetricInputError,
    dice,
    gaussian_window_1d,
    mean_absolute_error,
    psnr,
    ssim,
)

# ------------------------------------------------------------------------------------------
# An independent SSIM: numpy float64, explicit loops over every valid window position, the
# window built directly in N-D (not separably), moments as weighted sums of centred values.
# ------------------------------------------------------------------------------------------


def _gaussian_window_nd(size: int, sigma: float, ndim: int) -> np.ndarray:
    centre = (size - 1) / 2
    window = np.zeros((size,) * ndim)
    for index in itertools.product(range(size), repeat=ndim):
        window[index] = math.exp(-sum((i - centre) ** 2 for i in index) / (2 * sigma ** 2))
    return window / window.sum()


def _ssim_loops(x: np.ndarray, y: np.ndarray, data_range: float, size: int, sigma: float,
                k1: float = SSIM_K1, k2: float = SSIM_K2) -> float:
    """SSIM of one single-channel image/volume ``x``, ``y`` (2-D or 3-D arrays)."""
    window = _gaussian_window_nd(size, sigma, x.ndim)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    values = []
    for start in itertools.product(*(range(n - size + 1) for n in x.shape)):
        region = tuple(slice(s, s + size) for s in start)
        px, py = x[region], y[region]
        mx = float((window * px).sum())
        my = float((window * py).sum())
        vx = float((window * (px - mx) ** 2).sum())
        vy = float((window * (py - my) ** 2).sum())
        cxy = float((window * (px - mx) * (py - my)).sum())
        values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _pair(shape, seed=0, noise=0.1):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    prediction = target + noise * torch.randn(shape, generator=generator, dtype=torch.float64)
    return prediction, target


# ------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.5, 0.01, 1e-4])
def test_psnr_of_a_constant_offset_is_the_closed_form(offset):
    target = torch.rand(3, 1, 8, 9, dtype=torch.float64)
    value = psnr(target + offset, target, data_range=2.0)
    assert value.shape == (3,) and value.dtype == torch.float64
    expected = 20 * math.log10(2.0 / offset)
    torch.testing.assert_close(value, torch.full((3,), expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_psnr_per_item_ranges_and_offsets():
    target = torch.zeros(2, 4, 5, 6, 7, dtype=torch.float64)  # volumes
    offsets = torch.tensor([0.1, 0.3], dtype=torch.float64)
    prediction = target - offsets.reshape(2, 1, 1, 1, 1)
    ranges = torch.tensor([1.0, 3.0], dtype=torch.float64)
    value = psnr(prediction, target, ranges)
    expected = 20 * torch.log10(ranges / offsets)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-9)


def test_psnr_against_a_numpy_mse():
    prediction, target = _pair((2, 3, 5, 4))
    p, t = prediction.numpy(), target.numpy()
    expected = [10 * math.log10(1.5 ** 2 / np.mean((p[i] - t[i]) ** 2)) for i in range(2)]
    torch.testing.assert_close(psnr(prediction, target, 1.5), torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_psnr_of_identical_items_is_infinite():
    target = torch.rand(2, 1, 4, 4)
    prediction = target.clone()
    prediction[1] += 0.1
    value = psnr(prediction, target, 1.0)
    assert math.isinf(value[0]) and value[0] > 0
    assert math.isfinite(value[1])


def test_psnr_accepts_every_float_dtype_and_computes_in_float64_on_cpu():
    target = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
    prediction = target + 0.01
    reference = psnr(prediction.double(), target.double(), 1.0)
    # float32 inputs: the only error is the rounding of the inputs themselves.
    torch.testing.assert_close(psnr(prediction, target, 1.0), reference, rtol=0, atol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        value = psnr(prediction.to(dtype), target.to(dtype), 1.0)
        assert value.dtype == torch.float64 and torch.isfinite(value).all()


def test_metrics_record_no_gradient():
    prediction = torch.rand(2, 1, 12, 12, requires_grad=True)
    target = torch.rand(2, 1, 12, 12)
    for value in (psnr(prediction, target, 1.0), ssim(prediction, target, 1.0),
                  mean_absolute_error(prediction, target), dice(prediction, target)):
        assert not value.requires_grad


def test_non_finite_predictions_propagate_per_item():
    target = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    prediction = target.clone()
    prediction[0, 0, 3, 3] = float("nan")
    assert torch.isnan(psnr(prediction, target, 1.0)[0]) and math.isinf(psnr(prediction, target, 1.0)[1])
    value = ssim(prediction, target, 1.0)
    assert torch.isnan(value[0]) and value[1] == 1


# ------------------------------------------------------------------------------------------
# MAE
# ------------------------------------------------------------------------------------------


def test_mean_absolute_error_closed_form():
    target = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    prediction = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]], dtype=torch.float64)
    torch.testing.assert_close(mean_absolute_error(prediction, target),
                               torch.tensor([1.0, 0.5], dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------


def test_gaussian_window_is_normalised_symmetric_and_gaussian():
    window = gaussian_window_1d(SSIM_WINDOW_SIZE, SSIM_SIGMA)
    assert window.shape == (SSIM_WINDOW_SIZE,)
    assert math.isclose(float(window.sum()), 1.0, rel_tol=0, abs_tol=1e-15)
    torch.testing.assert_close(window, window.flip(0), rtol=0, atol=0)
    centre = SSIM_WINDOW_SIZE // 2
    ratio = float(window[centre + 1] / window[centre])
    assert math.isclose(ratio, math.exp(-1 / (2 * SSIM_SIGMA ** 2)), rel_tol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 11, 11), (1, 1, 16, 13), (2, 1, 11, 12, 13)])
def test_ssim_of_identical_inputs_is_one(shape):
    target = torch.rand(shape, dtype=torch.float64)
    torch.testing.assert_close(ssim(target, target.clone(), 1.0), torch.ones(shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("a, b, data_range", [(0.2, 0.7, 1.0), (0.0, 0.05, 1.0), (10.0, 30.0, 255.0)])
def test_ssim_of_constant_images_is_the_luminance_term(a, b, data_range):
    # Constant images: σ_x = σ_y = σ_xy = 0, so the contrast-structure term is C2/C2 = 1 and
    # SSIM = (2ab + C1) / (a² + b² + C1) at every window.
    prediction = torch.full((1, 2, 12, 14), a, dtype=torch.float64)
    target = torch.full((1, 2, 12, 14), b, dtype=torch.float64)
    c1 = (SSIM_K1 * data_range) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert math.isclose(float(ssim(prediction, target, data_range)), expected, rel_tol=1e-12)


def test_ssim_2d_matches_the_loop_reference_default_window():
    prediction, target = _pair((2, 2, 13, 14), noise=0.2)
    value = ssim(prediction, target, 1.0)
    for n in range(2):
        expected = np.mean([_ssim_loops(prediction[n, c].numpy(), target[n, c].numpy(), 1.0,
                                        SSIM_WINDOW_SIZE, SSIM_SIGMA) for c in range(2)])
        assert math.isclose(float(value[n]), expected, rel_tol=0, abs_tol=1e-12)


def test_ssim_2d_matches_the_loop_reference_other_parameters_and_ranges():
    prediction, target = _pair((2, 1, 9, 10), seed=3, noise=0.3)
    ranges = torch.tensor([1.0, 4.0], dtype=torch.float64)
    value = ssim(prediction, target, ranges, window_size=5, sigma=1.0, k1=0.02, k2=0.05)
    for n in range(2):
        expected = _ssim_loops(prediction[n, 0].numpy(), target[n, 0].numpy(), float(ranges[n]), 5, 1.0,
                               k1=0.02, k2=0.05)
        assert math.isclose(float(value[n]), expected, rel_tol=0, abs_tol=1e-12)


def test_ssim_3d_matches_the_loop_reference():
    prediction, target = _pair((1, 1, 7, 8, 9), seed=5, noise=0.2)
    value = ssim(prediction, target, 1.0, window_size=5, sigma=1.2)
    expected = _ssim_loops(prediction[0, 0].numpy(), target[0, 0].numpy(), 1.0, 5, 1.2)
    assert math.isclose(float(value[0]), expected, rel_tol=0, abs_tol=1e-12)


def test_ssim_is_symmetric_and_falls_with_noise():
    target = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float64)
    values = [float(ssim(target + level * noise, target, 1.0)) for level in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]
    torch.testing.assert_close(ssim(target + 0.1 * noise, target, 1.0), ssim(target, target + 0.1 * noise, 1.0),
                               rtol=0, atol=1e-14)


def test_ssim_float32_inputs_match_float64_and_large_offsets_do_not_cancel():
    prediction, target = _pair((1, 1, 16, 16), seed=2)
    reference = ssim(prediction, target, 1.0)
    torch.testing.assert_close(ssim(prediction.float(), target.float(), 1.0), reference, rtol=0, atol=1e-6)
    # HU-like values: data on an offset of 1000 with range 2000.
    shifted = ssim(1000 + 2000 * prediction, 1000 + 2000 * target, 2000.0)
    assert math.isclose(float(shifted), _ssim_loops((1000 + 2000 * prediction)[0, 0].numpy(),
                                                    (1000 + 2000 * target)[0, 0].numpy(), 2000.0,
                                                    SSIM_WINDOW_SIZE, SSIM_SIGMA), abs_tol=1e-10)


@pytest.mark.parametrize("shape", [(1, 1, 32, 29), (1, 1, 13, 14, 15)])
def test_ssim_matches_skimage_when_installed(shape):
    metrics = pytest.importorskip("skimage.metrics")
    prediction, target = _pair(shape, seed=4, noise=0.15)
    expected = metrics.structural_similarity(
        prediction[0, 0].numpy(), target[0, 0].numpy(), gaussian_weights=True, use_sample_covariance=False,
        sigma=1.5, data_range=1.0)
    assert math.isclose(float(ssim(prediction, target, 1.0)), expected, rel_tol=0, abs_tol=1e-10)


# ------------------------------------------------------------------------------------------
# Dice
# ------------------------------------------------------------------------------------------


def test_dice_closed_forms():
    a = torch.zeros(4, 1, 4, 4)
    b = torch.zeros(4, 1, 4, 4)
    a[0, 0, 0, :4] = 0.9   # 4 pixels
    b[0, 0, 0, :2] = 0.8   # 2 of them: 2·2/(4+2)
    a[1, 0, 0, 0] = 1.0    # disjoint
    b[1, 0, 3, 3] = 1.0
    # item 2: both empty
    b[3, 0, 1, 1] = 1.0    # only the target has foreground
    torch.testing.assert_close(dice(a, b), torch.tensor([2 / 3, 0.0, 1.0, 0.0], dtype=torch.float64))


def test_dice_threshold_is_strict_and_accepts_bool_and_integer_masks():
    soft = torch.tensor([[0.2, 0.5, 0.51, 0.9]])
    hard = torch.tensor([[0, 0, 1, 1]])
    assert float(dice(soft, hard)) == 1.0
    assert float(dice(soft, hard.bool())) == 1.0
    # tanh-space masks with threshold 0: {1, 2, 3} vs {3}: 2·1/(3+1).
    assert math.isclose(float(dice(torch.tensor([[-1.0, 0.2, 0.3, 0.9]]), torch.tensor([[-1.0, -0.5, -0.1, 0.4]]),
                                   threshold=0.0)), 0.5)


# ------------------------------------------------------------------------------------------
# Bad inputs: one clear MetricInputError (a ValueError) naming the argument
# ------------------------------------------------------------------------------------------

_IMAGE = torch.rand(2, 1, 12, 12)


@pytest.mark.parametrize("call, match", [
    (lambda: psnr(_IMAGE.numpy(), _IMAGE, 1.0), "prediction must be a torch.Tensor"),
    (lambda: psnr(_IMAGE, [1.0], 1.0), "target must be a torch.Tensor"),
    (lambda: psnr(_IMAGE, _IMAGE[:1], 1.0), "target shape"),
    (lambda: psnr(_IMAGE, _IMAGE, 0.0), "data_range must be finite and > 0"),
    (lambda: psnr(_IMAGE, _IMAGE, float("nan")), "data_range must be finite and > 0"),
    (lambda: psnr(_IMAGE, _IMAGE, torch.tensor([1.0, -1.0])), "data_range must be finite and > 0"),
    (lambda: psnr(_IMAGE, _IMAGE, torch.ones(3)), r"data_range tensor must have shape \(2,\)"),
    (lambda: psnr(_IMAGE, _IMAGE, "1"), "data_range must be a positive number"),
    (lambda: psnr(_IMAGE, _IMAGE, True), "data_range must be a positive number"),
    (lambda: psnr((_IMAGE * 10).long(), _IMAGE, 1.0), "prediction must have a floating-point dtype"),
    (lambda: psnr(torch.rand(5), torch.rand(5), 1.0), r"at least 2 dims"),
    (lambda: psnr(torch.rand(0, 3), torch.rand(0, 3), 1.0), "empty batch"),
    (lambda: psnr(torch.rand(2, 0), torch.rand(2, 0), 1.0), "no elements"),
    (lambda: mean_absolute_error(_IMAGE, _IMAGE.double()[..., :5]), "target shape"),
    (lambda: ssim(_IMAGE, _IMAGE, 1.0, window_size=13), "smaller than the SSIM window"),
    (lambda: ssim(torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10), 1.0), "smaller than the SSIM window"),
    (lambda: ssim(torch.rand(1, 1, 12, 12, 10), torch.rand(1, 1, 12, 12, 10), 1.0), "smaller than the SSIM window"),
    (lambda: ssim(torch.rand(2, 12, 12), torch.rand(2, 12, 12), 1.0), r"\(N, C, H, W\) images"),
    (lambda: ssim(_IMAGE, _IMAGE, 1.0, window_size=4), "window_size must be an odd integer"),
    (lambda: ssim(_IMAGE, _IMAGE, 1.0, sigma=0.0), "sigma must be a finite number > 0"),
    (lambda: ssim(_IMAGE, _IMAGE, 1.0, k2=-0.03), "k2 must be a finite number > 0"),
    (lambda: dice(_IMAGE, _IMAGE, threshold=float("inf")), "threshold must be a finite number"),
    (lambda: dice(_IMAGE, _IMAGE[:, :, :3]), "target shape"),
])
def test_bad_inputs_raise_one_clear_error(call, match):
    with pytest.raises(MetricInputError, match=match):
        call()
    assert issubclass(MetricInputError, ValueError)


def test_default_ssim_constants_are_the_papers():
    assert (SSIM_WINDOW_SIZE, SSIM_SIGMA, SSIM_K1, SSIM_K2) == (11, 1.5, 0.01, 0.03)


@pytest.mark.cuda
def test_metrics_on_cuda_match_cpu_float64():
    prediction, target = _pair((2, 1, 24, 20), seed=6)
    volumes = _pair((1, 1, 12, 13, 14), seed=7)
    cuda = torch.device("cuda")
    for name, fn in (("psnr", lambda p, t: psnr(p, t, 1.0)), ("ssim", lambda p, t: ssim(p, t, 1.0)),
                     ("mae", mean_absolute_error), ("dice", dice)):
        for p, t in ((prediction, target), volumes):
            expected, got = fn(p, t), fn(p.float().to(cuda), t.float().to(cuda))
            assert got.device.type == "cuda" and got.dtype == torch.float64
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5, msg=name)
