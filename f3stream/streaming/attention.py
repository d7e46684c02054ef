"""Causal self-attention with a sliding-window KV cache, and the transformer layer built on it.

Positions enter only through ALiBi biases on the query-key *distance*, which is bounded by the
window, so an endless stream never needs an ever-growing position index inside the math and the
cache has a fixed size: memory stays flat however long the stream runs.
"""

from __future__ import annotations

import math

import torch

from torch import nn

from .state import State, StateEntry, StreamingModule, substate, with_prefix


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric per-head slopes 2^(-8/n), 2^(-16/n), ... (ALiBi, Press et al. 2022)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])


class SlidingWindowAttention(StreamingModule):
    """Multi-head causal attention; a query at position p sees keys p-window .. p.

    State: ``k`` and ``v`` caches ``[B, heads, window, head_dim]`` holding the last ``window``
    keys/values, and ``pos`` ``[B]`` (int64), the number of frames seen. Cache slots before the
    stream start are masked out, so a fresh state equals an empty history.
    """

    def __init__(self, dim: int, n_heads: int, window: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        if window < 1:
            raise ValueError("attention window must be >= 1")
        self.dim, self.n_heads, self.window = dim, n_heads, window
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("slopes", alibi_slopes(n_heads).view(1, n_heads, 1, 1),
                             persistent=False)

    def own_state_spec(self) -> dict[str, StateEntry]:
        cache = StateEntry((self.n_heads, self.window, self.head_dim))
        return {"k": cache, "v": cache, "pos": StateEntry((), torch.long)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        b, t, _ = x.shape
        w = self.window
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        keys = torch.cat([state["k"], k], dim=2)      # [B, H, W+T, Dh]
        values = torch.cat([state["v"], v], dim=2)
        pos = state["pos"]
        ar = torch.arange(w + t, device=x.device)
        key_pos = pos[:, None] - w + ar[None, :]                           # [B, W+T]
        dist = (t - 1 + w - ar)[None, :] - torch.arange(t - 1, -1, -1, device=x.device)[:, None]
        # dist[i, j] = query_pos(i) - key_pos(j), the same for every batch row.
        allowed = (dist >= 0) & (dist <= w)                                # [T, W+T]
        allowed = allowed[None, :, :] & (key_pos >= 0)[:, None, :]         # [B, T, W+T]
        bias = -self.slopes * dist.to(x.dtype)                             # [1, H, T, W+T]
        bias = bias.masked_fill(~allowed[:, None], float("-inf"))
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        attn = torch.softmax(scores, dim=-1) @ values                     # [B, H, T, Dh]
        y = self.out(attn.transpose(1, 2).reshape(b, t, self.dim))
        new = {"k": keys[:, :, keys.shape[2] - w:], "v": values[:, :, values.shape[2] - w:],
               "pos": pos + t}
        return y, new


class TransformerLayer(StreamingModule):
    """Pre-norm causal transformer layer (attention + GELU MLP); tensors are ``[B, T, D]``."""

    def __init__(self, dim: int, n_heads: int, window: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SlidingWindowAttention(dim, n_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def state_children(self) -> dict[str, StreamingModule]:
        return {"attn": self.attn}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        a, s = self.attn.step(self.norm1(x), substate(state, "attn"))
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, with_prefix("attn", s)


