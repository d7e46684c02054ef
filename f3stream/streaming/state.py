"""The one state convention shared by every streaming module.

A state is a flat ``dict[str, Tensor]``: plain tensors whose first dimension is the batch, so
that the same step can be exported to ONNX (named inputs/outputs), re-implemented in Numba, and
batched over sessions by concatenation. Composite modules namespace their children's keys with
``"child."`` prefixes.
"""

from __future__ import annotations

import torch
from torch import nn

State = dict[str, torch.Tensor]


def substate(state: State, prefix: str) -> State:
    """Entries of ``state`` under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    n = len(p)
    return {k[n:]: v for k, v in state.items() if k.startswith(p)}


def with_prefix(prefix: str, state: State) -> State:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def concat_states(states: list[State]) -> State:
    """Stack per-session states (batch 1 or more each) into one batched state."""
    if len(states) == 1:
        return dict(states[0])
    return {k: torch.cat([s[k] for s in states], dim=0) for k in states[0]}


def split_state(state: State, sizes: list[int]) -> list[State]:
    """Inverse of :func:`concat_states`."""
    parts: list[State] = [{} for _ in sizes]
    for k, v in state.items():
        for i, chunk in enumerate(torch.split(v, sizes, dim=0)):
            parts[i][k] = chunk
    return parts


def state_nbytes(state: State) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


class StreamingModule(nn.Module):
    """A causal module stepped as ``step(x, state) -> (y, new_state)``.

    ``step`` never mutates ``state``; it returns a new dict. Running it once over a whole
    sequence, or over any split of that sequence into consecutive chunks, gives the same output
    (up to float rounding).
    """

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-sequence pass from a fresh state (for training)."""
        y, _ = self.step(x, self.init_state(x.shape[0], x.device))
        return y


class StreamingSequential(StreamingModule):
    """Children stepped one after another; their states live under ``"<index>."``."""

    def __init__(self, *modules: StreamingModule):
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        out: State = {}
        for i, m in enumerate(self.layers):
            out.update(with_prefix(str(i), m.init_state(batch_size, device)))
        return out

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new: State = {}
        for i, m in enumerate(self.layers):
            x, s = m.step(x, substate(state, str(i)))
            new.update(with_prefix(str(i), s))
        return x, new
