"""Mirror of :mod:`f3stream.autoencoder`: the causal STFT-domain encoder and the iSTFT
decoder, each one kernel over its layers' kernels."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from numba import njit

from ...autoencoder import AudioDecoder, AudioEncoder
from ...errors import F3StreamError
from .harmonic import HarmonicHeadWeights, decoder_frames
from .nn import LayerNorm, Linear, layer_norm, linear
from .streaming.attention import transformer_stack
from .streaming.conv import causal_convnext_stack
from .streaming.framing import (CausalFramingWeights, OverlapAddWeights, causal_framing,
                                overlap_add)
from .weights import Mirror, Reader, f32


# -- the encoder's input features ------------------------------------------------------------
class SpectralFeatures(NamedTuple):
    """:meth:`AudioEncoder.features`: the windowed DFT (its basis folded, see
    :func:`fold_dft`) and the compression and level numerics the encoder defines."""

    cos_basis: np.ndarray    # [n_fft//2 + 1, F] float64
    sin_basis: np.ndarray    # [(n_fft-1)//2, F] float64
    power_exp: np.float32    # (compression - 1) / 2
    floor: float
    level_scale: float       # 0: no level feature
    level_floor: float

    @classmethod
    def from_torch(cls, m: AudioEncoder, read: Reader) -> "SpectralFeatures":
        return cls(*fold_dft(m.basis, m.cfg.n_fft),
                   np.float32((m.spectral_compression - 1.0) / 2.0), float(m.spectral_floor),
                   0.0 if m.level_scale is None else float(m.level_scale),
                   float(m.level_floor))


def fold_dft(basis: torch.Tensor, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's ``[n_fft, 2F]`` float64 DFT basis folded for :func:`spectral_features`:
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


@njit(cache=True, nogil=True)
def spectral_features(frames, w):
    """Windowed DFT + |X|^c compression of float64 ``frames [N, n_fft]``, in float64 as
    :meth:`AudioEncoder.features` (which says why) -> ``[N, 2F]`` float32 ``[real, imag]``,
    plus the log-mean-power column when ``w.level_scale`` is not 0 (``level_feature``).

    The window is symmetric (w[j] = w[n_fft - j]), so the DFT needs only the sums
    ``x[j] + x[n_fft - j]`` against cosines and the differences against sines: two products
    of half the size of the full ``[n_fft, 2F]`` basis, which keeps float64 as fast as the
    float32 full product was."""
    cos_basis, sin_basis = w.cos_basis, w.sin_basis
    n_rows, n_fft = frames.shape
    n_pairs = sin_basis.shape[0]          # j = 1 .. (n_fft - 1) // 2
    even = np.empty((n_rows, cos_basis.shape[0]), np.float64)
    odd = np.empty((n_rows, n_pairs), np.float64)
    for row in range(n_rows):
        frame = frames[row]
        even[row, 0] = frame[0]
        for p in range(1, n_pairs + 1):
            even[row, p] = frame[p] + frame[n_fft - p]
            odd[row, p - 1] = frame[p] - frame[n_fft - p]
        if n_fft % 2 == 0:
            even[row, n_fft // 2] = frame[n_fft // 2]
    re = np.dot(even, cos_basis)
    im = np.dot(odd, sin_basis)
    nb = re.shape[1]
    level_scale, floor, power_exp = w.level_scale, w.floor, w.power_exp
    with_level = level_scale != 0.0
    spec = np.empty((re.shape[0], 2 * nb + (1 if with_level else 0)), np.float32)
    for i in range(re.shape[0]):
        if with_level:
            total = 0.0
            for k in range(nb):
                total += re[i, k] * re[i, k] + im[i, k] * im[i, k]
            spec[i, 2 * nb] = np.float32(level_scale * np.log(total / nb + w.level_floor))
        for k in range(nb):
            # the power needs float64 (it is where the cancellation was); its float32
            # rounding only moves the gain by ~1e-7 relative, and powf is twice as fast
            p = np.float32(re[i, k] * re[i, k] + im[i, k] * im[i, k] + floor)
            gain = p ** power_exp
            spec[i, k] = np.float32(re[i, k]) * gain
            spec[i, nb + k] = np.float32(im[i, k]) * gain
    return spec


# -- encoder -----------------------------------------------------------------------------------
class AudioEncoderWeights(NamedTuple):
    framing: CausalFramingWeights
    features: SpectralFeatures
    input_proj: Linear
    convs: Any                 # tuple of CausalConvNeXtBlockWeights, or None
    group: int                 # STFT frames per latent frame
    group_proj: Linear
    transformer: Any           # tuple of TransformerLayerWeights, or None
    out_norm: LayerNorm
    out_proj: Linear

    @classmethod
    def from_torch(cls, m: AudioEncoder, read: Reader) -> "AudioEncoderWeights":
        return cls(read(m.framing), SpectralFeatures.from_torch(m, read), read(m.input_proj),
                   read(m.convs), m.cfg.stft_frames_per_latent, read(m.group_proj),
                   read(m.transformer), read(m.out_norm), read(m.out_proj))


class AudioEncoderState(NamedTuple):
    framing: Any
    convs: Any
    transformer: Any


@njit(cache=True, nogil=True)
def audio_encoder(wav, s, rows, plan, w):
    """:class:`AudioEncoder` step: ``wav [B, T*hop]`` -> latents ``[B*T, D]`` (before the
    bottleneck); the streams' states at ``rows`` advance in place."""
    bsz = wav.shape[0]
    group = w.group
    frames = causal_framing(wav, s.framing, rows, w.framing)
    h = linear(spectral_features(frames, w.features), w.input_proj, plan)
    t_len = h.shape[0] // (bsz * group)
    h = h.reshape(bsz, t_len * group, h.shape[1])
    h = causal_convnext_stack(h, s.convs, rows, plan, w.convs)
    h = linear(h.reshape(bsz * t_len, group * h.shape[2]), w.group_proj, plan)
    h = transformer_stack(h.reshape(bsz, t_len, h.shape[1]), s.transformer, rows, plan,
                          w.transformer)
    return linear(layer_norm(h.reshape(bsz * t_len, h.shape[2]), w.out_norm), w.out_proj, plan)


