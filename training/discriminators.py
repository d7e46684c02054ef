"""Discriminators for the adversarial part of stage 0, and their hinge / feature-matching losses.

Two families, combinable:

* ``mrd``: 2-D conv nets on complex STFTs at several resolutions (as in EnCodec / Vocos).
  At 32 channels on whole 1.6 s segments it costs ~0.5-1 TFLOP per training step, hundreds of
  times the autoencoder: out of reach on a CPU core. ``channels`` and random crops shrink it.
* ``mpd``: multi-period waveform discriminators (as in HiFi-GAN): the waveform folded into a
  ``[T/p, p]`` image per period ``p``, convolved along time with few channels. They judge
  exactly what spectral losses leave to chance (the periodic, harmonic fine structure and
  its phase) and cost a few GFLOP per step at the sizes used here, which is what makes an
  adversarial stage affordable on the CPU.

Every discriminator returns ``(logits, features)``; a combined one returns a list of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

wn = nn.utils.parametrizations.weight_norm

MPD_PERIODS = (2, 3, 5, 7, 11)
MRD_RESOLUTIONS = ((1024, 256), (512, 128), (256, 64))
KINDS = ("mrd", "mpd", "mpd+mrd")


class STFTDiscriminator(nn.Module):
    """A 2-D conv net on one STFT resolution (real/imag as channels)."""

    def __init__(self, n_fft: int, hop: int, channels: int = 32):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        c = channels
        self.convs = nn.ModuleList([
            wn(nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
            wn(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            wn(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            wn(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = wn(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        spec = torch.stft(x, self.n_fft, self.hop, window=window, return_complex=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, T, F]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            feats.append(h)
        return self.out(h), feats


class PeriodDiscriminator(nn.Module):
    """The waveform folded to ``[B, 1, T/p, p]``, (k x 1) convs along time: sees every
    ``p``-th sample together, i.e. the signal's periodicity at period ``p``."""

    def __init__(self, period: int, channels: tuple[int, ...] = (8, 16, 32, 32),
                 kernel: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            s = stride if i < len(channels) - 1 else 1
            layers.append(wn(nn.Conv2d(c_in, c, (kernel, 1), (s, 1), (kernel // 2, 0))))
            c_in = c
        self.convs = nn.ModuleList(layers)
        self.out = wn(nn.Conv2d(c_in, 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = x.shape
        pad = (-t) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect" if pad < t else "constant")
        h = x.reshape(b, 1, -1, self.period)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            feats.append(h)
        return self.out(h), feats


class MultiDiscriminator(nn.Module):
    """Several discriminators on the same input: ``forward`` returns one ``(logits,
    features)`` pair per member."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.discs = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(x) for d in self.discs]


def build_discriminator(kind: str = "mrd", channels: int = 32,
                        periods: tuple[int, ...] = MPD_PERIODS,
                        resolutions: tuple[tuple[int, int], ...] = MRD_RESOLUTIONS
                        ) -> MultiDiscriminator:
    """``kind``: ``"mrd"`` (STFT discriminators, ``channels`` wide), ``"mpd"`` (period
    discriminators) or ``"mpd+mrd"``."""
    if kind not in KINDS:
        raise ValueError(f"discriminator must be one of {KINDS}, got {kind!r}")
    members: list[nn.Module] = []
    if "mpd" in kind:
        members += [PeriodDiscriminator(p) for p in periods]
    if "mrd" in kind:
        members += [STFTDiscriminator(n, h, channels) for n, h in resolutions]
    return MultiDiscriminator(members)


def aligned_crops(x: torch.Tensor, y: torch.Tensor, length: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``length``-sample window of each item of ``x`` and ``y`` (``[B, T]``):
    a discriminator's cost grows with its input, and a short window judges fine structure as
    well as the whole segment does."""
    b, t = x.shape
    if length <= 0 or length >= t:
        return x, y
    start = torch.randint(0, t - length + 1, (b,), generator=generator)
    idx = start[:, None] + torch.arange(length)[None, :]
    return x.gather(1, idx.to(x.device)), y.gather(1, idx.to(y.device))


DISCRIMINATOR_RMS = 0.1


def same_gain_to_reference(x: torch.Tensor, y: torch.Tensor, rms: float = DISCRIMINATOR_RMS
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` (``[B, T]``) times one gain per item that brings ``x`` to ``rms``.

    Why: stage 0 trains on levels from -45 to -8 dBFS, and a waveform discriminator fed a
    -45 dBFS crop sees amplitudes of ~0.005 that its first layers barely respond to. Measured
    on the bundled model's reconstructions (period discriminators trained alone for 200 steps,
    ``python -m training.probe_discriminator``, docs/diagnose/discriminator-probe.json): the
    hinge loss went from 2.0 to ~1.9 on raw crops and to ~1.6 on crops brought to one level.
    The gain is the same for real and generated audio, so a level error still shows."""
    g = rms / x.detach().pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-5)
    return x * g, y * g


def discriminator_loss(real_outs, fake_outs) -> torch.Tensor:
    """Hinge loss of the discriminator."""
    loss = 0.0
    for (r, _), (f, _) in zip(real_outs, fake_outs):
        loss = loss + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return loss / len(real_outs)


def generator_adversarial_losses(real_outs, fake_outs) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge generator loss, feature-matching L1 relative to the real features)."""
    adv, fm, n_feats = 0.0, 0.0, 0
    for (_, rf), (f, ff) in zip(real_outs, fake_outs):
        adv = adv + F.relu(1 - f).mean()
        for a, b in zip(rf, ff):
            fm = fm + F.l1_loss(b, a.detach()) / (a.detach().abs().mean() + 1e-5)
            n_feats += 1
    return adv / len(fake_outs), fm / max(1, n_feats)
