"""Mirror of the ``torch.nn`` layers the model is built from: ``nn.Linear``, ``nn.LayerNorm``,
``nn.GELU`` and the Linear-GELU-Linear MLP, as numba kernels over named weights; plus how a
product of a few rows is done on this machine's BLAS (:func:`gemm_plan`).

Kernels compute what the torch layer computes, in float32 (sums of LayerNorm statistics in
float64). Weights are ``NamedTuple``s (numba passes them into compiled code as structs, and
kernels read their fields by name); ``from_torch`` reads one from its torch layer.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import NamedTuple

import numpy as np
from numba import njit
from torch import nn

from ...errors import F3StreamError
from .weights import Mirror, Reader, f32

_INV_SQRT2 = 0.7071067811865476


# -- weights ------------------------------------------------------------------------------
class Linear(NamedTuple):
    """``nn.Linear``: ``y = x @ wt + b``, the weight transposed to ``[in, out]``."""

    wt: np.ndarray
    b: np.ndarray

    @classmethod
    def from_torch(cls, m: nn.Linear, read: Reader) -> "Linear":
        if m.bias is None:
            raise F3StreamError("the numba engine needs Linear layers with a bias")
        return cls(np.ascontiguousarray(f32(m.weight).T), f32(m.bias))


class LayerNorm(NamedTuple):
    """``nn.LayerNorm`` over the last dimension, with its own ``eps``."""

    weight: np.ndarray
    bias: np.ndarray
    eps: float

    @classmethod
    def from_torch(cls, m: nn.LayerNorm, read: Reader) -> "LayerNorm":
        if len(m.normalized_shape) != 1 or m.weight is None or m.bias is None:
            raise F3StreamError("the numba engine needs LayerNorms over the last dimension "
                                "with weight and bias")
        return cls(f32(m.weight), f32(m.bias), float(m.eps))


class Mlp(NamedTuple):
    """``nn.Sequential(nn.Linear, nn.GELU(), nn.Linear)`` (a transformer layer's MLP)."""

    fc1: Linear
    fc2: Linear

    @classmethod
    def from_torch(cls, m: nn.Sequential, read: Reader) -> "Mlp":
        layers = list(m)
        if not (len(layers) == 3 and isinstance(layers[0], nn.Linear)
                and isinstance(layers[1], nn.GELU) and layers[1].approximate == "none"
                and isinstance(layers[2], nn.Linear)):
            raise F3StreamError("the numba engine runs nn.Sequential only as Linear, exact "
                                f"GELU, Linear; got {m}")
        return cls(read(layers[0]), read(layers[2]))


MIRRORS = {nn.Linear: Mirror(Linear), nn.LayerNorm: Mirror(LayerNorm),
           nn.Sequential: Mirror(Mlp)}


# -- LayerNorm -------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def mean_rstd(row, eps):
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
def layer_norm(x, w):
    """``nn.LayerNorm`` of the rows of ``x [N, D]`` (weights :class:`LayerNorm`)."""
    n, d = x.shape
    g, b = w.weight, w.bias
    out = np.empty_like(x)
    for i in range(n):
        m, r = mean_rstd(x[i], w.eps)
        for j in range(d):
            out[i, j] = (x[i, j] - m) * r * g[j] + b[j]
    return out


# -- Linear ----------------------------------------------------------------------------------
# How a product of a few rows is best done depends on the BLAS build, so the engine measures
# it once per process (:func:`gemm_plan`) and passes the plan to the kernels:
# * Some OpenBLAS builds multiply small products (M*K*N up to about 2^20) on a fast path
#   without packing, and for M just above that limit their packed GEMM is 2-3x slower per row
#   (measured on an AVX-512 machine for batched server steps of 2-16 streams); row blocks
#   that stay on the fast path avoid that dip.
# * Builds without that path (OpenBLAS's Haswell kernels, which OPENBLAS_CORETYPE=Haswell
#   selects even on AVX-512 machines) run 2-8 rows at a fifth of their large-M speed; there
#   the same row blocks made a 10-stream step 1.7x slower, and a plain vectorized loop
#   (:func:`few_rows_product`) beat BLAS by 1.5-4.7x at 2 rows and 1.06-1.5x at 8.
# A plan is ``(block_limit, own_rows)``: BLAS in row blocks of M*K*N <= block_limit (0: never
# split), and our own loop for 2..own_rows rows (0: never).
SMALL_GEMM = 1_000_000
OWN_ROWS = 8   # the most rows our own loop takes (see gemm_plan)


@njit(cache=True, nogil=True, fastmath=True)
def few_rows_product(x, wt):
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
def linear(x, w, plan):
    """``nn.Linear``: ``x [N, I] @ w.wt [I, O] + w.b`` as ``plan`` says (:func:`gemm_plan`):
    our own loop for 2..own_rows rows, else BLAS sgemm, in row blocks when that is faster."""
    wt, b = w.wt, w.b
    block_limit, own_rows = plan
    n, k = x.shape
    o = wt.shape[1]
    blk = max(1, block_limit // (k * o))
    if 1 < n <= own_rows:
        y = few_rows_product(x, wt)
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
def _repeat_linear(x, w, plan, reps):
    y = linear(x, w, plan)
    for _ in range(reps - 1):
        y = linear(x, w, plan)
    return y


def _best_time(x: np.ndarray, wt: np.ndarray, plan: tuple[int, int], runs: int = 5) -> float:
    return _best_times([x], wt, [plan], runs)[0]


def _best_times(xs: list[np.ndarray], wt: np.ndarray, plans: list[tuple[int, int]],
                runs: int = 7) -> list[float]:
    """Per plan: the sum over ``xs`` of the best of ``runs`` timings of 10 products, the
    plans interleaved run by run (a busy machine disturbs them alike)."""
    w = Linear(wt, np.zeros(wt.shape[1], np.float32))
    for plan in plans:
        for x in xs:
            _repeat_linear(x, w, plan, 1)  # compile (or load from the cache), warm up
    best = [[float("inf")] * len(xs) for _ in plans]
    for _ in range(runs):
        for i, plan in enumerate(plans):
            for j, x in enumerate(xs):
                t0 = time.perf_counter()
                _repeat_linear(x, w, plan, 10)
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
def gelu_(x):
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
def mlp(x, fc1, fc2, plan):
    """Linear, exact GELU, Linear on the rows of ``x``."""
    h = linear(x, fc1, plan)
    gelu_(h)
    return linear(h, fc2, plan)
