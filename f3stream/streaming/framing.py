"""Causal STFT framing, overlap-add with a carry buffer, and DFT bases as matrices.

The STFT and its inverse are written as matrix products with fixed bases (not torch.stft), so
the torch, ONNX and Numba paths compute exactly the same arithmetic and frame-by-frame
streaming needs nothing but a small history / carry buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .state import State, StateEntry, StreamingModule


def hann_window(n: int) -> torch.Tensor:
    """Periodic Hann window: at 50% overlap its shifted copies sum to exactly one."""
    return 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n, dtype=torch.float64) / n)


def rdft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """``[n_fft, 2F]`` float64 matrix: ``frame @ basis`` gives ``[real(F), imag(F)]`` of the
    windowed rfft. Kept in float64 (see :meth:`f3stream.autoencoder.AudioEncoder.features`)."""
    n = torch.arange(n_fft, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    ang = 2 * math.pi * n * k / n_fft
    w = window.to(torch.float64)[:, None]
    return torch.cat([w * torch.cos(ang), -w * torch.sin(ang)], dim=1)


def irdft_basis(n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """``[2F, n_fft]`` matrix: ``[real, imag] @ basis`` is the windowed inverse rfft."""
    n_bins = n_fft // 2 + 1
    k = torch.arange(n_bins, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    ang = 2 * math.pi * k * n / n_fft
    scale = torch.full((n_bins, 1), 2.0, dtype=torch.float64)
    scale[0] = 1.0
    if n_fft % 2 == 0:
        scale[-1] = 1.0
    re = scale * torch.cos(ang) / n_fft
    im = -scale * torch.sin(ang) / n_fft
    im[0] = 0.0
    if n_fft % 2 == 0:
        im[-1] = 0.0
    return (torch.cat([re, im], dim=0) * window.to(torch.float64)[None, :]).float()


class CausalFraming(StreamingModule):
    """Cuts ``[B, T*hop]`` samples into ``[B, T, frame_length]`` frames ending at each hop.

    Frame ``j`` covers samples ``[(j+1)*hop - frame_length, (j+1)*hop)``: no look-ahead. The state
    ``history`` holds the last ``frame_length - hop`` samples (zeros at stream start).
    """

    def __init__(self, frame_length: int, hop: int):
        super().__init__()
        if frame_length < hop:
            raise ValueError("frame_length must be >= hop")
        self.frame_length = frame_length
        self.hop = hop

    def own_state_spec(self) -> dict[str, StateEntry]:
        return {"history": StateEntry((self.frame_length - self.hop,))}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if x.shape[-1] % self.hop:
            raise ValueError(f"chunk length {x.shape[-1]} is not a multiple of hop {self.hop}")
        full = torch.cat([state["history"], x], dim=-1)
        keep = self.frame_length - self.hop
        if self.frame_length % self.hop == 0:
            # The same frames as ``unfold``, built from hop-sized segments: reshape and slice
            # export to ONNX with a dynamic length, unfold does not.
            m = self.frame_length // self.hop
            seg = full.reshape(full.shape[0], -1, self.hop)
            n = seg.shape[1] - (m - 1)
            frames = torch.cat([seg[:, i:i + n] for i in range(m)], dim=-1)
        else:
            frames = full.unfold(-1, self.frame_length, self.hop)
        return frames, {"history": full[:, full.shape[-1] - keep:]}


class OverlapAdd(StreamingModule):
    """Overlap-adds ``[B, T, frame_length]`` frames at ``hop`` into ``[B, T*hop]`` samples.

    Frame ``j`` lands on samples ``[j*hop, j*hop + frame_length)``. After ``T`` frames only the
    first ``T*hop`` samples are complete; the rest waits in the ``carry`` state
    (``frame_length - hop`` samples) for the next frames. This is also how a causal transposed
    convolution streams: a per-frame projection followed by this overlap-add.
    """

    def __init__(self, frame_length: int, hop: int):
        super().__init__()
        if frame_length % hop:
            raise ValueError("frame_length must be a multiple of hop")
        self.frame_length = frame_length
        self.hop = hop
        self.overlap = frame_length // hop  # segments per frame

    def own_state_spec(self) -> dict[str, StateEntry]:
        return {"carry": StateEntry((self.frame_length - self.hop,))}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        b, t, _ = x.shape
        m, h = self.overlap, self.hop
        seg = x.reshape(b, t, m, h)
        acc = F.pad(state["carry"].reshape(b, m - 1, h), (0, 0, 0, t))  # [B, T+m-1, H]
        for i in range(m):
            acc = acc + F.pad(seg[:, :, i], (0, 0, i, m - 1 - i))
        out = acc[:, :t].reshape(b, t * h)
        return out, {"carry": acc[:, t:].reshape(b, (m - 1) * h)}

    def tail(self, state: State) -> torch.Tensor:
        """The incomplete samples still in the carry, emitted at end of stream."""
        return state["carry"]
