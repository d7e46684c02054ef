"""Causal convolutions with an explicit left-context cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .state import State, StateEntry, StreamingModule


class CausalConv1d(StreamingModule):
    """Conv1d that only looks back: output ``t`` sees inputs ``t - (k-1)*dilation .. t``.

    Input and output are ``[B, C, T]``. The state ``buf`` keeps the last ``(k-1)*dilation``
    input samples, zero at stream start (the same as left zero-padding offline).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 dilation: int = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                              groups=groups, bias=bias)
        self.context = (kernel_size - 1) * dilation

    def own_state_spec(self) -> dict[str, StateEntry]:
        if self.context == 0:
            return {}
        return {"buf": StateEntry((self.conv.in_channels, self.context), self.conv.weight.dtype)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if self.context == 0:
            return self.conv(x), {}
        full = torch.cat([state["buf"], x], dim=-1)
        y = F.conv1d(full, self.conv.weight, self.conv.bias, dilation=self.conv.dilation,
                     groups=self.conv.groups)
        return y, {"buf": full[..., full.shape[-1] - self.context:]}


class CausalConvNeXtBlock(StreamingModule):
    """ConvNeXt block (as in Vocos) with a causal depthwise conv; tensors are ``[B, T, C]``."""

    def __init__(self, channels: int, kernel_size: int = 7, mlp_ratio: int = 3,
                 layer_scale: float = 0.1):
        super().__init__()
        self.dwconv = CausalConv1d(channels, channels, kernel_size, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Linear(channels, mlp_ratio * channels)
        self.pw2 = nn.Linear(mlp_ratio * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def state_children(self) -> dict[str, StreamingModule]:
        return {"": self.dwconv}  # the block's state is its depthwise convolution's

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, new = self.dwconv.step(x.transpose(1, 2), state)
        h = self.pw2(F.gelu(self.pw1(self.norm(h.transpose(1, 2)))))
        return x + self.gamma * h, new
