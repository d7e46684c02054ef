"""Pitch targets for the decoder's harmonic source: a batched YIN pitch tracker in torch.

Why a classical tracker: the harmonic source (``f3stream.harmonic``) needs the decoder to say
the pitch of each 10 ms frame, and a pitch learnt from spectral losses alone does not converge
(the loss is full of local minima at octave and harmonic errors). YIN (de Cheveigné and
Kawahara, 2002) on the training target gives a supervised target instead; it runs on the
batch in a few milliseconds, so nothing is precomputed or stored.

Frame ``n`` of the decoder's STFT covers the hop ``[n*hop, (n+1)*hop)`` it synthesises; its
pitch is measured on a window centred on that hop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

F0_MIN_HZ = 50.0
F0_MAX_HZ = 500.0
YIN_THRESHOLD = 0.15     # cumulative-mean-normalised difference below this: periodic
SILENCE_DB = -60.0       # frames quieter than this (dBFS RMS) are unvoiced
RELATIVE_SILENCE_DB = -40.0  # ... or this far below the item's loudest frame
# YIN compares the signal with itself a whole number of samples later; strong harmonics at
# several kHz decorrelate at a fractional period (a flat-spectrum pulse train at 180 Hz was
# read as 60 Hz, the first integer period), so the tracker listens below this, with a
# raised-cosine edge of +-LOWPASS_EDGE_HZ.
LOWPASS_HZ = 1000.0
LOWPASS_EDGE_HZ = 250.0


def lowpass(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``x [B, L]`` low-passed at ``LOWPASS_HZ`` (zero-phase, by FFT over the whole item)."""
    n = x.shape[-1]
    size = 1 << max(1, (2 * n - 1).bit_length())
    spec = torch.fft.rfft(x, size)
    freqs = torch.fft.rfftfreq(size, 1.0 / sample_rate).to(x.device)
    t = ((freqs - (LOWPASS_HZ - LOWPASS_EDGE_HZ)) / (2 * LOWPASS_EDGE_HZ)).clamp(0.0, 1.0)
    gain = 0.5 + 0.5 * torch.cos(torch.pi * t)
    return torch.fft.irfft(spec * gain, size)[..., :n]


def yin_pitch(x: torch.Tensor, sample_rate: int, hop: int, n_frames: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, L]`` -> ``(f0 [B, N] in Hz, voiced [B, N] bool)`` for the ``N = L // hop``
    hops (or ``n_frames``). Unvoiced frames have f0 0."""
    x = lowpass(x.detach().float(), sample_rate)
    b, length = x.shape
    n = length // hop if n_frames is None else n_frames
    tau_min = int(sample_rate / F0_MAX_HZ)
    tau_max = int(sample_rate / F0_MIN_HZ) + 1
    width = tau_max                                   # integration window of d(tau)
    seg_len = width + tau_max + 1
    centres = torch.arange(n, device=x.device) * hop + hop // 2
    starts = centres - width // 2
    pad = seg_len
    xp = F.pad(x, (pad, pad + seg_len))
    idx = (starts + pad)[:, None] + torch.arange(seg_len, device=x.device)[None, :]
    seg = xp[:, idx]                                  # [B, N, seg_len]
    seg = seg - seg.mean(dim=-1, keepdim=True)
    size = 1 << (seg_len + width - 1).bit_length()
    head = seg[..., :width]
    r = torch.fft.irfft(torch.fft.rfft(seg, size) * torch.fft.rfft(head, size).conj(), size)
    r = r[..., :tau_max + 1]                          # r(tau) = sum_j head[j] seg[j + tau]
    sq = F.pad(seg.square().cumsum(-1), (1, 0))
    taus = torch.arange(tau_max + 1, device=x.device)
    energy_shifted = sq[..., taus + width] - sq[..., taus]
    d = (energy_shifted[..., :1] + energy_shifted - 2 * r).clamp_min(0.0)
    d[..., 0] = 0.0
    cum = d[..., 1:].cumsum(-1)
    cmndf = torch.ones_like(d)
    cmndf[..., 1:] = d[..., 1:] * taus[1:] / cum.clamp_min(1e-12)
    search = cmndf[..., tau_min:tau_max]              # lags tau_min .. tau_max - 1
    nxt = cmndf[..., tau_min + 1:tau_max + 1]
    below = search < YIN_THRESHOLD
    # the first lag under the threshold, then on to the bottom of that dip
    first_below = torch.where(below.any(-1), below.float().argmax(-1),
                              torch.full(below.shape[:-1], search.shape[-1], device=x.device))
    lag_ix = torch.arange(search.shape[-1], device=x.device)
    at_bottom = below & (search <= nxt) & (lag_ix >= first_below[..., None])
    has = at_bottom.any(-1)
    pick = at_bottom.float().argmax(-1)               # index into search
    tau = (pick + tau_min).clamp(max=tau_max - 1)
    # parabolic interpolation around the picked lag
    y0 = cmndf.gather(-1, (tau - 1)[..., None])[..., 0]
    y1 = cmndf.gather(-1, tau[..., None])[..., 0]
    y2 = cmndf.gather(-1, (tau + 1)[..., None])[..., 0]
    denom = y0 - 2 * y1 + y2
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (y0 - y2) / denom, torch.zeros_like(denom))
    tau_f = tau.float() + shift.clamp(-0.5, 0.5)
    f0 = sample_rate / tau_f
    rms_db = 10 * torch.log10(head.square().mean(-1) + 1e-12)
    loud = (rms_db > SILENCE_DB) & (rms_db > rms_db.amax(-1, keepdim=True) + RELATIVE_SILENCE_DB)
    voiced = has & loud & (f0 >= F0_MIN_HZ) & (f0 <= F0_MAX_HZ)
    return torch.where(voiced, f0, torch.zeros_like(f0)), voiced


def pitch_loss(f0_pred: torch.Tensor, f0_target: torch.Tensor, voiced: torch.Tensor
               ) -> torch.Tensor:
    """Mean absolute error in octaves over the voiced frames (0 when none is voiced)."""
    if not bool(voiced.any()):
        return f0_pred.sum() * 0.0
    err = (torch.log2(f0_pred.float().clamp_min(1.0)) - torch.log2(f0_target.clamp_min(1.0))).abs()
    return err[voiced].mean()
