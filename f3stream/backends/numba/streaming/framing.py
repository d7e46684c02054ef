"""Mirror of :mod:`f3stream.streaming.framing`: causal framing with its history, and
overlap-add with its carry."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ....streaming.framing import CausalFraming, OverlapAdd
from ..weights import Mirror


class CausalFramingWeights(NamedTuple):  # sizes only: the framing has no weights
    frame_length: int
    hop: int


class CausalFramingState(NamedTuple):
    history: np.ndarray  # [*, frame_length - hop]: each stream's last samples


class OverlapAddWeights(NamedTuple):  # sizes only
    frame_length: int
    hop: int


class OverlapAddState(NamedTuple):
    carry: np.ndarray  # [*, frame_length - hop]: the samples still waiting for frames


MIRRORS = {CausalFraming: Mirror(CausalFramingWeights, CausalFramingState),
           OverlapAdd: Mirror(OverlapAddWeights, OverlapAddState)}


@njit(cache=True, nogil=True)
def causal_framing(wav, s, rows, w):
    """:class:`CausalFraming` of ``wav [B, N]`` -> ``[B * N/hop, frame_length]`` frames in
    float64 (what the encoder's features are computed in); ``s.history[rows[b]]`` is updated
    in place."""
    history = s.history
    n_fft, hop = w.frame_length, w.hop
    bsz, n = wav.shape
    keep = history.shape[1]
    nfr = n // hop
    frames = np.empty((bsz * nfr, n_fft), np.float64)
    for b in range(bsz):
        r = rows[b]
        for j in range(nfr):
            start = j * hop  # in full = [history, wav]
            frame = frames[b * nfr + j]
            for s_ in range(n_fft):
                idx = start + s_
                frame[s_] = history[r, idx] if idx < keep else wav[b, idx - keep]
        # new history: the last ``keep`` samples of [history, wav]
        if n >= keep:
            for s_ in range(keep):
                history[r, s_] = wav[b, n - keep + s_]
        else:
            for s_ in range(keep - n):
                history[r, s_] = history[r, s_ + n]
            for s_ in range(n):
                history[r, keep - n + s_] = wav[b, s_]
    return frames


@njit(cache=True, nogil=True)
def overlap_add(frames, s, rows, w):
    """:class:`OverlapAdd` of ``frames [B*T, frame_length]`` -> ``[B, T*hop]`` samples;
    ``s.carry[rows[b]]`` is updated in place."""
    carry = s.carry
    hop = w.hop
    bsz = rows.shape[0]
    keep = carry.shape[1]
    n_fft = frames.shape[1]
    m = n_fft // hop
    t4 = frames.shape[0] // bsz
    wav = np.empty((bsz, t4 * hop), np.float32)
    acc = np.zeros((t4 + m - 1) * hop, np.float32)
    for b in range(bsz):
        acc[:] = 0.0
        acc[:keep] = carry[rows[b]]
        for j in range(t4):
            for s_ in range(n_fft):
                acc[j * hop + s_] += frames[b * t4 + j, s_]
        wav[b] = acc[:t4 * hop]
        carry[rows[b]] = acc[t4 * hop:]
    return wav
