"""Harmonic excitation for the decoder (a source-filter head), streamable and exact.

Why: trained on spectral losses alone, an iSTFT decoder that does not know where each
harmonic of the voice lies answers with a smooth spectrum at the level of the valleys between
harmonics (``docs/training.md`` sections 3 and 6: magnitudes, not phases, were the deficit).
Neural source-filter vocoders give the decoder the harmonics instead: it predicts the pitch
of each frame, an oscillator renders a band-limited pulse train at that pitch, and the
decoder only shapes it (per-bin gains), which spectral losses learn easily.

The oscillator's phase is integer arithmetic: ``2**32`` units per cycle, a per-sample
increment rounded from the pitch, accumulated modulo ``2**32`` in an int64 state. Every
engine (torch, numba, ONNX) therefore computes the same phases bit for bit, whatever the
chunking, and the pulse itself is evaluated in float64 from a closed form (a Dirichlet
kernel: the sum of the harmonics below Nyquist, each of amplitude one).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .streaming import CausalFraming, State, StateEntry, StreamingModule, substate, with_prefix
from .streaming.framing import rdft_basis

F0_MIN_HZ = 50.0
F0_MAX_HZ = 500.0
PHASE_ONE = 1 << 32          # phase units per cycle
NYQUIST_PHASE = (1 << 31) - 1  # largest per-sample increment below half a cycle
# Harmonics up to this fraction of the sample rate; the one that straddles it is faded in by
# the fraction that lies below, so the pulse changes continuously with f0 (a harmonic that
# popped in or out would make the output jump at the tiny f0 differences between engines).
# 0.46 * 24 kHz = 11 kHz: the faded harmonic stays below Nyquist for any f0 <= 960 Hz.
HARMONIC_LIMIT = 0.46


def f0_from_logit(logit: torch.Tensor) -> torch.Tensor:
    """The decoder's pitch head output -> f0 in Hz, inside ``[F0_MIN_HZ, F0_MAX_HZ]``
    (log-uniform: the sigmoid picks a point on the octave scale)."""
    return F0_MIN_HZ * torch.exp(math.log(F0_MAX_HZ / F0_MIN_HZ) * torch.sigmoid(logit))


def f0_logit_bias(f0_hz: float) -> float:
    """The logit whose f0 is ``f0_hz`` (the pitch head's initial bias)."""
    t = math.log(f0_hz / F0_MIN_HZ) / math.log(F0_MAX_HZ / F0_MIN_HZ)
    return math.log(t / (1.0 - t))


class PitchHead(nn.Module):
    """Latents ``[B, T, D]`` -> f0 ``[B, T * frames_per_latent]`` in Hz (float64), one per STFT
    frame: a one-hidden-layer ReLU MLP on each latent frame, computed in float64.

    Why from the latents and in float64: the oscillator integrates the pitch, so a pitch that
    differs by float32 rounding between two engines (or between a streamed and an offline
    decode, whose matrix products sum in another order) would leave their phases apart for
    the rest of the stream. The decoder's input latents are the same bits in every engine,
    and a float64 MLP on them differs by ~1e-16 relative, far below the phase step
    (``phase_increment`` rounds to 2**-32 cycle)."""

    def __init__(self, latent_dim: int, hidden: int, frames_per_latent: int,
                 initial_f0_hz: float = 150.0):
        super().__init__()
        self.hidden = nn.Linear(latent_dim, hidden)
        self.out = nn.Linear(hidden, frames_per_latent)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, f0_logit_bias(initial_f0_hz))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            h = torch.relu(z.to(torch.float64) @ self.hidden.weight.to(torch.float64).T
                           + self.hidden.bias.to(torch.float64))
            logit = h @ self.out.weight.to(torch.float64).T + self.out.bias.to(torch.float64)
        return f0_from_logit(logit).reshape(z.shape[0], -1)


def phase_increment(f0: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """f0 (Hz, any float dtype) -> int64 per-sample phase increment, in ``[1, NYQUIST_PHASE]``."""
    d = torch.round(f0.to(torch.float64) * (PHASE_ONE / sample_rate)).to(torch.int64)
    return d.clamp(1, NYQUIST_PHASE)


def pulse_train(start: torch.Tensor, d: torch.Tensor, hop: int) -> torch.Tensor:
    """``hop`` samples per frame of ``sum_{k=1..K} cos(2 pi k phi) + r cos(2 pi (K+1) phi)``,
    ``K + r`` (``r`` in [0, 1)) the number of harmonics below ``HARMONIC_LIMIT``:
    ``start, d [B, N]`` int64 -> ``[B, N, hop]`` float64."""
    i = torch.arange(hop, device=d.device, dtype=torch.int64)
    p = torch.remainder(start[..., None] + d[..., None] * i, PHASE_ONE)
    count = (HARMONIC_LIMIT * PHASE_ONE) / d.to(torch.float64)[..., None]
    k = torch.floor(count)
    phi = p.to(torch.float64) * (math.pi / PHASE_ONE)          # pi * phase in cycles
    at_zero = p == 0
    s = torch.where(at_zero, torch.ones_like(phi), torch.sin(phi))
    dirichlet = torch.where(at_zero, k, torch.sin((2.0 * k + 1.0) * phi) / (2.0 * s) - 0.5)
    return dirichlet + (count - k) * torch.cos((2.0 * k + 2.0) * phi)


class HarmonicSource(StreamingModule):
    """Per-frame f0 ``[B, N]`` (Hz) -> ``[B, N, 2F]`` unwindowed DFT ``[real, imag]`` of the
    excitation frames, scaled by ``2 / n_fft`` so that each harmonic peaks near 1.

    Hop ``n`` of the excitation is rendered at f0 ``n``; frame ``n`` is the last ``n_fft``
    samples up to the end of hop ``n`` (the decoder's own framing), so the decoder's
    overlap-add (Hann synthesis window) gives back the excitation exactly where its gains are
    flat. State: the oscillator phase (int64) and the framing's history."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = hop
        self.framing = CausalFraming(n_fft, hop)
        basis = rdft_basis(n_fft, torch.ones(n_fft, dtype=torch.float64)) * (2.0 / n_fft)
        self.register_buffer("basis", basis.float(), persistent=False)

    def own_state_spec(self) -> dict[str, StateEntry]:
        return {"phase": StateEntry((1,), torch.int64)}

    def state_children(self) -> dict[str, StreamingModule]:
        return {"framing": self.framing}

    def excitation(self, f0: torch.Tensor, phase: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f0 [B, N]``, ``phase [B, 1]`` -> (``[B, N*hop]`` float32 pulse train, new phase)."""
        d = phase_increment(f0.detach(), self.sample_rate)
        inc = d * self.hop
        ends = phase + torch.cumsum(inc, dim=-1)
        start = torch.remainder(ends - inc, PHASE_ONE)
        wav = pulse_train(start, d, self.hop).to(torch.float32)
        new_phase = torch.remainder(phase + inc.sum(dim=-1, keepdim=True), PHASE_ONE)
        return wav.reshape(f0.shape[0], -1), new_phase

    def step(self, f0: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        wav, phase = self.excitation(f0, state["phase"])
        frames, s_framing = self.framing.step(wav, substate(state, "framing"))
        return frames @ self.basis, {"phase": phase, **with_prefix("framing", s_framing)}
