"""Numba CPU engine: the streaming steps as ``@njit`` kernels over float32 numpy weights.

Why: at batch 1 a 40 ms frame is a few million multiply-adds spread over ~150 small torch ops,
so torch's per-op dispatch dominates. Here each layer is one compiled kernel; matrix products
go to BLAS through ``np.dot``; everything else (LayerNorm, exact-erf GELU, depthwise causal
conv, sliding-window ALiBi attention, STFT compression, overlap-add) is a plain loop.

The weights are read once from the same :class:`~f3stream.model.F3Model` (its parameters and its
non-persistent ``basis``/``slopes`` buffers), so torch, Numba and ONNX compute the same numbers.
States are numpy arrays under the torch model's keys and are **updated in place** (caches and
positions): a step consumes the state it is given and returns it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ..autoencoder import SPECTRAL_COMPRESSION, AudioDecoder
from ..errors import F3StreamError
from ..model import F3Model
from .base import NumpyStateEngine, state_shapes

LN_EPS = 1e-5
_INV_SQRT2 = 0.7071067811865476


# -- kernels ------------------------------------------------------------------------------------
@njit(cache=True)
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


@njit(cache=True)
def _layer_norm(x, g, b, eps):
    n, d = x.shape
    out = np.empty_like(x)
    for i in range(n):
        m, r = _mean_rstd(x[i], eps)
        for j in range(d):
            out[i, j] = (x[i, j] - m) * r * g[j] + b[j]
    return out


@njit(cache=True)
def _linear(x, wt, b):
    """``x [N, I] @ wt [I, O] + b`` (BLAS sgemm)."""
    y = np.dot(x, wt)
    n, o = y.shape
    for i in range(n):
        for j in range(o):
            y[i, j] += b[j]
    return y


@njit(cache=True)
def _gelu_(x):
    """Exact (erf) GELU in place, as ``torch.nn.GELU()``."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            v = x[i, j]
            x[i, j] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))


@njit(cache=True)
def _mlp(x, w1, b1, w2, b2):
    h = _linear(x, w1, b1)
    _gelu_(h)
    return _linear(h, w2, b2)


@njit(cache=True)
def _frame_stft(wav, history, basis, n_fft, hop, power_exp):
    """Causal framing (``history`` updated in place) + DFT-matrix STFT + |X|^c compression.

    ``wav [B, N]`` -> ``[B * N/hop, 2F]`` compressed ``[real, imag]``."""
    bsz, n = wav.shape
    keep = history.shape[1]
    nfr = n // hop
    frames = np.empty((bsz * nfr, n_fft), np.float32)
    for b in range(bsz):
        for j in range(nfr):
            start = j * hop  # in full = [history, wav]
            for s in range(n_fft):
                idx = start + s
                frames[b * nfr + j, s] = history[b, idx] if idx < keep else wav[b, idx - keep]
        # new history: the last ``keep`` samples of [history, wav]
        if n >= keep:
            for s in range(keep):
                history[b, s] = wav[b, n - keep + s]
        else:
            for s in range(keep - n):
                history[b, s] = history[b, s + n]
            for s in range(n):
                history[b, keep - n + s] = wav[b, s]
    spec = np.dot(frames, basis)
    nb = spec.shape[1] // 2
    for i in range(spec.shape[0]):
        for k in range(nb):
            re = spec[i, k]
            im = spec[i, nb + k]
            gain = np.float32((re * re + im * im) + np.float32(1e-8)) ** power_exp
            spec[i, k] = re * gain
            spec[i, nb + k] = im * gain
    return spec


@njit(cache=True)
def _convnext(x, buf, dw_w, dw_b, ln_g, ln_b, w1, b1, w2, b2, gamma):
    """Causal ConvNeXt block on ``x [B, T, C]``; ``buf [B, C, K-1]`` updated in place."""
    bsz, t_len, c_len = x.shape
    k1 = buf.shape[2]
    kk = dw_w.shape[1]
    h = np.empty((bsz * t_len, c_len), np.float32)
    for b in range(bsz):
        for c in range(c_len):
            for t in range(t_len):
                acc = np.float32(dw_b[c])
                for k in range(kk):
                    idx = t + k
                    v = buf[b, c, idx] if idx < k1 else x[b, idx - k1, c]
                    acc += dw_w[c, k] * v
                h[b * t_len + t, c] = acc
            if t_len >= k1:
                for k in range(k1):
                    buf[b, c, k] = x[b, t_len - k1 + k, c]
            else:
                for k in range(k1 - t_len):
                    buf[b, c, k] = buf[b, c, k + t_len]
                for k in range(t_len):
                    buf[b, c, k1 - t_len + k] = x[b, k, c]
    h = _mlp(_layer_norm(h, ln_g, ln_b, LN_EPS), w1, b1, w2, b2)
    out = np.empty_like(x)
    for b in range(bsz):
        for t in range(t_len):
            for c in range(c_len):
                out[b, t, c] = x[b, t, c] + gamma[c] * h[b * t_len + t, c]
    return out


