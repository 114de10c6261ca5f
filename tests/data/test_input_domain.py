"""The 3DPN's input domain (xraysyn.data.input_domain) against independent float64 references.

normalise_radiograph maps each pixel to ``(#darker + #equal / 2) / n``. scipy's average ranks are
``r = #darker + (#equal + 1) / 2`` (the tied group occupies ranks ``#darker + 1 … #darker + #equal``),
so ``(r − 0.5) / n`` is the same number: that identity is checked by hand below, then used as the truth.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from xraysyn.data.input_domain import (
    NO_PERTURBATION,
    InputPerturbation,
    InputRandomisation,
    normalise_radiograph,
    sample_input_perturbation,
    simulated_display_input,
)
from xraysyn.data.phantom import make_chest_phantom
from xraysyn.physics import ct2xray
from xraysyn.train.prior_config import SimulationConfig

PHANTOM_SIZE = 24  # voxels per axis of the simulated phantom
DETECTOR = 32  # detector pixels per side
CLIP_FRACTION = 0.02  # share of pixels a display window clips at each end (the example)
GAMMAS = (0.7, 1.4)
HIGH_PHOTONS = 1e7  # unattenuated quanta per pixel of the "high count" noise check
LOW_PHOTONS = 1e4


def mid_rank_edf(values: np.ndarray) -> np.ndarray:
    """The independent truth: per image (first axis), scipy's average ranks as (rank − 0.5) / n, float64."""
    flat = values.reshape(values.shape[0], -1).astype(np.float64)
    ranks = np.stack([rankdata(row, method="average") for row in flat])
    return ((ranks - 0.5) / flat.shape[1]).reshape(values.shape)


def brute_force_edf(values: np.ndarray) -> np.ndarray:
    """The definition itself, by counting, for one tiny image."""
    flat = values.reshape(-1).astype(np.float64)
    darker = (flat[None, :] < flat[:, None]).sum(axis=1)
    equal = (flat[None, :] == flat[:, None]).sum(axis=1)
    return ((darker + equal / 2) / flat.size).reshape(values.shape)


def test_mid_rank_identity_by_hand():
    # values 3, 1, 3, 2: 1 has 0 darker, 1 equal → 0.5/4; 2 has 1 darker → 1.5/4; the two 3s have 2 darker,
    # 2 equal → 3/4. scipy's average ranks 3.5, 1, 3.5, 2 minus 0.5, over 4, give the same.
    values = np.array([[3.0, 1.0, 3.0, 2.0]])
    by_hand = np.array([[3.0, 0.5, 3.0, 1.5]]) / 4
    np.testing.assert_array_equal(mid_rank_edf(values), by_hand)
    np.testing.assert_array_equal(brute_force_edf(values), by_hand)
    got = normalise_radiograph(torch.tensor(values, dtype=torch.float64).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(got.reshape(1, 4).numpy(), by_hand.astype(np.float32))


@pytest.mark.parametrize("shape", [(3, 1, 7, 5), (2, 2, 4, 6), (2, 9, 8)])
def test_normalise_radiograph_matches_scipy_mid_ranks_with_ties(shape):
    rng = np.random.default_rng(11)
    continuous = rng.normal(size=shape)
    tied = rng.integers(0, 6, size=shape).astype(np.float64)  # many ties
    for values in (continuous, tied):
        got = normalise_radiograph(torch.from_numpy(values))
        assert got.shape == shape and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), mid_rank_edf(values), rtol=0, atol=1e-7)  # float32 rounding only
    np.testing.assert_allclose(normalise_radiograph(torch.from_numpy(tied[:1])).numpy(), brute_force_edf(tied[:1]),
                               rtol=0, atol=1e-7)


def test_each_image_is_normalised_on_its_own_over_its_channels():
    rng = np.random.default_rng(5)
    batch = torch.from_numpy(rng.normal(size=(3, 2, 5, 4)))
    batch[1] = batch[1] * 100 + 7  # another scale for one image
    whole = normalise_radiograph(batch)
    for n in range(3):
        assert torch.equal(whole[n:n + 1], normalise_radiograph(batch[n:n + 1]))
    # mid-ranks of n pixels sum to n/2: the mean of every image is exactly 0.5 (a closed form)
    np.testing.assert_allclose(whole.double().mean(dim=(1, 2, 3)).numpy(), 0.5, atol=1e-7)
    assert float(whole.min()) > 0 and float(whole.max()) < 1


