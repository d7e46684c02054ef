"""Mirror of :mod:`f3stream.harmonic` and of the end of :meth:`AudioDecoder.spectrum`: the
pitch head (float64), the integer-phase oscillator with its framing, and the spectrum with or
without the harmonic gains, followed by the inverse DFT."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ...harmonic import (F0_MAX_HZ, F0_MIN_HZ, HARMONIC_LIMIT, NYQUIST_PHASE, PHASE_ONE,
                         HarmonicSource, PitchHead)
from .nn import Linear, linear
from .streaming.framing import CausalFramingWeights, causal_framing
from .weights import Mirror, Reader, f32

LOG_F0_RATIO = math.log(F0_MAX_HZ / F0_MIN_HZ)
HARMONIC_COUNT = HARMONIC_LIMIT * PHASE_ONE  # as torch computes it: one float64 product


class PitchHeadWeights(NamedTuple):
    """:class:`PitchHead` in float64 (as torch computes it), weights transposed."""

    w1t: np.ndarray   # [D, hidden]
    b1: np.ndarray
    w2t: np.ndarray   # [hidden, frames_per_latent]
    b2: np.ndarray

    @classmethod
    def from_torch(cls, m: PitchHead, read: Reader) -> "PitchHeadWeights":
        def f64(t):
            return np.ascontiguousarray(t.detach().cpu().double().numpy())
        return cls(np.ascontiguousarray(f64(m.hidden.weight).T), f64(m.hidden.bias),
                   np.ascontiguousarray(f64(m.out.weight).T), f64(m.out.bias))


class HarmonicSourceWeights(NamedTuple):
    sample_rate: int
    hop: int
    framing: CausalFramingWeights
    basis: np.ndarray  # [n_fft, 2F] float32 unwindowed DFT, scaled by 2 / n_fft

    @classmethod
    def from_torch(cls, m: HarmonicSource, read: Reader) -> "HarmonicSourceWeights":
        return cls(int(m.sample_rate), int(m.hop), read(m.framing), f32(m.basis))


class HarmonicSourceState(NamedTuple):
    phase: np.ndarray  # [*, 1] int64: the oscillator phase, 2**32 units per cycle
    framing: Any


class HarmonicHeadWeights(NamedTuple):
    """What a decoder with ``harmonic_source`` adds: its pitch head, its gains, its source."""

    pitch: PitchHeadWeights
    proj: Linear
    source: HarmonicSourceWeights


MIRRORS = {PitchHead: Mirror(PitchHeadWeights),
           HarmonicSource: Mirror(HarmonicSourceWeights, HarmonicSourceState)}


@njit(cache=True, nogil=True)
def pitch_f0(z2, w):
    """:class:`PitchHead`: latents ``[N, D]`` float32 -> f0 ``[N * frames_per_latent]`` Hz."""
    h = np.dot(z2.astype(np.float64), w.w1t)
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = h[i, j] + w.b1[j]
            h[i, j] = v if v > 0.0 else 0.0
    logit = np.dot(h, w.w2t)
    f0 = np.empty(logit.size, np.float64)
    m = logit.shape[1]
    for i in range(logit.shape[0]):
        for j in range(m):
            x = logit[i, j] + w.b2[j]
            f0[i * m + j] = F0_MIN_HZ * math.exp(LOG_F0_RATIO * (1.0 / (1.0 + math.exp(-x))))
    return f0


@njit(cache=True, nogil=True)
def excitation(f0, bsz, s, rows, w):
    """:meth:`HarmonicSource.excitation`: f0 ``[B*N]`` -> pulse train ``[B, N*hop]`` float32;
    ``s.phase[rows[b]]`` advances in place."""
    hop = w.hop
    n = f0.size // bsz
    wav = np.empty((bsz, n * hop), np.float32)
    scale = PHASE_ONE / w.sample_rate
    for b in range(bsz):
        phase = s.phase[rows[b], 0]
        for j in range(n):
            d = np.int64(np.rint(f0[b * n + j] * scale))
            if d < 1:
                d = np.int64(1)
            elif d > NYQUIST_PHASE:
                d = np.int64(NYQUIST_PHASE)
            count = HARMONIC_COUNT / np.float64(d)
            k = math.floor(count)
            frac = count - k
            for i in range(hop):
                p = (phase + d * i) % PHASE_ONE
                phi = np.float64(p) * (math.pi / PHASE_ONE)
                if p == 0:
                    v = k
                else:
                    v = math.sin((2.0 * k + 1.0) * phi) / (2.0 * math.sin(phi)) - 0.5
                wav[b, j * hop + i] = np.float32(v + frac * math.cos((2.0 * k + 2.0) * phi))
            phase = (phase + d * hop) % PHASE_ONE
        s.phase[rows[b], 0] = phase
    return wav


NO_HARMONICS = np.zeros((0, 0), np.float32)


@njit(cache=True, nogil=True)
def inverse_spectrum(out, g, exc, basis, max_log_mag):
    """The end of :meth:`AudioDecoder.spectrum` and its inverse DFT: log-magnitude/phase
    ``out [N, 2F]`` -> ``[N, n_fft]`` windowed frames; with gains ``g`` and excitation
    spectrum ``exc`` (both ``[N, 2F]``; empty: no harmonic source) ``M (e^{j phi} + g E)``."""
    n_rows, two_f = out.shape
    nb = two_f // 2
    harmonics = g.shape[0] > 0
    spec = np.empty((n_rows, two_f), np.float32)
    for i in range(n_rows):
        for k in range(nb):
            lm = out[i, k]
            if lm > max_log_mag:
                lm = max_log_mag
            mag = np.float32(math.exp(lm))
            ph = out[i, nb + k]
            re = np.float32(math.cos(ph))
            im = np.float32(math.sin(ph))
            if harmonics:
                re = (re + g[i, k] * exc[i, k]) - g[i, nb + k] * exc[i, nb + k]
                im = (im + g[i, k] * exc[i, nb + k]) + g[i, nb + k] * exc[i, k]
            spec[i, k] = mag * re
            spec[i, nb + k] = mag * im
    return np.dot(spec, basis)


@njit(cache=True, nogil=True)
def harmonic_inverse_spectrum(out, hn, z2, bsz, s, rows, plan, w, basis, max_log_mag):
    """:meth:`AudioDecoder.spectrum` with the harmonic source (pitch, oscillator, its DFT,
    the gains), then the inverse DFT."""
    f0 = pitch_f0(z2, w.pitch)
    wav = excitation(f0, bsz, s, rows, w.source)
    frames = causal_framing(wav, s.framing, rows, w.source.framing)
    exc = np.dot(frames.astype(np.float32), w.source.basis)
    return inverse_spectrum(out, linear(hn, w.proj, plan), exc, basis, max_log_mag)


@njit(cache=True, nogil=True)
def decoder_frames(out, hn, z2, bsz, s, rows, plan, w, basis, max_log_mag):
    """The decoder's windowed output frames ``[N, n_fft]``, with the harmonic source where
    the decoder has one (``w``, ``s`` None: it has not)."""
    if w is None:
        return inverse_spectrum(out, NO_HARMONICS, NO_HARMONICS, basis, max_log_mag)
    return harmonic_inverse_spectrum(out, hn, z2, bsz, s, rows, plan, w, basis, max_log_mag)