# -- decoder -----------------------------------------------------------------------------------
class AudioDecoderWeights(NamedTuple):
    input_proj: Linear
    transformer: Any           # tuple of TransformerLayerWeights, or None
    group: int                 # STFT frames per latent frame
    ungroup_proj: Linear
    convs: Any                 # tuple of CausalConvNeXtBlockWeights, or None
    out_norm: LayerNorm
    out_proj: Linear
    max_log_magnitude: np.float32
    basis: np.ndarray          # [2F, n_fft] inverse DFT (with the window)
    overlap_add: OverlapAddWeights
    harmonic: Any              # HarmonicHeadWeights, or None without a harmonic source

    @classmethod
    def from_torch(cls, m: AudioDecoder, read: Reader) -> "AudioDecoderWeights":
        harmonic = (None if m.harmonic is None else
                    HarmonicHeadWeights(read(m.pitch), read(m.harmonic_proj), read(m.harmonic)))
        return cls(read(m.input_proj), read(m.transformer), m.cfg.stft_frames_per_latent,
                   read(m.ungroup_proj), read(m.convs), read(m.out_norm), read(m.out_proj),
                   np.float32(m.MAX_LOG_MAGNITUDE), f32(m.basis), read(m.overlap_add),
                   harmonic)


class AudioDecoderState(NamedTuple):
    transformer: Any
    convs: Any
    ola: Any
    harmonic: Any              # HarmonicSourceState, or None without a harmonic source

    @classmethod
    def absent(cls, m: AudioDecoder, key: str) -> None:
        """A decoder without a harmonic source has no oscillator state."""
        return None


MIRRORS = {AudioEncoder: Mirror(AudioEncoderWeights, AudioEncoderState),
           AudioDecoder: Mirror(AudioDecoderWeights, AudioDecoderState)}


@njit(cache=True, nogil=True)
def audio_decoder(z2, bsz, s, rows, plan, w):
    """:class:`AudioDecoder` step: latents ``[B*T, D]`` -> waveform ``[B, T*hop]`` (delayed
    by the overlap-add); the streams' states at ``rows`` advance in place."""
    t_len = z2.shape[0] // bsz
    group = w.group
    h = linear(z2, w.input_proj, plan)
    h = transformer_stack(h.reshape(bsz, t_len, h.shape[1]), s.transformer, rows, plan,
                          w.transformer)
    h = linear(h.reshape(bsz * t_len, h.shape[2]), w.ungroup_proj, plan)
    h = causal_convnext_stack(h.reshape(bsz, t_len * group, h.shape[1] // group), s.convs,
                              rows, plan, w.convs)
    hn = layer_norm(h.reshape(bsz * t_len * group, h.shape[2]), w.out_norm)
    out = linear(hn, w.out_proj, plan)
    frames = decoder_frames(out, hn, z2, bsz, s.harmonic, rows, plan, w.harmonic, w.basis,
                            w.max_log_magnitude)
    return overlap_add(frames, s.ola, rows, w.overlap_add)