@njit(cache=True)
def _transformer_layer(x, kc, vc, pos, ln1_g, ln1_b, wqkv, bqkv, wo, bo, ln2_g, ln2_b,
                       w1, b1, w2, b2, slopes):
    """Pre-norm layer with sliding-window ALiBi attention on ``x [B, T, D]``.

    ``kc``/``vc [B, H, W, Dh]`` hold the last W keys/values (oldest first) and ``pos [B]`` the
    frames seen; all three are updated in place."""
    bsz, t_len, d = x.shape
    n_heads, w, dh = kc.shape[1], kc.shape[2], kc.shape[3]
    x2 = np.ascontiguousarray(x).reshape(bsz * t_len, d)
    qkv = _linear(_layer_norm(x2, ln1_g, ln1_b, LN_EPS), wqkv, bqkv)
    att = np.empty((bsz * t_len, d), np.float32)
    keys = np.empty((w + t_len, dh), np.float32)
    vals = np.empty((w + t_len, dh), np.float32)
    scores = np.empty(w + t_len, np.float32)
    acc = np.empty(dh, np.float64)
    sq = np.float32(math.sqrt(dh))
    for b in range(bsz):
        p0 = pos[b]
        for hh in range(n_heads):
            keys[:w] = kc[b, hh]
            vals[:w] = vc[b, hh]
            for t in range(t_len):
                row = b * t_len + t
                for e in range(dh):
                    keys[w + t, e] = qkv[row, d + hh * dh + e]
                    vals[w + t, e] = qkv[row, 2 * d + hh * dh + e]
            slope = slopes[hh]
            for i in range(t_len):
                row = b * t_len + i
                lo = i
                if w - p0 > lo:
                    lo = w - p0
                hi = i + w
                mx = -np.inf
                for j in range(lo, hi + 1):
                    s = 0.0
                    for e in range(dh):
                        s += qkv[row, hh * dh + e] * keys[j, e]
                    dist = np.float32(i + w - j)
                    sc = np.float32(s) / sq + (-slope) * dist
                    scores[j] = sc
                    if sc > mx:
                        mx = sc
                tot = 0.0
                acc[:] = 0.0
                for j in range(lo, hi + 1):
                    pj = math.exp(scores[j] - mx)
                    tot += pj
                    for e in range(dh):
                        acc[e] += pj * vals[j, e]
                for e in range(dh):
                    att[row, hh * dh + e] = acc[e] / tot
            kc[b, hh] = keys[t_len:]
            vc[b, hh] = vals[t_len:]
        pos[b] = p0 + t_len
    x3 = x2 + _linear(att, wo, bo)
    x3 += _mlp(_layer_norm(x3, ln2_g, ln2_b, LN_EPS), w1, b1, w2, b2)
    return x3.reshape(bsz, t_len, d)


@njit(cache=True)
def _channel_norm_(z, eps):
    n, d = z.shape
    for i in range(n):
        m, r = _mean_rstd(z[i], eps)
        for j in range(d):
            z[i, j] = (z[i, j] - m) * r


@njit(cache=True)
def _istft_ola(out, basis, carry, max_log_mag, hop):
    """Log-magnitude/phase ``out [B*T4, 2F]`` -> spectrum -> iDFT -> overlap-add.

    ``carry [B, n_fft - hop]`` is updated in place; returns ``[B, T4 * hop]``."""
    rows, two_f = out.shape
    nb = two_f // 2
    spec = np.empty((rows, two_f), np.float32)
    for i in range(rows):
        for k in range(nb):
            lm = out[i, k]
            if lm > max_log_mag:
                lm = max_log_mag
            mag = np.float32(math.exp(lm))
            ph = out[i, nb + k]
            spec[i, k] = mag * np.float32(math.cos(ph))
            spec[i, nb + k] = mag * np.float32(math.sin(ph))
    frames = np.dot(spec, basis)
    bsz, keep = carry.shape
    n_fft = frames.shape[1]
    m = n_fft // hop
    t4 = rows // bsz
    wav = np.empty((bsz, t4 * hop), np.float32)
    acc = np.zeros((t4 + m - 1) * hop, np.float32)
    for b in range(bsz):
        acc[:] = 0.0
        acc[:keep] = carry[b]
        for j in range(t4):
            for s in range(n_fft):
                acc[j * hop + s] += frames[b * t4 + j, s]
        wav[b] = acc[:t4 * hop]
        carry[b] = acc[t4 * hop:]
    return wav


# -- weights --------------------------------------------------------------------------------
def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


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


