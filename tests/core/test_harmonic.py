"""The decoder's harmonic source: the pulse is the sum of the harmonics it claims, its phase is
exact under any chunking, the pitch head stays in range, and zero gains leave the decoder as
it was."""

import math
from dataclasses import replace

import pytest
import torch

from f3stream.config import AutoencoderConfig
from f3stream.harmonic import (F0_MAX_HZ, F0_MIN_HZ, HARMONIC_LIMIT, PHASE_ONE, HarmonicSource,
                               PitchHead, f0_from_logit, phase_increment, pulse_train)

SR = 24000


@pytest.mark.parametrize("f0", [55.0, 137.3, 200.0, 499.0])
def test_pulse_is_the_sum_of_the_harmonics_below_the_limit(f0):
    d = phase_increment(torch.tensor([[f0]]), SR)
    start = torch.tensor([[123456789]])
    got = pulse_train(start, d, 240)[0, 0]
    phase = (start + d * torch.arange(240)).double()[0] / PHASE_ONE   # cycles
    count = HARMONIC_LIMIT * PHASE_ONE / d.double().item()
    k = math.floor(count)
    ref = sum(torch.cos(2 * math.pi * h * phase) for h in range(1, k + 1))
    ref = ref + (count - k) * torch.cos(2 * math.pi * (k + 1) * phase)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    assert (k + 1) * f0 < SR / 2                      # the faded harmonic is below Nyquist


def test_excitation_spectrum_has_unit_peaks_at_the_harmonics():
    """200 Hz falls on every 4th bin of a 480-point DFT at 24 kHz: each harmonic is one bin of
    height ~1 (the source's scaling), the one that straddles the limit (11,040 Hz: 55.2
    harmonics) is faded to 0.2, the bins between are empty."""
    src = HarmonicSource(SR, 480, 240)
    spec, _ = src.step(torch.full((1, 6), 200.0), src.init_state(1))
    re, im = spec[0, -1].chunk(2)
    mag = torch.sqrt(re ** 2 + im ** 2)
    harmonics = torch.arange(4, 221, 4)               # 200 Hz .. 11 kHz
    torch.testing.assert_close(mag[harmonics], torch.ones(len(harmonics)), rtol=0, atol=0.03)
    assert mag[224].item() == pytest.approx(0.2, abs=0.01)
    others = torch.ones(241, dtype=torch.bool)
    others[harmonics] = False
    others[224] = False
    assert mag[others].max() < 0.03


def test_oscillator_phase_is_exact_for_any_chunking():
    src = HarmonicSource(SR, 480, 240)
    torch.manual_seed(0)
    f0 = 60 + 400 * torch.rand(2, 37)
    ref, ref_state = src.step(f0, src.init_state(2))
    state, parts = src.init_state(2), []
    for a, b in ((0, 1), (1, 1), (1, 9), (9, 30), (30, 37)):   # an empty chunk included
        y, state = src.step(f0[:, a:b], state)
        parts.append(y)
    assert state["phase"].dtype == torch.int64
    assert torch.equal(state["phase"], ref_state["phase"])
    # the rendered frames are one float32 matmul with the DFT basis, whose blocking (and so
    # its last bit) depends on the chunk's length on some CPUs: equal to float32 rounding
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, rtol=0, atol=1e-6)


def test_pitch_head_range_and_initial_pitch():
    head = PitchHead(8, 16, 4)
    f0 = head(torch.randn(2, 5, 8))
    assert f0.shape == (2, 20) and f0.dtype == torch.float64
    torch.testing.assert_close(f0, torch.full_like(f0, 150.0))   # zero output weights
    big = f0_from_logit(torch.tensor([-1e3, 0.0, 1e3], dtype=torch.float64))
    assert big[0] == pytest.approx(F0_MIN_HZ) and big[2] == pytest.approx(F0_MAX_HZ)
    assert big[1] == pytest.approx(math.sqrt(F0_MIN_HZ * F0_MAX_HZ))


