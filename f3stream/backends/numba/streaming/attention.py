"""Mirror of :mod:`f3stream.streaming.attention`: sliding-window ALiBi attention over a fixed
key/value cache, and the pre-norm transformer layer built on it."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ....streaming.attention import SlidingWindowAttention, TransformerLayer
from ..nn import LayerNorm, Linear, Mlp, layer_norm, linear, mlp
from ..weights import Mirror, Reader, f32


class SlidingWindowAttentionWeights(NamedTuple):
    qkv: Linear
    out: Linear
    slopes: np.ndarray  # [H] ALiBi slopes (the torch buffer is [1, H, 1, 1])

    @classmethod
    def from_torch(cls, m: SlidingWindowAttention, read: Reader
                   ) -> "SlidingWindowAttentionWeights":
        return cls(read(m.qkv), read(m.out), f32(m.slopes).reshape(-1))


class SlidingWindowAttentionState(NamedTuple):
    k: np.ndarray    # [*, H, W, Dh]: each stream's last W keys, oldest first
    v: np.ndarray    # [*, H, W, Dh]: values
    pos: np.ndarray  # [*] int64: frames seen


class TransformerLayerWeights(NamedTuple):
    norm1: LayerNorm
    attn: SlidingWindowAttentionWeights
    norm2: LayerNorm
    mlp: Mlp


class TransformerLayerState(NamedTuple):
    attn: SlidingWindowAttentionState


MIRRORS = {SlidingWindowAttention: Mirror(SlidingWindowAttentionWeights,
                                          SlidingWindowAttentionState),
           TransformerLayer: Mirror(TransformerLayerWeights, TransformerLayerState)}


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def attend(qkv, kc, vc, pos, rows, slopes, bsz, t_len):
    """Sliding-window ALiBi attention of ``qkv [B*T, 3D]`` against each stream's cache plus
    its new keys, read where they lie (no concatenated copy); then the caches shift by T in
    place. Row ``rows[b]`` of ``kc``/``vc [*, H, W, Dh]`` holds stream b's last W keys/values
    (oldest first) and of ``pos [*]`` the frames it has seen. fastmath: float32 dot products
    in SIMD order (as BLAS would), well inside the engines' 1e-4 parity."""
    n_heads, w, dh = kc.shape[1], kc.shape[2], kc.shape[3]
    d = n_heads * dh
    att = np.empty((bsz * t_len, d), np.float32)
    scores = np.empty(w + t_len, np.float32)
    acc = np.empty(dh, np.float32)
    inv_sq = np.float32(1.0 / math.sqrt(dh))
    for b in range(bsz):
        r = rows[b]
        p0 = pos[r]
        base = b * t_len
        for hh in range(n_heads):
            qo, ko, vo = hh * dh, d + hh * dh, 2 * d + hh * dh
            slope = slopes[hh]
            for i in range(t_len):
                row = base + i
                lo = max(i, w - p0)   # keys before the stream start do not exist
                hi = i + w            # query i is key w + i: distances 0 .. w
                mx = np.float32(-np.inf)
                for j in range(lo, hi + 1):
                    s = np.float32(0.0)
                    if j < w:
                        for e in range(dh):
                            s += qkv[row, qo + e] * kc[r, hh, j, e]
                    else:
                        for e in range(dh):
                            s += qkv[row, qo + e] * qkv[base + j - w, ko + e]
                    sc = s * inv_sq - slope * np.float32(i + w - j)
                    scores[j] = sc
                    mx = max(mx, sc)
                tot = np.float32(0.0)
                acc[:] = 0.0
                for j in range(lo, hi + 1):
                    pj = np.float32(math.exp(scores[j] - mx))
                    tot += pj
                    if j < w:
                        for e in range(dh):
                            acc[e] += pj * vc[r, hh, j, e]
                    else:
                        for e in range(dh):
                            acc[e] += pj * qkv[base + j - w, vo + e]
                for e in range(dh):
                    att[row, qo + e] = acc[e] / tot
            # the cache becomes the last W of [cache, new keys]
            keep = max(w - t_len, 0)
            for j in range(keep):  # ascending: the source is always ahead of the target
                for e in range(dh):
                    kc[r, hh, j, e] = kc[r, hh, j + t_len, e]
                    vc[r, hh, j, e] = vc[r, hh, j + t_len, e]
            for j in range(keep, w):
                src = base + t_len - (w - j)
                for e in range(dh):
                    kc[r, hh, j, e] = qkv[src, ko + e]
                    vc[r, hh, j, e] = qkv[src, vo + e]
        pos[r] = p0 + t_len
    return att


@njit(cache=True, nogil=True)
def sliding_window_attention(x2, s, rows, plan, w, bsz, t_len):
    """:class:`SlidingWindowAttention` on the rows of ``x2 [B*T, D]``; the caches of the
    streams at ``rows`` advance in place."""
    qkv = linear(x2, w.qkv, plan)
    return linear(attend(qkv, s.k, s.v, s.pos, rows, w.slopes, bsz, t_len), w.out, plan)


@njit(cache=True, nogil=True)
def transformer_layer(x, s, rows, plan, w):
    """:class:`TransformerLayer` on ``x [B, T, D]``; the states at ``rows`` advance in place."""
    bsz, t_len, d = x.shape
    x2 = np.ascontiguousarray(x).reshape(bsz * t_len, d)
    x3 = x2 + sliding_window_attention(layer_norm(x2, w.norm1), s.attn, rows, plan, w.attn,
                                       bsz, t_len)
    x3 += mlp(layer_norm(x3, w.norm2), w.mlp.fc1, w.mlp.fc2, plan)
    return x3.reshape(bsz, t_len, d)


@njit(cache=True, nogil=True)
def transformer_stack(h, states, rows, plan, weights):
    """A :class:`~f3stream.streaming.StreamingSequential` of transformer layers (``weights``
    None: no layers)."""
    if weights is None:
        return h
    for i in range(len(weights)):
        h = transformer_layer(h, states[i], rows, plan, weights[i])
    return h
