"""Latent-side representation encoder of F3, and its training-only heads.

The encoder is a causal transformer over the *frozen* autoencoder latents that emits
high-dimensional representations for understanding tasks. It is trained (see ``training/``) with

* RQ-MTP: a frozen random-projection quantizer turns every latent frame into a discrete code;
  ``K`` heads predict the codes of frames ``t+1 .. t+K`` from the representation at ``t``
  (summed cross-entropy). No masking is needed, which suits a causal encoder (as in NEST-RQ).
* frozen-LM supervision: representations are downsampled 25 -> 12.5 Hz and projected by an
  adapter into a frozen language model's embedding space.

Only :class:`RepresentationEncoder` is part of an inference checkpoint; the heads live in
training checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RepresentationConfig
from .streaming import (State, StreamingModule, StreamingSequential, TransformerLayer, substate,
                        with_prefix)


class RepresentationEncoder(StreamingModule):
    """``[B, T, latent_dim]`` latents -> ``[B, T, output_dim]`` representations, causally."""

    def __init__(self, latent_dim: int, cfg: RepresentationConfig):
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Linear(latent_dim, cfg.model_dim)
        self.transformer = StreamingSequential(*[
            TransformerLayer(cfg.model_dim, cfg.n_heads, cfg.attention_window, cfg.mlp_ratio)
            for _ in range(cfg.layers)])
        self.out_norm = nn.LayerNorm(cfg.model_dim)
        self.out_proj = nn.Linear(cfg.model_dim, cfg.output_dim)

    def state_children(self) -> dict[str, StreamingModule]:
        return {"transformer": self.transformer}

    def step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, s = self.transformer.step(self.input_proj(z), substate(state, "transformer"))
        return self.out_proj(self.out_norm(h)), with_prefix("transformer", s)


class RandomProjectionQuantizer(nn.Module):
    """Frozen BEST-RQ-style quantizer: Xavier projection, L2-normalised random codebook.

    Everything is drawn from ``seed`` and stored as buffers (no parameters, no gradients), so the
    targets are the same in every run and every process.
    """

    def __init__(self, input_dim: int, code_dim: int, codebook_size: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        proj = torch.empty(input_dim, code_dim)
        bound = (6.0 / (input_dim + code_dim)) ** 0.5
        proj.uniform_(-bound, bound, generator=g)
        codebook = F.normalize(torch.randn(codebook_size, code_dim, generator=g), dim=-1)
        self.register_buffer("projection", proj)
        self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., input_dim]`` -> ``[...]`` int64 codes (nearest code by cosine / L2)."""
        y = F.normalize(x.float() @ self.projection, dim=-1)
        return (y @ self.codebook.T).argmax(dim=-1)


class RQMTPHeads(nn.Module):
    """``K`` linear heads; head ``k`` (0-based) predicts the code of frame ``t + k + 1``."""

    def __init__(self, rep_dim: int, n_heads: int, codebook_size: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(rep_dim, codebook_size) for _ in range(n_heads))

    def forward(self, reps: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> logits ``[B, T, K, codebook_size]``."""
        return torch.stack([h(reps) for h in self.heads], dim=2)


def rq_mtp_loss(logits: torch.Tensor, codes: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy of predicting ``codes[t+k+1]`` at ``t``.

    ``logits`` ``[B, T, K, V]``, ``codes`` ``[B, T]``, optional ``mask`` ``[B, T]`` (True = real
    frame). Positions whose target lies beyond the sequence (or in padding) are ignored.
    """
    b, t, k, v = logits.shape
    total = logits.new_zeros(())
    for i in range(k):
        shift = i + 1
        if shift >= t:
            break
        pred = logits[:, : t - shift, i].reshape(-1, v)
        target = codes[:, shift:].reshape(-1)
        if mask is not None:
            valid = (mask[:, : t - shift] & mask[:, shift:]).reshape(-1)
            pred, target = pred[valid], target[valid]
        if target.numel():
            total = total + F.cross_entropy(pred, target)
    return total


class LLMAdapter(nn.Module):
    """Downsamples representations by ``factor`` (25 -> 12.5 Hz by default) and projects them
    to a language model's embedding width. Output ``i`` only uses frames ``< (i+1)*factor``."""

    def __init__(self, rep_dim: int, lm_dim: int, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.net = nn.Sequential(nn.Linear(factor * rep_dim, lm_dim), nn.GELU(),
                                 nn.Linear(lm_dim, lm_dim))

    def forward(self, reps: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, ceil(T / factor), lm_dim]`` (the last group zero-padded)."""
        b, t, d = reps.shape
        pad = (-t) % self.factor
        if pad:
            reps = F.pad(reps, (0, 0, 0, pad))
        return self.net(reps.reshape(b, (t + pad) // self.factor, self.factor * d))


class RepresentationTrainingHeads(nn.Module):
    """Everything stage 1 of training needs beside the encoder itself."""

    def __init__(self, latent_dim: int, cfg: RepresentationConfig):
        super().__init__()
        self.quantizer = RandomProjectionQuantizer(latent_dim, cfg.rq_code_dim,
                                                   cfg.rq_codebook_size, cfg.rq_seed)
        self.mtp = RQMTPHeads(cfg.output_dim, cfg.mtp_heads, cfg.rq_codebook_size)
        self.adapter = LLMAdapter(cfg.output_dim, cfg.lm_dim, cfg.lm_downsample)