def _decoders(tiny_config):
    from f3stream.autoencoder import AudioDecoder

    cfg = tiny_config.autoencoder
    torch.manual_seed(3)
    plain = AudioDecoder(cfg).eval()
    harm = AudioDecoder(replace(cfg, harmonic_source=True)).eval()
    missing, unexpected = harm.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("pitch.", "harmonic_proj.")) for k in missing)
    return plain, harm


def test_zero_gains_leave_the_decoder_unchanged_and_initial_gains_add_harmonics(tiny_config):
    """The harmonic part is additive: with its gains at zero the decoder computes what it
    did without it. The gains start at HARMONIC_GAIN_INIT, not zero (at zero they would not
    learn: see AudioDecoder), so a fresh harmonic decoder adds harmonics at once."""
    from f3stream.autoencoder import AudioDecoder

    plain, harm = _decoders(tiny_config)
    n_bins = harm.harmonic_proj.out_features // 2
    assert AudioDecoder.HARMONIC_GAIN_INIT > 0
    assert torch.all(harm.harmonic_proj.bias[:n_bins] == AudioDecoder.HARMONIC_GAIN_INIT)
    assert torch.all(harm.harmonic_proj.bias[n_bins:] == 0)
    z = torch.randn(1, 12, tiny_config.autoencoder.latent_dim)
    with torch.no_grad():
        assert (harm(z) - plain(z)).abs().max() > 1e-3
        harm.harmonic_proj.bias.zero_()
        torch.testing.assert_close(harm(z), plain(z), rtol=0, atol=0)
        harm.harmonic_proj.bias[:n_bins] = 1.0
        harm.pitch.out.bias.fill_(0.0)           # f0 = sqrt(50 * 500) ~ 158 Hz everywhere
        _, f0, _ = harm.step_with_f0(z, harm.init_state(1))
    torch.testing.assert_close(f0, torch.full_like(f0, math.sqrt(F0_MIN_HZ * F0_MAX_HZ)))


def test_harmonic_decoder_streams_as_it_decodes_offline(tiny_config):
    _, harm = _decoders(tiny_config)
    torch.manual_seed(4)
    with torch.no_grad():
        harm.harmonic_proj.weight.normal_(0, 0.1)
        harm.pitch.out.weight.normal_(0, 0.05)   # the pitch moves from frame to frame
        z = torch.randn(2, 30, tiny_config.autoencoder.latent_dim)
        ref, _ = harm.step(z, harm.init_state(2))
        state, parts = harm.init_state(2), []
        for t in range(30):
            y, state = harm.step(z[:, t:t + 1], state)
            parts.append(y)
    f0 = harm.pitch(z)
    assert f0.max() - f0.min() > 20
    torch.testing.assert_close(torch.cat(parts, dim=1), ref, rtol=0, atol=1e-5)


def test_config_default_keeps_older_checkpoints():
    assert AutoencoderConfig().harmonic_source is False


def test_a_measured_pitch_drives_the_oscillator_where_it_is_given(tiny_config):
    """Teacher forcing: ``oscillator_f0`` > 0 replaces the pitch head's f0 in the oscillator
    (frames at 0 keep the head's); the returned f0 is still the head's (for its loss)."""
    _, harm = _decoders(tiny_config)
    with torch.no_grad():
        z = torch.randn(1, 6, tiny_config.autoencoder.latent_dim)
        own, f0, _ = harm.step_with_f0(z, harm.init_state(1))
        zeros = torch.zeros_like(f0)
        same, f0_b, _ = harm.step_with_f0(z, harm.init_state(1), zeros)
        forced, f0_c, _ = harm.step_with_f0(z, harm.init_state(1), zeros + 220.0)
    torch.testing.assert_close(same, own, rtol=0, atol=0)
    assert torch.equal(f0, f0_b) and torch.equal(f0, f0_c)
    assert (forced - own).abs().max() > 1e-3
