"""Numba CPU engine: the streaming steps as ``@njit`` kernels over float32 numpy weights.

Why: at batch 1 a 40 ms frame is a few million multiply-adds spread over ~150 small torch ops,
so torch's per-op dispatch dominates. Here each layer is one compiled kernel; matrix products
go to BLAS through ``np.dot``; everything else (LayerNorm, exact-erf GELU, depthwise causal
conv, sliding-window ALiBi attention, STFT compression, overlap-add) is a plain loop. Kernels
release the GIL (``nogil``), so a server's event loop keeps running while a batched step does.

The weights are read once from the same :class:`~f3stream.model.F3Model` (its parameters and its
non-persistent ``basis``/``slopes`` buffers), so torch, Numba and ONNX compute the same numbers.
States are numpy arrays under the torch model's keys and are **updated in place** (caches and
positions): a step consumes the state it is given and returns it.
"""

from __future__ import annotations

import functools
import math
import os
import time

import numpy as np
import torch
from numba import njit

from ..autoencoder import (LEVEL_FLOOR, LEVEL_SCALE, SPECTRAL_COMPRESSION, SPECTRAL_FLOOR,
                           AudioDecoder)
from ..errors import F3StreamError
from ..model import F3Model
from .base import NumpyStateEngine, state_shapes

LN_EPS = 1e-5
_INV_SQRT2 = 0.7071067811865476


# -- kernels ------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _mean_rstd(row, eps):
    """Mean and 1/sqrt(var + eps) of one row: the statistics of LayerNorm and channel norm."""
    d = row.shape[0]
    m = 0.0
    for j in range(d):
        m += row[j]
    m /= d
    v = 0.0
    for j in range(d):
        t = row[j] - m
        v += t * t
    return m, 1.0 / math.sqrt(v / d + eps)


@njit(cache=True, nogil=True)
def _layer_norm(x, g, b, eps):
    n, d = x.shape
    out = np.empty_like(x)
    for i in range(n):
        m, r = _mean_rstd(x[i], eps)
        for j in range(d):
            out[i, j] = (x[i, j] - m) * r * g[j] + b[j]
    return out


# How a product of a few rows is best done depends on the BLAS build, so the engine measures
# it once per process (:func:`gemm_plan`) and passes the plan to the kernels:
# * Some OpenBLAS builds multiply small products (M*K*N up to about 2^20) on a fast path
#   without packing, and for M just above that limit their packed GEMM is 2-3x slower per row
#   (measured on an AVX-512 machine for batched server steps of 2-16 streams); row blocks
#   that stay on the fast path avoid that dip.
# * Builds without that path (OpenBLAS's Haswell kernels, which OPENBLAS_CORETYPE=Haswell
#   selects even on AVX-512 machines) run 2-8 rows at a fifth of their large-M speed; there
#   the same row blocks made a 10-stream step 1.7x slower, and a plain vectorized loop
#   (:func:`_few_rows_product`) beat BLAS by 1.5-4.7x at 2 rows and 1.06-1.5x at 8.
# A plan is ``(block_limit, own_rows)``: BLAS in row blocks of M*K*N <= block_limit (0: never
# split), and our own loop for 2..own_rows rows (0: never).
SMALL_GEMM = 1_000_000
OWN_ROWS = 8   # the most rows our own loop takes (see gemm_plan)


@njit(cache=True, nogil=True, fastmath=True)
def _few_rows_product(x, wt):
    """``x [N, I] @ wt [I, O]`` for small N: each weight row is loaded once per 4 output rows
    and multiplied into them with SIMD over O (fastmath: fused multiply-adds; the sums over I
    keep their order)."""
    n, k = x.shape
    o = wt.shape[1]
    y = np.zeros((n, o), np.float32)
    i = 0
    while i + 4 <= n:
        y0, y1, y2, y3 = y[i], y[i + 1], y[i + 2], y[i + 3]
        for kk in range(k):
            a0, a1, a2, a3 = x[i, kk], x[i + 1, kk], x[i + 2, kk], x[i + 3, kk]
            w = wt[kk]
            for j in range(o):
                wj = w[j]
                y0[j] += a0 * wj
                y1[j] += a1 * wj
                y2[j] += a2 * wj
                y3[j] += a3 * wj
        i += 4
    while i < n:
        yi = y[i]
        for kk in range(k):
            a = x[i, kk]
            w = wt[kk]
            for j in range(o):
                yi[j] += a * w[j]
        i += 1
    return y


