"""The YIN pitch targets of the harmonic source's pitch head."""

import math

import numpy as np

import pytest
import torch

from training.pitch import pitch_loss, yin_pitch

SR = 24000


def _voice(f0_hz, seconds=1.0, harmonics=12, level=0.1):
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    phase = 2 * math.pi * torch.cumsum(torch.as_tensor(f0_hz, dtype=torch.float64)
                                       .expand_as(t) / SR, 0)
    x = sum(torch.sin(k * phase) / k for k in range(1, harmonics + 1))
    return (level * x).float()


@pytest.mark.parametrize("f0", [70.0, 118.0, 220.0, 410.0])
def test_steady_voice_is_voiced_at_its_pitch(f0):
    est, voiced = yin_pitch(_voice(f0)[None], SR, 240)
    inner = slice(5, -5)
    assert voiced[0, inner].all()
    assert (est[0, inner] / f0 - 1).abs().max() < 0.01


def test_gliding_pitch_is_followed_and_silence_and_noise_are_unvoiced():
    t = torch.arange(SR, dtype=torch.float64) / SR
    glide = _voice(120 + 80 * t)                      # 120 -> 200 Hz over a second
    est, voiced = yin_pitch(glide[None], SR, 240)
    centre = (torch.arange(100) * 240 + 120) / SR
    ok = voiced[0, 5:-5]
    assert ok.all()
    assert ((est[0, 5:-5] / (120 + 80 * centre[5:-5]) - 1).abs().max()) < 0.02
    quiet = torch.zeros(1, SR)
    assert not yin_pitch(quiet, SR, 240)[1].any()
    noise = torch.randn(1, SR, generator=torch.Generator().manual_seed(0)) * 0.1
    assert yin_pitch(noise, SR, 240)[1].float().mean() < 0.05


def test_frame_count_and_pitch_loss():
    x = _voice(200.0)[None].repeat(2, 1)
    est, voiced = yin_pitch(x, SR, 240, n_frames=90)
    assert est.shape == voiced.shape == (2, 90)
    assert pitch_loss(est, est, voiced) == 0
    octave_up = pitch_loss(2 * est, est, voiced)
    assert octave_up.item() == pytest.approx(1.0)         # measured in octaves
    assert pitch_loss(est, est, torch.zeros_like(voiced)) == 0


def test_a_flat_spectrum_pulse_train_is_read_at_its_period_not_a_multiple():
    """A band-limited pulse train with every harmonic equally loud up to 11 kHz (what the
    harmonic source renders) decorrelates at a fractional period: without the tracker's
    low-pass it was read at a third of its pitch."""
    from f3stream.harmonic import HarmonicSource

    src = HarmonicSource(SR, 480, 240)
    wav, _ = src.excitation(torch.full((1, 100), 180.0), torch.zeros(1, 1, dtype=torch.long))
    est, voiced = yin_pitch(wav, SR, 240)
    assert voiced[0, 5:-5].all()
    assert (est[0, 5:-5] / 180.0 - 1).abs().max() < 0.005


def test_comb_refinement_recovers_a_known_pitch_and_yin_is_precise_on_synthetic_voices():
    from training.probe_pitch_precision import (SAMPLE_RATE, frame_spectra, refine,
                                                synthetic_voice, yin_error_on_synthetic)

    rng = np.random.default_rng(3)
    x, f0 = synthetic_voice(1.0, rng)
    frame = np.array([50])
    true = f0[50 * 240 + 120]
    logp, bins = frame_spectra(x, frame)
    got = refine(logp[0], bins, true * 1.015, (500.0, 2000.0))   # started 1.5 % off
    assert abs(got / true - 1) < 0.004
    err = yin_error_on_synthetic(voices=3)
    assert err.size > 200 and np.median(err) < 0.5 and SAMPLE_RATE == 24000


def test_phase_advance_loss_ignores_a_phase_offset_but_not_a_wrong_frequency():
    """The phase-advance term: a harmonic tone with every partial's phase shifted (a
    free-running oscillator at the right pitch) scores near the target itself; the same tone
    with 1 % pitch jitter, 2 % off pitch or noise scores far worse, in that order; the level
    does not matter; bins above an item's band limit do not count; gradients stay finite on
    a near-silent output."""
    import math

    import torch

    from training.losses import phase_advance_loss

    sr = 24000
    t = torch.arange(int(1.6 * sr)) / sr

    def tone(f0: float, offset: float = 0.0, jitter: float = 0.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        f = f0 * (1 + jitter * torch.randn(t.numel() // 240 + 1, generator=g))
        phase = 2 * math.pi * torch.cumsum(f.repeat_interleave(240)[:t.numel()], 0) / sr
        return 0.1 * sum(torch.sin(k * (phase + offset)) / k for k in range(1, 30))[None]

    x = tone(120.0)
    same, shifted = phase_advance_loss(x, x).item(), phase_advance_loss(tone(120.0, 1.3), x).item()
    jitter = phase_advance_loss(tone(120.0, jitter=0.01), x).item()
    off = phase_advance_loss(tone(122.4), x).item()
    noise = phase_advance_loss(0.1 * torch.randn_like(x), x).item()
    assert same < 0.05 and shifted < 0.1
    assert 0.2 < jitter < off < noise
    assert abs(phase_advance_loss(0.3 * x, x).item() - same) < 1e-4
    above = torch.sin(2 * math.pi * 6000 * t)[None] * 0.1
    limited = phase_advance_loss(x, x + above, torch.tensor([4000.0])).item()
    assert limited < 0.05                        # the 6 kHz partial is outside the band
    assert phase_advance_loss(x, x + above).item() > 0.1   # ... and counts without a limit
    y = (1e-6 * torch.randn_like(x)).requires_grad_(True)
    phase_advance_loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().max() > 0