def _convnext_weights(seq) -> list[tuple]:
    out = []
    for blk in seq.layers:
        w = blk.dwconv.conv.weight  # [C, 1, K] depthwise
        out.append((_f32(w[:, 0, :]), _f32(blk.dwconv.conv.bias), *_ln(blk.norm),
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
        self.max_log_mag = np.float32(AudioDecoder.MAX_LOG_MAGNITUDE)
        enc, dec, rep = model.encoder, model.decoder, model.representation
        self.w = {
            "enc_basis": _f32(enc.basis), "enc_in": _lin(enc.input_proj),
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

    # -- building blocks over a state prefix ----------------------------------------------
    def _convs(self, h, weights, state, prefix):
        for i, w in enumerate(weights):
            buf = state.get(f"{prefix}{i}.buf")
            if buf is None:  # kernel size 1: no context
                buf = np.zeros((h.shape[0], h.shape[2], 0), np.float32)
            h = _convnext(h, buf, *w)
        return h

    def _transformer(self, h, weights, state, prefix):
        for i, w in enumerate(weights):
            p = f"{prefix}{i}.attn."
            h = _transformer_layer(h, state[p + "k"], state[p + "v"], state[p + "pos"], *w)
        return h

    def _represent(self, z2, bsz, t_len, state, prefix):
        w = self.w
        h = _linear(z2, *w["rep_in"]).reshape(bsz, t_len, -1)
        h = self._transformer(h, w["rep_tr"], state, prefix + "transformer.")
        h2 = h.reshape(bsz * t_len, -1)
        return _linear(_layer_norm(h2, *w["rep_norm"], LN_EPS), *w["rep_out"]).reshape(
            bsz, t_len, -1)

    # -- engine API ----------------------------------------------------------------------
    def encode_step(self, wav, state):
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        if wav.ndim != 2 or wav.shape[1] % (self.stft_hop * self.group):
            raise F3StreamError(f"encode_step needs [B, T*hop] samples, got {wav.shape}")
        w = self.w
        bsz = wav.shape[0]
        t_len = wav.shape[1] // (self.stft_hop * self.group)
        if t_len == 0:
            lat = np.zeros((bsz, 0, self.cfg.autoencoder.latent_dim), np.float32)
            reps = (np.zeros((bsz, 0, self.cfg.representation.output_dim), np.float32)
                    if self.has_representations(state) else None)
            return lat, reps, state
        spec = _frame_stft(wav, state["encoder.framing.history"], w["enc_basis"], self.n_fft,
                           self.stft_hop, self.power_exp)
        h = _linear(spec, *w["enc_in"]).reshape(bsz, t_len * self.group, -1)
        h = self._convs(h, w["enc_convs"], state, "encoder.convs.")
        h = _linear(h.reshape(bsz * t_len, -1), *w["enc_group"]).reshape(bsz, t_len, -1)
        h = self._transformer(h, w["enc_tr"], state, "encoder.transformer.")
        z = _linear(_layer_norm(h.reshape(bsz * t_len, -1), *w["enc_norm"], LN_EPS),
                    *w["enc_out"])
        if self.normalize:
            _channel_norm_(z, self.bottleneck_eps)
        reps = None
        if self.has_representations(state):
            reps = self._represent(z, bsz, t_len, state, "representation.")
        return z.reshape(bsz, t_len, -1), reps, state

    def represent_step(self, z, state):
        z = np.ascontiguousarray(z, dtype=np.float32)
        bsz, t_len, _ = z.shape
        if t_len == 0:
            return np.zeros((bsz, 0, self.cfg.representation.output_dim), np.float32), state
        return self._represent(z.reshape(bsz * t_len, -1), bsz, t_len, state, ""), state

    def decode_step(self, z, state):
        z = np.ascontiguousarray(z, dtype=np.float32)
        bsz, t_len, _ = z.shape
        w = self.w
        if t_len == 0:
            return np.zeros((bsz, 0), np.float32), state
        h = _linear(z.reshape(bsz * t_len, -1), *w["dec_in"]).reshape(bsz, t_len, -1)
        h = self._transformer(h, w["dec_tr"], state, "transformer.")
        h = _linear(h.reshape(bsz * t_len, -1), *w["dec_ungroup"]).reshape(
            bsz, t_len * self.group, -1)
        h = self._convs(h, w["dec_convs"], state, "convs.")
        out = _linear(_layer_norm(h.reshape(bsz * t_len * self.group, -1), *w["dec_norm"],
                                  LN_EPS), *w["dec_out"])
        wav = _istft_ola(out, w["dec_basis"], state["ola.carry"], self.max_log_mag,
                         self.stft_hop)
        return wav, state

    def decode_tail(self, state):
        return state["ola.carry"].copy()

    def warmup(self) -> None:
        """Compiles (or loads from the on-disk cache) every kernel with a 1-frame step."""
        hop = self.stft_hop * self.group
        z, _, _ = self.encode_step(np.zeros((1, hop), np.float32), self.init_encode_state(1))
        self.decode_step(z, self.init_decode_state(1))
