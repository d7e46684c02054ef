"""Mirror of :mod:`f3stream.streaming.conv`: the causal depthwise convolution with its
left-context buffer, and the causal ConvNeXt block built on it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ....errors import F3StreamError
from ....streaming.conv import CausalConv1d, CausalConvNeXtBlock
from ..nn import LayerNorm, Linear, layer_norm, mlp
from ..weights import Mirror, Reader, f32


class CausalConv1dWeights(NamedTuple):
    """A depthwise :class:`CausalConv1d`: its kernel transposed to ``[K, C]`` (each tap is a
    SIMD pass over the channels) and its bias."""

    wt: np.ndarray
    b: np.ndarray

    @classmethod
    def from_torch(cls, m: CausalConv1d, read: Reader) -> "CausalConv1dWeights":
        conv = m.conv
        c = conv.in_channels
        if (conv.groups, conv.out_channels, conv.dilation, conv.bias is None) != (c, c, (1,),
                                                                                False):
            raise F3StreamError("the numba engine runs CausalConv1d only depthwise, with "
                                "dilation 1 and a bias")
        return cls(np.ascontiguousarray(f32(conv.weight[:, 0, :]).T), f32(conv.bias))


class CausalConv1dState(NamedTuple):
    buf: np.ndarray  # [*, C, K-1]: each stream's last K-1 inputs

    @classmethod
    def absent(cls, m: CausalConv1d, key: str) -> np.ndarray:
        """A kernel-size-1 convolution has no state: an empty buffer the kernel never reads."""
        return np.zeros((1, m.conv.in_channels, 0), np.float32)


class CausalConvNeXtBlockWeights(NamedTuple):
    dwconv: CausalConv1dWeights
    norm: LayerNorm
    pw1: Linear
    pw2: Linear
    gamma: np.ndarray


# the block's state is its depthwise convolution's (declared under the empty prefix)
MIRRORS = {CausalConv1d: Mirror(CausalConv1dWeights, CausalConv1dState),
           CausalConvNeXtBlock: Mirror(CausalConvNeXtBlockWeights)}


@njit(cache=True, nogil=True)
def causal_conv1d(x, s, rows, w):
    """Depthwise causal convolution of ``x [B, T, C]`` -> ``[B*T, C]``; ``s.buf[rows[b]]``
    (``[C, K-1]``) is updated in place. Each stream's history and input are laid out
    time-major in one window, so every tap is a SIMD pass over the channels (same sums, same
    order as a per-channel loop)."""
    buf = s.buf
    dw_wt, dw_b = w.wt, w.b
    bsz, t_len, c_len = x.shape
    k1 = buf.shape[2]
    kk = dw_wt.shape[0]
    h = np.empty((bsz * t_len, c_len), np.float32)
    win = np.empty((k1 + t_len, c_len), np.float32)
    for b in range(bsz):
        r = rows[b]
        for s_ in range(k1):
            for c in range(c_len):
                win[s_, c] = buf[r, c, s_]
        win[k1:] = x[b]
        for t in range(t_len):
            acc = h[b * t_len + t]
            acc[:] = dw_b
            for k in range(kk):
                wk = dw_wt[k]
                src = win[t + k]
                for c in range(c_len):
                    acc[c] += wk[c] * src[c]
        for s_ in range(k1):  # the new history: the window's last K-1 steps
            for c in range(c_len):
                buf[r, c, s_] = win[t_len + s_, c]
    return h


@njit(cache=True, nogil=True)
def causal_convnext_block(x, s, rows, plan, w):
    """:class:`CausalConvNeXtBlock` on ``x [B, T, C]``; the states at ``rows`` advance in
    place."""
    bsz, t_len, c_len = x.shape
    h = causal_conv1d(x, s, rows, w.dwconv)
    h = mlp(layer_norm(h, w.norm), w.pw1, w.pw2, plan)
    gamma = w.gamma
    out = np.empty_like(x)
    for b in range(bsz):
        for t in range(t_len):
            for c in range(c_len):
                out[b, t, c] = x[b, t, c] + gamma[c] * h[b * t_len + t, c]
    return out


@njit(cache=True, nogil=True)
def causal_convnext_stack(h, states, rows, plan, weights):
    """A :class:`~f3stream.streaming.StreamingSequential` of ConvNeXt blocks (``weights`` None:
    no blocks)."""
    if weights is None:
        return h
    for i in range(len(weights)):
        h = causal_convnext_block(h, states[i], rows, plan, weights[i])
    return h
