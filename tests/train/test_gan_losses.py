"""LSGAN losses (paper eq. 14 with corrected brackets) against closed forms."""

import pytest
import torch

from xraysyn.train.gan_losses import lsgan_discriminator_loss, lsgan_generator_loss


@pytest.mark.parametrize("real, fake", [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (2.0, -1.0), (-0.25, 0.75)])
def test_constant_scores_closed_form(real, fake):
    d_real = torch.full((2, 1, 30, 30), real, dtype=torch.float64)
    d_fake = torch.full((3, 1, 30, 30), fake, dtype=torch.float64)  # batches may differ
    assert float(lsgan_discriminator_loss(d_real, d_fake)) == pytest.approx((real - 1) ** 2 + fake ** 2, abs=1e-15)
    assert float(lsgan_generator_loss(d_fake)) == pytest.approx((fake - 1) ** 2, abs=1e-15)


def test_optimal_discriminator_and_generator_reach_zero():
    ones, zeros = torch.ones(4, 1, 6, 6), torch.zeros(4, 1, 6, 6)
    assert float(lsgan_discriminator_loss(ones, zeros)) == 0.0   # D: real → 1, fake → 0
    assert float(lsgan_generator_loss(ones)) == 0.0              # G: fake scored as real
    assert float(lsgan_discriminator_loss(zeros, ones)) == 2.0   # the worst labelling of both


def test_random_scores_against_explicit_sums():
    g = torch.Generator().manual_seed(3)
    d_real = torch.randn(2, 1, 5, 7, generator=g, dtype=torch.float64)
    d_fake = torch.randn(2, 1, 5, 7, generator=g, dtype=torch.float64)
    real_terms = [(float(v) - 1.0) ** 2 for v in d_real.flatten()]
    fake_terms = [float(v) ** 2 for v in d_fake.flatten()]
    gen_terms = [(float(v) - 1.0) ** 2 for v in d_fake.flatten()]
    expected_d = sum(real_terms) / len(real_terms) + sum(fake_terms) / len(fake_terms)
    expected_g = sum(gen_terms) / len(gen_terms)
    assert float(lsgan_discriminator_loss(d_real, d_fake)) == pytest.approx(expected_d, rel=1e-12)
    assert float(lsgan_generator_loss(d_fake)) == pytest.approx(expected_g, rel=1e-12)


def test_gradients_closed_form():
    """∂L_D/∂d_real = 2(d_real − 1)/n, ∂L_D/∂d_fake = 2 d_fake/n, ∂L_G/∂d_fake = 2(d_fake − 1)/n."""
    d_real = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    d_fake = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    n = d_real.numel()
    lsgan_discriminator_loss(d_real, d_fake).backward()
    torch.testing.assert_close(d_real.grad, 2 * (d_real.detach() - 1) / n)
    torch.testing.assert_close(d_fake.grad, 2 * d_fake.detach() / n)
    d_fake.grad = None
    lsgan_generator_loss(d_fake).backward()
    torch.testing.assert_close(d_fake.grad, 2 * (d_fake.detach() - 1) / n)


def test_mean_does_not_grow_with_batch():
    scores = torch.full((1, 1, 30, 30), 0.3)
    assert float(lsgan_generator_loss(scores)) == pytest.approx(float(lsgan_generator_loss(scores.repeat(8, 1, 1, 1))))


def test_scalar_output_and_dtype():
    loss = lsgan_discriminator_loss(torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3))
    assert loss.shape == () and loss.dtype == torch.float32


@pytest.mark.parametrize("d_real, d_fake, match", [
    (torch.ones(2, 1, 3, 3, dtype=torch.int64), torch.zeros(2, 1, 3, 3), "d_real must be a floating-point"),
    (torch.ones(2, 1, 3, 3), [0.0, 1.0], "d_fake must be a floating-point"),
    (torch.ones(0, 1, 3, 3), torch.zeros(2, 1, 3, 3), "d_real is empty"),
    (torch.ones(2, 1, 3, 3), torch.zeros(2, 0), "d_fake is empty"),
])
def test_discriminator_loss_bad_inputs(d_real, d_fake, match):
    with pytest.raises(ValueError, match=match):
        lsgan_discriminator_loss(d_real, d_fake)


@pytest.mark.parametrize("d_fake, match", [(torch.zeros(3, dtype=torch.bool), "floating-point"),
                                           (None, "floating-point"), (torch.zeros(0), "empty")])
def test_generator_loss_bad_inputs(d_fake, match):
    with pytest.raises(ValueError, match=match):
        lsgan_generator_loss(d_fake)
