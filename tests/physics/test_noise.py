"""Detector noise: moments against the Poisson + Gaussian closed form, seeding, straight-through gradients."""

import pytest
import torch

from xraysyn.physics import add_noise


def test_noise_moments_match_poisson_plus_gaussian():
    n0, sigma_e, level = 400.0, 5.0, 0.25
    clean = torch.full((200_000,), level, dtype=torch.float64)
    noisy = add_noise(clean, n0, electronic_noise_photons=sigma_e, seed=3)
    expected_var = level / n0 + sigma_e**2 / n0**2
    # Standard error of the mean is sqrt(var / n) ≈ 6e-5; of the variance ≈ var·sqrt(2/n) ≈ 0.3 %.
    assert noisy.mean().item() == pytest.approx(level, abs=5 * (expected_var / clean.numel()) ** 0.5)
    assert noisy.var().item() == pytest.approx(expected_var, rel=0.02)


def test_quantum_noise_only_gives_integer_counts():
    noisy = add_noise(torch.full((1000,), 0.5), 10.0, seed=0)
    counts = noisy * 10.0
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-5)


def test_seed_reproducible_and_gradient_straight_through():
    clean = torch.rand(1, 1, 8, 8, requires_grad=True)
    a = add_noise(clean, 1000.0, electronic_noise_photons=1.0, seed=7)
    b = add_noise(clean, 1000.0, electronic_noise_photons=1.0, seed=7)
    c = add_noise(clean, 1000.0, electronic_noise_photons=1.0, seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    a.sum().backward()
    torch.testing.assert_close(clean.grad, torch.ones_like(clean))


def test_bad_noise_inputs():
    x = torch.rand(4)
    with pytest.raises(ValueError, match="photons_per_pixel"):
        add_noise(x, 0.0)
    with pytest.raises(ValueError, match="electronic_noise_photons"):
        add_noise(x, 10.0, electronic_noise_photons=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        add_noise(-x - 0.1, 10.0)
    with pytest.raises(ValueError, match="either seed or generator"):
        add_noise(x, 10.0, seed=1, generator=torch.Generator())