@njit(cache=True, nogil=True)
def _linear(x, wt, b, plan):
    """``x [N, I] @ wt [I, O] + b`` as ``plan`` says (:func:`gemm_plan`): our own loop for
    2..own_rows rows, else BLAS sgemm, in row blocks when that is faster."""
    block_limit, own_rows = plan
    n, k = x.shape
    o = wt.shape[1]
    blk = max(1, block_limit // (k * o))
    if 1 < n <= own_rows:
        y = _few_rows_product(x, wt)
    elif block_limit > 0 and blk < n <= 4 * blk:
        y = np.empty((n, o), np.float32)
        for a in range(0, n, blk):
            e = min(n, a + blk)
            np.dot(x[a:e], wt, y[a:e])
    else:
        y = np.dot(x, wt)
    for i in range(n):
        for j in range(o):
            y[i, j] += b[j]
    return y


@njit(cache=True, nogil=True)
def _repeat_linear(x, wt, b, plan, reps):
    y = _linear(x, wt, b, plan)
    for _ in range(reps - 1):
        y = _linear(x, wt, b, plan)
    return y


def _best_time(x: np.ndarray, wt: np.ndarray, plan: tuple[int, int], runs: int = 5) -> float:
    return _best_times([x], wt, [plan], runs)[0]


def _best_times(xs: list[np.ndarray], wt: np.ndarray, plans: list[tuple[int, int]],
                runs: int = 7) -> list[float]:
    """Per plan: the sum over ``xs`` of the best of ``runs`` timings of 10 products, the
    plans interleaved run by run (a busy machine disturbs them alike)."""
    b = np.zeros(wt.shape[1], np.float32)
    for plan in plans:
        for x in xs:
            _repeat_linear(x, wt, b, plan, 1)  # compile (or load from the cache), warm up
    best = [[float("inf")] * len(xs) for _ in plans]
    for _ in range(runs):
        for i, plan in enumerate(plans):
            for j, x in enumerate(xs):
                t0 = time.perf_counter()
                _repeat_linear(x, wt, b, plan, 10)
                best[i][j] = min(best[i][j], time.perf_counter() - t0)
    return [sum(v) for v in best]


@functools.cache
def gemm_plan() -> tuple[int, int]:
    """``(block_limit, own_rows)`` for this process's BLAS (see the comment above).

    Measured once per process (~0.2 s) on a transformer's QKV product (``[M, 256] @ [256,
    768]``), the candidates interleaved, best of 7 runs each, with the BLAS limited to one
    thread as ``serve`` and ``bench`` run it: row blocks must beat one product by 15 % at
    M = 8 and 10 together (the rounds of 4-10 streams a loaded server mostly runs), and our
    own loop BLAS by 30 % at M = 4, to be used. Where the own loop is used, it takes
    2..:data:`OWN_ROWS` rows: over the model's product shapes it beat OpenBLAS's Haswell
    kernels by 1.5-4.7x at 2 rows and 1.06-1.5x at 8, while from 12 rows on the winner
    depends on the shape (so a timing there would flip from run to run).
    ``F3STREAM_GEMM_PLAN=block_limit,own_rows`` skips the measurement ("0,0": plain BLAS).
    Only speed depends on the plan: every path sums the same products, up to float32
    rounding order.

    Why one thread: the engine is built (and this measured) before ``limit_threads`` runs,
    and OpenBLAS's second thread, on a machine whose cores are busy, waits for a time slice:
    a packed product then took 7-15 ms instead of 0.1 ms, so row blocks (which stay on the
    small-matrix path, one thread) won by 100x and the plan flipped with the machine's load
    (docs/benchmarks.md, "A server round under each plan")."""
    forced = os.environ.get("F3STREAM_GEMM_PLAN")
    if forced is not None:
        try:
            block_limit, own_rows = (max(0, int(v)) for v in forced.split(","))
        except ValueError:
            raise F3StreamError("F3STREAM_GEMM_PLAN must be two integers 'block_limit,"
                                f"own_rows', got {forced!r}") from None
        return block_limit, own_rows
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    wt = rng.standard_normal((256, 768), dtype=np.float32)
    x = rng.standard_normal((10, 256), dtype=np.float32)
    _best_time(x[:4], wt, (0, 0), runs=1)  # compiles, so the BLAS is loaded before the limit
    with threadpool_limits(1):
        blocks = _best_times([x[:8], x], wt, [(SMALL_GEMM, 0), (0, 0)])
        block_limit = SMALL_GEMM if blocks[0] < 0.85 * blocks[1] else 0
        own = _best_times([x[:4]], wt, [(block_limit, 4), (block_limit, 0)])
    return block_limit, OWN_ROWS if own[0] < own[1] / 1.3 else 0


# GELU(x) = x/2 (1 + erf(x/sqrt 2)), with erf(u) = u P(u^2) / Q(u^2) on |u| <= 4 (and +-1
# beyond, where float32 erf rounds to 1). P (degree 5) and Q (degree 5) are our own weighted
# least-squares fit of erf(u)/u (max relative error 2.5e-8 in float64); in float32 the GELU
# stays within 1.5e-6 of torch's. Unlike math.erf (a libm call per element), the rational form
# vectorizes: 27x faster, and GELU was a third of a batched encoder step.
_F32 = np.float32
_ERF_CLAMP = _F32(4.0)
_ERF_P = tuple(_F32(c) for c in (1.1283791393041935, 0.19354491535365517, 0.05310177153959037,
                                 0.003883347397745411, 0.0002845678662999194,
                                 1.9868113433437577e-06))
_ERF_Q = tuple(_F32(c) for c in (1.0, 0.5048572707280131, 0.11534998000062187,
                                 0.015207259656416346, 0.0011855752333322332,
                                 3.742056957772552e-05))
_P0, _P1, _P2, _P3, _P4, _P5 = _ERF_P
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5 = _ERF_Q
_HALF, _ONE, _INV_SQRT2_F = _F32(0.5), _F32(1.0), _F32(_INV_SQRT2)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gelu_(x):
    """Exact-erf GELU (as ``torch.nn.GELU()``) in place, to float32 precision; ``x``
    contiguous. fastmath only licenses SIMD here: inputs are finite (checked at the API)."""
    f = x.reshape(-1)
    for i in range(f.size):
        v = f[i]
        u = min(max(v * _INV_SQRT2_F, -_ERF_CLAMP), _ERF_CLAMP)
        t = u * u
        p = ((((_P5 * t + _P4) * t + _P3) * t + _P2) * t + _P1) * t + _P0
        q = ((((_Q5 * t + _Q4) * t + _Q3) * t + _Q2) * t + _Q1) * t + _Q0
        e = min(max(u * p / q, -_ONE), _ONE)
        f[i] = _HALF * v * (_ONE + e)


@njit(cache=True, nogil=True)
def _mlp(x, w1, b1, w2, b2, plan):
    h = _linear(x, w1, b1, plan)
    _gelu_(h)
    return _linear(h, w2, b2, plan)


@njit(cache=True, nogil=True)
def _frame_features(wav, history, rows, cos_basis, sin_basis, n_fft, hop, power_exp, floor,
                    level_scale, level_floor):
    """Causal framing (``history[rows[b]]`` updated in place) + windowed DFT + |X|^c
    compression, in float64 as :meth:`AudioEncoder.features` (which says why).

    The window is symmetric (w[j] = w[n_fft - j]), so the DFT needs only the sums
    ``x[j] + x[n_fft - j]`` against cosines and the differences against sines: two products
    of half the size of the full ``[n_fft, 2F]`` basis, which keeps float64 as fast as the
    float32 full product was. ``wav [B, N]`` -> ``[B * N/hop, 2F]`` float32 ``[real, imag]``,
    plus the log-mean-power column when ``level_scale`` is not 0 (``level_feature``)."""
    bsz, n = wav.shape
    keep = history.shape[1]
    nfr = n // hop
    n_pairs = sin_basis.shape[0]          # j = 1 .. (n_fft - 1) // 2
    even = np.empty((bsz * nfr, cos_basis.shape[0]), np.float64)
    odd = np.empty((bsz * nfr, n_pairs), np.float64)
    frame = np.empty(n_fft, np.float64)
    for b in range(bsz):
        r = rows[b]
        for j in range(nfr):
            start = j * hop  # in full = [history, wav]
            for s in range(n_fft):
                idx = start + s
                frame[s] = history[r, idx] if idx < keep else wav[b, idx - keep]
            row = b * nfr + j
            even[row, 0] = frame[0]
            for p in range(1, n_pairs + 1):
                even[row, p] = frame[p] + frame[n_fft - p]
                odd[row, p - 1] = frame[p] - frame[n_fft - p]
            if n_fft % 2 == 0:
                even[row, n_fft // 2] = frame[n_fft // 2]
        # new history: the last ``keep`` samples of [history, wav]
        if n >= keep:
            for s in range(keep):
                history[r, s] = wav[b, n - keep + s]
        else:
            for s in range(keep - n):
                history[r, s] = history[r, s + n]
            for s in range(n):
                history[r, keep - n + s] = wav[b, s]
    re = np.dot(even, cos_basis)
    im = np.dot(odd, sin_basis)
    nb = re.shape[1]
    with_level = level_scale != 0.0
    spec = np.empty((re.shape[0], 2 * nb + (1 if with_level else 0)), np.float32)
    for i in range(re.shape[0]):
        if with_level:
            total = 0.0
            for k in range(nb):
                total += re[i, k] * re[i, k] + im[i, k] * im[i, k]
            spec[i, 2 * nb] = np.float32(level_scale * np.log(total / nb + level_floor))
        for k in range(nb):
            # the power needs float64 (it is where the cancellation was); its float32
            # rounding only moves the gain by ~1e-7 relative, and powf is twice as fast
            p = np.float32(re[i, k] * re[i, k] + im[i, k] * im[i, k] + floor)
            gain = p ** power_exp
            spec[i, k] = np.float32(re[i, k]) * gain
            spec[i, nb + k] = np.float32(im[i, k]) * gain
    return spec


@njit(cache=True, nogil=True)
def _convnext(x, buf, rows, plan, dw_wt, dw_b, ln_g, ln_b, w1, b1, w2, b2, gamma):
    """Causal ConvNeXt block on ``x [B, T, C]``; ``buf[rows[b]]`` (``[C, K-1]``) updated in
    place. ``dw_wt`` is the depthwise kernel transposed to ``[K, C]``: each stream's history
    and input are laid out time-major in one window, so every tap is a SIMD pass over the
    channels (same sums, same order as a per-channel loop)."""
    bsz, t_len, c_len = x.shape
    k1 = buf.shape[2]
    kk = dw_wt.shape[0]
    h = np.empty((bsz * t_len, c_len), np.float32)
    win = np.empty((k1 + t_len, c_len), np.float32)
    for b in range(bsz):
        r = rows[b]
        for s in range(k1):
            for c in range(c_len):
                win[s, c] = buf[r, c, s]
        win[k1:] = x[b]
        for t in range(t_len):
            acc = h[b * t_len + t]
            acc[:] = dw_b
            for k in range(kk):
                wk = dw_wt[k]
                src = win[t + k]
                for c in range(c_len):
                    acc[c] += wk[c] * src[c]
        for s in range(k1):  # the new history: the window's last K-1 steps
            for c in range(c_len):
                buf[r, c, s] = win[t_len + s, c]
    h = _mlp(_layer_norm(h, ln_g, ln_b, LN_EPS), w1, b1, w2, b2, plan)
    out = np.empty_like(x)
    for b in range(bsz):
        for t in range(t_len):
            for c in range(c_len):
                out[b, t, c] = x[b, t, c] + gamma[c] * h[b * t_len + t, c]
    return out


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _window_attention(qkv, kc, vc, pos, rows, slopes, bsz, t_len):
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
def _transformer_layer(x, kc, vc, pos, rows, plan, ln1_g, ln1_b, wqkv, bqkv, wo, bo, ln2_g,
                       ln2_b, w1, b1, w2, b2, slopes):
    """Pre-norm layer with sliding-window ALiBi attention on ``x [B, T, D]``; the caches of
    the streams at ``rows`` are updated in place (see :func:`_window_attention`)."""
    bsz, t_len, d = x.shape
    x2 = np.ascontiguousarray(x).reshape(bsz * t_len, d)
    qkv = _linear(_layer_norm(x2, ln1_g, ln1_b, LN_EPS), wqkv, bqkv, plan)
    att = _window_attention(qkv, kc, vc, pos, rows, slopes, bsz, t_len)
    x3 = x2 + _linear(att, wo, bo, plan)
    x3 += _mlp(_layer_norm(x3, ln2_g, ln2_b, LN_EPS), w1, b1, w2, b2, plan)
    return x3.reshape(bsz, t_len, d)


@njit(cache=True, nogil=True)
def _channel_norm_(z, eps):
    n, d = z.shape
    for i in range(n):
        m, r = _mean_rstd(z[i], eps)
        for j in range(d):
            z[i, j] = (z[i, j] - m) * r


@njit(cache=True, nogil=True)
def _istft_ola(out, basis, carry, rows, max_log_mag, hop):
    """Log-magnitude/phase ``out [B*T4, 2F]`` -> spectrum -> iDFT -> overlap-add.

    ``carry[rows[b]]`` (``[n_fft - hop]``) is updated in place; returns ``[B, T4 * hop]``."""
    n_rows, two_f = out.shape
    nb = two_f // 2
    spec = np.empty((n_rows, two_f), np.float32)
    for i in range(n_rows):
        for k in range(nb):
            lm = out[i, k]
            if lm > max_log_mag:
                lm = max_log_mag
            mag = np.float32(math.exp(lm))
            ph = out[i, nb + k]
            spec[i, k] = mag * np.float32(math.cos(ph))
            spec[i, nb + k] = mag * np.float32(math.sin(ph))
    frames = np.dot(spec, basis)
    bsz = rows.shape[0]
    keep = carry.shape[1]
    n_fft = frames.shape[1]
    m = n_fft // hop
    t4 = n_rows // bsz
    wav = np.empty((bsz, t4 * hop), np.float32)
    acc = np.zeros((t4 + m - 1) * hop, np.float32)
    for b in range(bsz):
        acc[:] = 0.0
        acc[:keep] = carry[rows[b]]
        for j in range(t4):
            for s in range(n_fft):
                acc[j * hop + s] += frames[b * t4 + j, s]
        wav[b] = acc[:t4 * hop]
        carry[rows[b]] = acc[t4 * hop:]
    return wav


# -- whole steps: one call (one GIL release) per step -------------------------------------
# A server's event loop holds the GIL while it parses and sends; a step made of ~25 kernel
# calls must win the GIL back ~25 times, and measured that doubled a small batched step. So
# each direction is one compiled call. Layer weights and states travel as tuples indexed by
# layer; ``n`` says how many are real (a config may have zero layers; a placeholder keeps the
# tuple typed).
@njit(cache=True, nogil=True)
def _conv_stack(h, bufs, weights, n, rows, plan):
    for i in range(n):
        h = _convnext(h, bufs[i], rows, plan, *weights[i])
    return h


@njit(cache=True, nogil=True)
def _transformer_stack(h, ks, vs, ps, weights, n, rows, plan):
    for i in range(n):
        h = _transformer_layer(h, ks[i], vs[i], ps[i], rows, plan, *weights[i])
    return h


@njit(cache=True, nogil=True)
def _encode_kernel(wav, rows, history, bufs, conv_w, n_conv, ks, vs, ps, tr_w, n_tr, cos_basis,
                   sin_basis, in_w, in_b, group_w, group_b, norm_g, norm_b, out_w, out_b, n_fft,
                   hop, group, power_exp, floor, level_scale, level_floor, normalize, eps,
                   plan):
    """``wav [B, T*hop*group]`` -> latents ``[B*T, D]``; the streams' states at ``rows``
    advance in place."""
    bsz = wav.shape[0]
    t_len = wav.shape[1] // (hop * group)
    spec = _frame_features(wav, history, rows, cos_basis, sin_basis, n_fft, hop, power_exp,
                           floor, level_scale, level_floor)
    h = _linear(spec, in_w, in_b, plan)
    h = h.reshape(bsz, t_len * group, h.shape[1])
    h = _conv_stack(h, bufs, conv_w, n_conv, rows, plan)
    h = _linear(h.reshape(bsz * t_len, group * h.shape[2]), group_w, group_b, plan)
    h = _transformer_stack(h.reshape(bsz, t_len, h.shape[1]), ks, vs, ps, tr_w, n_tr, rows,
                           plan)
    z = _linear(_layer_norm(h.reshape(bsz * t_len, h.shape[2]), norm_g, norm_b, LN_EPS),
                out_w, out_b, plan)
    if normalize:
        _channel_norm_(z, eps)
    return z


@njit(cache=True, nogil=True)
def _represent_kernel(z2, bsz, rows, ks, vs, ps, tr_w, n_tr, in_w, in_b, norm_g, norm_b,
                      out_w, out_b, plan):
    """Latents ``[B*T, D]`` -> representations ``[B*T, R]``, states at ``rows`` in place."""
    t_len = z2.shape[0] // bsz
    h = _linear(z2, in_w, in_b, plan)
    h = _transformer_stack(h.reshape(bsz, t_len, h.shape[1]), ks, vs, ps, tr_w, n_tr, rows,
                           plan)
    return _linear(_layer_norm(h.reshape(bsz * t_len, h.shape[2]), norm_g, norm_b, LN_EPS),
                   out_w, out_b, plan)


@njit(cache=True, nogil=True)
def _decode_kernel(z2, bsz, rows, ks, vs, ps, tr_w, n_tr, bufs, conv_w, n_conv, carry, in_w,
                   in_b, ungroup_w, ungroup_b, norm_g, norm_b, out_w, out_b, basis,
                   max_log_mag, hop, group, plan):
    """Latents ``[B*T, D]`` -> waveform ``[B, T*hop*group]`` (delayed by the overlap-add)."""
    t_len = z2.shape[0] // bsz
    h = _linear(z2, in_w, in_b, plan)
    h = _transformer_stack(h.reshape(bsz, t_len, h.shape[1]), ks, vs, ps, tr_w, n_tr, rows,
                           plan)
    h = _linear(h.reshape(bsz * t_len, h.shape[2]), ungroup_w, ungroup_b, plan)
    h = _conv_stack(h.reshape(bsz, t_len * group, h.shape[1] // group), bufs, conv_w, n_conv,
                    rows, plan)
    out = _linear(_layer_norm(h.reshape(bsz * t_len * group, h.shape[2]), norm_g, norm_b,
                              LN_EPS), out_w, out_b, plan)
    return _istft_ola(out, basis, carry, rows, max_log_mag, hop)


# -- weights --------------------------------------------------------------------------------
def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def _symmetric_dft(basis: torch.Tensor, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's ``[n_fft, 2F]`` float64 DFT basis folded for :func:`_frame_features`:
    cosine rows 0 .. n_fft//2 and sine rows 1 .. (n_fft-1)//2. Checks the symmetry that the
    folding relies on (a symmetric window)."""
    b = basis.detach().cpu().to(torch.float64).numpy()
    n_bins = b.shape[1] // 2
    j = np.arange(1, (n_fft - 1) // 2 + 1)
    if not (np.allclose(b[j, :n_bins], b[n_fft - j, :n_bins], rtol=0, atol=1e-12)
            and np.allclose(b[j, n_bins:], -b[n_fft - j, n_bins:], rtol=0, atol=1e-12)):
        raise F3StreamError("numba backend needs a symmetric analysis window")
    return (np.ascontiguousarray(b[:n_fft // 2 + 1, :n_bins]),
            np.ascontiguousarray(b[1:(n_fft - 1) // 2 + 1, n_bins:]))


def _lin(m: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(_f32(m.weight).T), _f32(m.bias)


def _ln(m: torch.nn.LayerNorm) -> tuple[np.ndarray, np.ndarray]:
    if abs(m.eps - LN_EPS) > 1e-12:
        raise F3StreamError(f"numba backend assumes LayerNorm eps {LN_EPS}, got {m.eps}")
    return _f32(m.weight), _f32(m.bias)


def _transformer_weights(seq) -> list[tuple]:
    out = []
    for layer in seq.layers:
        out.append((*_ln(layer.norm1), *_lin(layer.attn.qkv), *_lin(layer.attn.out),
                    *_ln(layer.norm2), *_lin(layer.mlp[0]), *_lin(layer.mlp[2]),
                    _f32(layer.attn.slopes.reshape(-1))))
    return out


_LAYER_NDIMS = (1, 1, 2, 1, 2, 1, 1, 1, 2, 1, 2, 1, 1)   # _transformer_weights' arrays
_CONV_NDIMS = (2, 1, 1, 1, 2, 1, 2, 1, 1)                # _convnext_weights' arrays


def _c(a: np.ndarray) -> np.ndarray:
    """A state array the kernels may update in place (a copy would lose the update)."""
    if not a.flags.c_contiguous:
        raise F3StreamError("numba engine states must be C-contiguous arrays")
    return a


def _convnext_weights(seq) -> list[tuple]:
    out = []
    for blk in seq.layers:
        w = blk.dwconv.conv.weight  # [C, 1, K] depthwise, used as [K, C] (see _convnext)
        out.append((np.ascontiguousarray(_f32(w[:, 0, :]).T), _f32(blk.dwconv.conv.bias),
                    *_ln(blk.norm),
                    *_lin(blk.pw1), *_lin(blk.pw2), _f32(blk.gamma)))
    return out


class NumbaEngine(NumpyStateEngine):
    """CPU-only; no torch in the hot loop (torch is used once, to read the weights)."""

    name = "numba"

    def __init__(self, model: F3Model, device: torch.device | None = None):
        if device is not None and torch.device(device).type != "cpu":
            raise F3StreamError(f"the numba backend runs on the CPU only, not {device}; use "
                                "device='cpu' (or backend='torch'/'onnx' for a GPU)")
        cfg = model.cfg
        ae = cfg.autoencoder
        super().__init__(cfg, state_shapes(model.encoder.init_state(1)),
                         state_shapes(model.representation.init_state(1)),
                         state_shapes(model.decoder.init_state(1)))
        self.n_fft, self.stft_hop = ae.n_fft, ae.stft_hop
        self.group = ae.stft_frames_per_latent
        self.normalize = model.bottleneck.normalize
        self.bottleneck_eps = float(model.bottleneck.eps)
        self.power_exp = np.float32((SPECTRAL_COMPRESSION - 1.0) / 2.0)
        self.level_scale = LEVEL_SCALE if ae.level_feature else 0.0
        self.max_log_mag = np.float32(AudioDecoder.MAX_LOG_MAGNITUDE)
        self.gemm_plan = gemm_plan()
        enc, dec, rep = model.encoder, model.decoder, model.representation
        self.w = {
            "enc_dft": _symmetric_dft(enc.basis, ae.n_fft), "enc_in": _lin(enc.input_proj),
            "enc_convs": _convnext_weights(enc.convs), "enc_group": _lin(enc.group_proj),
            "enc_tr": _transformer_weights(enc.transformer), "enc_norm": _ln(enc.out_norm),
            "enc_out": _lin(enc.out_proj),
            "rep_in": _lin(rep.input_proj), "rep_tr": _transformer_weights(rep.transformer),
            "rep_norm": _ln(rep.out_norm), "rep_out": _lin(rep.out_proj),
            "dec_in": _lin(dec.input_proj), "dec_tr": _transformer_weights(dec.transformer),
            "dec_ungroup": _lin(dec.ungroup_proj), "dec_convs": _convnext_weights(dec.convs),
            "dec_norm": _ln(dec.out_norm), "dec_out": _lin(dec.out_proj),
            "dec_basis": _f32(dec.basis),
        }
        self._empty_buf = np.zeros((1, ae.conv_channels, 0), np.float32)
        self._enc_convs = self._layers(self.w["enc_convs"], _CONV_NDIMS)
        self._dec_convs = self._layers(self.w["dec_convs"], _CONV_NDIMS)
        self._enc_tr = self._layers(self.w["enc_tr"], _LAYER_NDIMS)
        self._dec_tr = self._layers(self.w["dec_tr"], _LAYER_NDIMS)
        self._rep_tr = self._layers(self.w["rep_tr"], _LAYER_NDIMS)

    # -- layer tuples for the whole-step kernels -------------------------------------------
    @staticmethod
    def _layers(weights: list[tuple], ndims: tuple[int, ...]) -> tuple[tuple, int]:
        """(weights as a tuple, count); an empty stack gets one never-used placeholder."""
        if weights:
            return tuple(weights), len(weights)
        return (tuple(np.zeros((1,) * d, np.float32) for d in ndims),), 0

    def _conv_state(self, state, prefix, n):
        bufs = []
        for i in range(n):
            buf = state.get(f"{prefix}{i}.buf")
            bufs.append(self._empty_buf if buf is None else _c(buf))  # kernel size 1
        return tuple(bufs) or (self._empty_buf,)

    @staticmethod
    def _attn_state(state, prefix, n):
        if n == 0:
            cache = np.zeros((1, 1, 1, 1), np.float32)
            return (cache,), (cache,), (np.zeros(1, np.int64),)
        ks = tuple(_c(state[f"{prefix}{i}.attn.k"]) for i in range(n))
        vs = tuple(_c(state[f"{prefix}{i}.attn.v"]) for i in range(n))
        ps = tuple(_c(state[f"{prefix}{i}.attn.pos"]) for i in range(n))
        return ks, vs, ps

    def _represent(self, z2, bsz, state, prefix, rows):
        tr_w, n_tr = self._rep_tr
        ks, vs, ps = self._attn_state(state, prefix + "transformer.", n_tr)
        w = self.w
        return _represent_kernel(z2, bsz, rows, ks, vs, ps, tr_w, n_tr, *w["rep_in"],
                                 *w["rep_norm"], *w["rep_out"], self.gemm_plan)

    # -- engine API ----------------------------------------------------------------------
    def encode_step(self, wav, state):
        z, reps = self.encode_rows(wav, state, np.arange(np.shape(wav)[0], dtype=np.int64))
        return z, reps, state

    def encode_rows(self, wav, state, rows):
        """The kernels index state rows themselves: no gather, no scatter."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if wav.ndim != 2 or wav.shape[1] % (self.stft_hop * self.group):
            raise F3StreamError(f"encode_step needs [B, T*hop] samples, got {wav.shape}")
        bsz = wav.shape[0]
        t_len = wav.shape[1] // (self.stft_hop * self.group)
        with_reps = self.has_representations(state)
        if t_len == 0:
            lat = np.zeros((bsz, 0, self.cfg.autoencoder.latent_dim), np.float32)
            reps = (np.zeros((bsz, 0, self.cfg.representation.output_dim), np.float32)
                    if with_reps else None)
            return lat, reps
        z, reps = self._run_encode_kernels(wav, state, rows, with_reps)
        z = z.reshape(bsz, t_len, -1)
        return z, (None if reps is None else reps.reshape(bsz, t_len, -1))

    def _run_encode_kernels(self, wav, state, rows, with_reps):
        """One whole-step kernel call (plus one for representations) for these rows."""
        w = self.w
        conv_w, n_conv = self._enc_convs
        tr_w, n_tr = self._enc_tr
        ks, vs, ps = self._attn_state(state, "encoder.transformer.", n_tr)
        z = _encode_kernel(wav, rows, _c(state["encoder.framing.history"]),
                           self._conv_state(state, "encoder.convs.", n_conv), conv_w,
                           n_conv, ks, vs, ps, tr_w, n_tr, *w["enc_dft"], *w["enc_in"],
                           *w["enc_group"], *w["enc_norm"], *w["enc_out"], self.n_fft,
                           self.stft_hop, self.group, self.power_exp, SPECTRAL_FLOOR,
                           self.level_scale, LEVEL_FLOOR, self.normalize,
                           self.bottleneck_eps, self.gemm_plan)
        reps = None
        if with_reps:
            reps = self._represent(z, wav.shape[0], state, "representation.", rows)
        return z, reps

    def represent_step(self, z, state):
        z = np.ascontiguousarray(z, dtype=np.float32)
        bsz, t_len, _ = z.shape
        if t_len == 0:
            return np.zeros((bsz, 0, self.cfg.representation.output_dim), np.float32), state
        rows = np.arange(bsz, dtype=np.int64)
        r = self._represent(z.reshape(bsz * t_len, -1), bsz, state, "", rows)
        return r.reshape(bsz, t_len, -1), state

    def decode_step(self, z, state):
        wav = self.decode_rows(z, state, np.arange(np.shape(z)[0], dtype=np.int64))
        return wav, state

    def decode_rows(self, z, state, rows):
        """In place on the decoder-state rows ``rows`` (see :meth:`encode_rows`)."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        bsz, t_len, _ = z.shape
        w = self.w
        if t_len == 0:
            return np.zeros((bsz, 0), np.float32)
        tr_w, n_tr = self._dec_tr
        conv_w, n_conv = self._dec_convs
        ks, vs, ps = self._attn_state(state, "transformer.", n_tr)
        wav = _decode_kernel(z.reshape(bsz * t_len, -1), bsz, rows, ks, vs, ps, tr_w, n_tr,
                             self._conv_state(state, "convs.", n_conv), conv_w, n_conv,
                             _c(state["ola.carry"]), *w["dec_in"], *w["dec_ungroup"],
                             *w["dec_norm"], *w["dec_out"], w["dec_basis"], self.max_log_mag,
                             self.stft_hop, self.group, self.gemm_plan)
        return wav

    def decode_tail(self, state):
        return state["ola.carry"].copy()

    def warmup(self) -> None:
        """Compiles (or loads from the on-disk cache) every kernel with a 1-frame step."""
        hop = self.stft_hop * self.group
        z, _, _ = self.encode_step(np.zeros((1, hop), np.float32), self.init_encode_state(1))
        self.decode_step(z, self.init_decode_state(1))
