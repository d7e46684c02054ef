import pytest
import torch

from f3stream.bottleneck import NoiseBottleneck


def test_channel_norm_gives_zero_mean_unit_std_per_frame():
    z = torch.randn(3, 50, 64) * torch.linspace(0.1, 20, 64) + 7.0
    zn = NoiseBottleneck().eval()(z)
    torch.testing.assert_close(zn.mean(-1), torch.zeros(3, 50), atol=1e-5, rtol=0)
    torch.testing.assert_close(zn.var(-1, unbiased=False), torch.ones(3, 50), atol=1e-3, rtol=0)
    # scale invariance: the latent scale is fixed whatever the encoder outputs
    torch.testing.assert_close(NoiseBottleneck().eval()(z * 100.0), zn, atol=1e-4, rtol=0)


def test_inference_is_deterministic_and_training_perturbs():
    bn = NoiseBottleneck(noise_gamma=1.0)
    z = torch.randn(4, 30, 64)
    bn.eval()
    torch.testing.assert_close(bn(z), bn(z))
    bn.train()
    assert not torch.allclose(bn(z), bn.channel_norm(z))
    # perturbation can be asked for explicitly at inference, reproducibly
    bn.eval()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(bn(z, perturb=True, generator=g1), bn(z, perturb=True, generator=g2))


def test_noise_scale_is_drawn_once_per_sequence_from_uniform_0_gamma():
    gamma = 0.5
    bn = NoiseBottleneck(noise_gamma=gamma).train()
    z = torch.randn(256, 400, 64)
    noise = bn(z) - bn.channel_norm(z)
    per_seq_std = noise.std(dim=(1, 2))
    assert per_seq_std.max() <= gamma * 1.05
    assert per_seq_std.min() >= 0.0
    # alpha ~ U(0, gamma): the stds spread over the whole range, mean ~ gamma / 2
    assert per_seq_std.mean().item() == pytest.approx(gamma / 2, abs=0.05)
    assert per_seq_std.min() < 0.1 * gamma and per_seq_std.max() > 0.9 * gamma
    # within one sequence the scale is shared: std of the first and second half agree
    half = noise.shape[1] // 2
    torch.testing.assert_close(noise[:, :half].std(dim=(1, 2)), noise[:, half:].std(dim=(1, 2)),
                               atol=0.02, rtol=0.05)


def test_plain_autoencoder_switch_passes_latents_through():
    bn = NoiseBottleneck(normalize=False, noise_gamma=0.0).train()
    z = torch.randn(2, 10, 64) * 5
    torch.testing.assert_close(bn(z), z)