def test_float32_input_gives_the_float64_answer():
    rng = np.random.default_rng(2)
    values = rng.uniform(size=(1, 1, 6, 6)).astype(np.float32)
    got32 = normalise_radiograph(torch.from_numpy(values))
    got64 = normalise_radiograph(torch.from_numpy(values.astype(np.float64)))
    assert torch.equal(got32, got64)


def test_constant_image_is_one_half_everywhere():
    for value in (0.0, -3.5, 1e6):
        got = normalise_radiograph(torch.full((2, 1, 3, 4), value))
        assert torch.equal(got, torch.full((2, 1, 3, 4), 0.5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused(bad):
    image = torch.rand(1, 1, 4, 4)
    image[0, 0, 1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalise_radiograph(image)


@pytest.mark.parametrize("bad", [torch.rand(4, 4), torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 3, 3, dtype=torch.int64),
                                 np.ones((1, 1, 3, 3)), torch.empty(0, 1, 3, 3)])
def test_bad_shapes_and_types_are_refused(bad):
    with pytest.raises(ValueError, match="image"):
        normalise_radiograph(bad)


# ------------------------------------------------------------------ invariance under display transforms


@pytest.fixture(scope="module")
def transmission() -> torch.Tensor:
    """``(1, 1, 32, 32)`` float64 transmitted fraction of a simulated chest phantom at the frontal view."""
    phantom = make_chest_phantom((PHANTOM_SIZE,) * 3, seed=3)
    geometry = SimulationConfig(detector_pixels=DETECTOR).geometry()
    result = ct2xray(torch.from_numpy(phantom.hu)[None, None].double(),
                     torch.from_numpy(phantom.bone_mask)[None, None].double(),
                     torch.from_numpy(phantom.world_from_voxel), geometry.poses([0.0], dtype=torch.float64), geometry)
    i_atten = result.i_atten
    assert i_atten.shape == (1, 1, DETECTOR, DETECTOR)
    assert 0 < float(i_atten.min()) and float(i_atten.max()) < 1
    assert torch.unique(i_atten).numel() > 0.9 * i_atten.numel()  # a real image, not a flat one
    return i_atten


def test_exact_invariance_under_strictly_increasing_transforms(transmission):
    display = 1 - transmission
    reference = normalise_radiograph(display)
    low, high = float(display.min()), float(display.max())
    scaled = (display - low) / (high - low)
    transforms = {
        "gamma 0.7": scaled ** 0.7,
        "gamma 1.4": scaled ** 1.4,
        "affine window without clipping": 3.0 * (display - low) / (high - low + 0.5) - 1.0,
        "log of transmission": -torch.log(transmission),
    }
    for name, image in transforms.items():
        assert torch.equal(normalise_radiograph(image), reference), name
    # and through the simulated input path: log display and gamma alone change nothing
    for perturbation in (InputPerturbation(log_display=True), InputPerturbation(gamma=0.7),
                         InputPerturbation(gamma=1.4, log_display=True)):
        assert torch.equal(simulated_display_input(transmission, perturbation), reference), perturbation


def test_simulated_and_displayed_radiograph_land_close(transmission):
    """The issue's requirement: a monotone display transform with clipping moves the normalised input little.

    Clipping a fraction f at an end ties those pixels at the mean of their former mid-ranks (≈ f/2), so no
    pixel moves by more than f/2 plus one pixel's share 1/n; pixels in between keep their value exactly.
    Measured on this 32² radiograph: max |difference| 0.0098 (f = 2 %), mean 0.0002.
    """
    n = transmission.numel()
    bound = CLIP_FRACTION / 2 + 1 / n
    display = 1 - transmission
    reference = normalise_radiograph(display)
    flat = display.reshape(-1)
    low = float(torch.quantile(flat, CLIP_FRACTION))
    high = float(torch.quantile(flat, 1 - CLIP_FRACTION))
    for gamma in GAMMAS:
        windowed = ((display.clamp(low, high) - low) / (high - low)) ** gamma
        shown = normalise_radiograph(windowed)
        difference = (shown - reference).abs()
        assert float(difference.max()) <= bound, gamma
        assert float(difference.mean()) <= bound / 10, gamma
        # pixels strictly inside the window keep their darker and equal counts (the clipped ones stay below
        # or above them), so their value does not change at all
        inside = (display > low) & (display < high)
        assert torch.equal(shown[inside], reference[inside]), gamma
        # and the same through the training path (log display, window, gamma drawn by the randomisation)
        perturbation = InputPerturbation(log_display=True, window_low_fraction=CLIP_FRACTION,
                                         window_high_fraction=CLIP_FRACTION, gamma=gamma)
        through = simulated_display_input(transmission, perturbation)
        assert float((through - reference).abs().max()) <= bound, gamma


def test_simulated_display_input_without_perturbation_is_normalised_one_minus_transmission(transmission):
    expected = normalise_radiograph(1 - transmission)
    assert torch.equal(simulated_display_input(transmission), expected)
    assert torch.equal(simulated_display_input(transmission, NO_PERTURBATION), expected)
    as_float32 = transmission.float()
    assert torch.equal(simulated_display_input(as_float32), normalise_radiograph(1 - as_float32.double()))
    out = simulated_display_input(transmission)
    assert out.shape == transmission.shape and out.dtype == torch.float32


def test_noise_changes_the_input_but_little_at_high_photon_counts(transmission):
    """Measured: at 1e7 quanta per pixel max |difference| 0.007, mean 0.0008; at 1e4 max 0.16, mean 0.02."""
    reference = simulated_display_input(transmission)
    high = simulated_display_input(transmission, InputPerturbation(photons_per_pixel=HIGH_PHOTONS, noise_seed=1))
    low = simulated_display_input(transmission, InputPerturbation(photons_per_pixel=LOW_PHOTONS, noise_seed=1))
    high_difference = (high - reference).abs()
    low_difference = (low - reference).abs()
    assert not torch.equal(high, reference)
    assert float(high_difference.max()) <= 0.02 and float(high_difference.mean()) <= 0.002
    assert float(low_difference.mean()) > 5 * float(high_difference.mean())  # fewer quanta, more noise
    # the noise is reproducible from its seed and changes with it
    again = simulated_display_input(transmission, InputPerturbation(photons_per_pixel=LOW_PHOTONS, noise_seed=1))
    other = simulated_display_input(transmission, InputPerturbation(photons_per_pixel=LOW_PHOTONS, noise_seed=2))
    assert torch.equal(low, again) and not torch.equal(low, other)


def test_blur_changes_the_input_and_keeps_a_constant_image_constant(transmission):
    reference = simulated_display_input(transmission)
    blurred = simulated_display_input(transmission, InputPerturbation(blur_sigma_px=1.0))
    assert not torch.equal(blurred, reference)
    flat = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    assert torch.equal(simulated_display_input(flat, InputPerturbation(blur_sigma_px=1.0)), torch.full(flat.shape, 0.5))


@pytest.mark.parametrize("bad", [torch.rand(1, 2, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(4, 4), [[0.5]]])
def test_simulated_display_input_refuses_other_shapes(bad):
    with pytest.raises(ValueError, match="transmission"):
        simulated_display_input(bad)


# ------------------------------------------------------------------ drawing the perturbation


def draws(config: InputRandomisation, seed: int, count: int) -> list[InputPerturbation]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_input_perturbation(config, generator) for _ in range(count)]


def test_sample_input_perturbation_is_reproducible_from_the_seed():
    config = InputRandomisation()
    assert draws(config, 7, 5) == draws(config, 7, 5)
    assert draws(config, 7, 5) != draws(config, 8, 5)
    first = draws(config, 7, 5)
    assert len(set(first)) == 5  # successive draws differ


def test_sample_input_perturbation_respects_the_ranges():
    config = InputRandomisation(kvp_range=(80.0, 100.0), photons_range=(1e3, 1e4), blur_max_px=0.5,
                                window_max_fraction=0.05, gamma_range=(0.8, 1.25))
    sample = draws(config, 0, 300)
    kvp = np.array([p.kvp for p in sample])
    photons = np.array([p.photons_per_pixel for p in sample])
    assert kvp.min() >= 80 and kvp.max() <= 100 and kvp.max() - kvp.min() > 15
    assert photons.min() >= 1e3 and photons.max() <= 1e4
    # log-uniform: log10 of the quanta is uniform in [3, 4], its mean near 3.5 (sd of the mean ≈ 0.017)
    assert abs(np.log10(photons).mean() - 3.5) < 0.07
    assert all(0 <= p.blur_sigma_px <= 0.5 for p in sample)
    assert all(0 <= p.window_low_fraction <= 0.05 and 0 <= p.window_high_fraction <= 0.05 for p in sample)
    gammas = np.array([p.gamma for p in sample])
    assert gammas.min() >= 0.8 and gammas.max() <= 1.25 and abs(np.log(gammas).mean()) < 0.03
    logs = sum(p.log_display for p in sample)
    assert 100 < logs < 200  # log and linear display at equal odds
    assert len({p.noise_seed for p in sample}) == len(sample)


def test_off_flags_give_neutral_values_and_the_same_number_of_draws():
    neutral = {f.name: getattr(NO_PERTURBATION, f.name) for f in dataclasses.fields(InputPerturbation)
               if f.name != "noise_seed"}
    for perturbation in draws(InputRandomisation.off(), 3, 20):
        assert {name: getattr(perturbation, name) for name in neutral} == neutral
    only_kvp = draws(dataclasses.replace(InputRandomisation.off(), kvp=True), 3, 5)
    assert all(p.kvp is not None and p.photons_per_pixel is None and p.gamma == 1.0 for p in only_kvp)
    only_display = draws(dataclasses.replace(InputRandomisation.off(), display=True), 3, 5)
    assert all(p.kvp is None and p.blur_sigma_px == 0.0 and p.gamma != 1.0 for p in only_display)
    # switching a perturbation off does not shift the others' draws (same generator consumption)
    on, off = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    sample_input_perturbation(InputRandomisation(), on)
    sample_input_perturbation(InputRandomisation.off(), off)
    assert torch.equal(on.get_state(), off.get_state())
    assert [p.kvp for p in draws(InputRandomisation(), 3, 5)] == [p.kvp for p in only_kvp]


@pytest.mark.parametrize("field,value", [
    ("kvp_range", (130.0, 90.0)), ("kvp_range", (0.0, 90.0)), ("photons_range", (1e3,)),
    ("gamma_range", (0.7, math.inf)), ("blur_max_px", -0.1), ("blur_max_px", 11.0),
    ("window_max_fraction", 0.5), ("noise", 1),
])
def test_bad_randomisation_ranges_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        InputRandomisation(**{field: value})


# ----------------------------------------------------------------------------- the differentiable window (stage 2)
def test_window_to_unit_maps_the_percentiles_of_a_ramp_to_zero_and_one():
    from xraysyn.data.input_domain import window_to_unit

    ramp = torch.arange(101, dtype=torch.float64).reshape(1, 1, 1, 101)  # quantile q of 0..100 is 100 q exactly
    unit = window_to_unit(ramp, 0.1, 0.9)
    expected = ((ramp - 10.0) / 80.0).clamp(0, 1)
    torch.testing.assert_close(unit, expected, rtol=0, atol=1e-12)
    # an increasing affine map of the image changes nothing; a constant image gives 0
    torch.testing.assert_close(window_to_unit(3.5 * ramp - 7.0, 0.1, 0.9), expected, rtol=0, atol=1e-12)
    assert float(window_to_unit(torch.full((1, 1, 4, 4), 2.0)).abs().max()) == 0.0


def test_window_to_unit_passes_gradients():
    from xraysyn.data.input_domain import window_to_unit

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 5, 5, generator=generator, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: window_to_unit(x, 0.2, 0.8), (image,))
    with pytest.raises(ValueError, match="low_fraction"):
        window_to_unit(image, 0.9, 0.1)
