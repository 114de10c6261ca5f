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


# ------------------------------------------------------------------ the Poisson sampler's range (issue 24: 9)
def test_photon_counts_past_the_samplers_range_are_refused():
    from xraysyn.physics.noise import MAX_EXPECTED_COUNT_CPU

    x = torch.full((4,), 0.5, dtype=torch.float64)
    # 1e30 used to give every pixel -2**63 counts (a black, all-zero display radiograph).
    with pytest.raises(ValueError, match=r"photons_per_pixel must be <= 4\.612e\+18 quanta on cpu"):
        add_noise(x, 1e30)
    with pytest.raises(ValueError, match="photons_per_pixel"):
        add_noise(x, 2 * MAX_EXPECTED_COUNT_CPU)
    # The expected count is photons x transmission: a fraction above 1 may push it past the range.
    with pytest.raises(ValueError, match="largest i_atten 3"):
        add_noise(torch.full((4,), 3.0, dtype=torch.float64), MAX_EXPECTED_COUNT_CPU / 2)
    for bad in (float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="photons_per_pixel must be a positive finite"):
            add_noise(x, bad)


def test_non_finite_transmission_is_a_value_error():
    for bad in (float("nan"), float("inf")):
        x = torch.tensor([0.5, bad])
        with pytest.raises(ValueError, match="i_atten must be finite"):  # torch.poisson: RuntimeError on NaN
            add_noise(x, 100.0, seed=0)


def _check_sane_counts_at(limit: float, device: str) -> None:
    """At the largest accepted rate every sample lies within 8 standard deviations of the mean
    (sd = 1/sqrt(N0) in transmitted-fraction units) and the sample variance matches 1/N0."""
    clean = torch.ones(4000, dtype=torch.float64, device=device)
    noisy = add_noise(clean, limit, seed=1)
    sd = limit ** -0.5
    assert float((noisy - 1.0).abs().max()) < 8 * sd
    # Relative standard error of a variance from n samples: sqrt(2 / n) ≈ 2.2 %.
    assert float(noisy.var()) == pytest.approx(sd**2, rel=0.15)


def test_largest_accepted_count_on_the_cpu_gives_poisson_counts():
    from xraysyn.physics.noise import MAX_EXPECTED_COUNT_CPU, max_expected_count

    assert max_expected_count("cpu") == MAX_EXPECTED_COUNT_CPU == 2.0**62
    _check_sane_counts_at(MAX_EXPECTED_COUNT_CPU, "cpu")


@pytest.mark.cuda
def test_largest_accepted_count_on_cuda_gives_poisson_counts():
    from xraysyn.physics.noise import MAX_EXPECTED_COUNT_CUDA, max_expected_count

    assert max_expected_count("cuda") == MAX_EXPECTED_COUNT_CUDA
    _check_sane_counts_at(MAX_EXPECTED_COUNT_CUDA, "cuda")
    with pytest.raises(ValueError, match="on cuda"):
        add_noise(torch.ones(4, device="cuda"), 2 * MAX_EXPECTED_COUNT_CUDA)
