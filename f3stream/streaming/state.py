"""The one state convention shared by every streaming module and every engine.

A state is a flat ``dict[str, array]``: torch tensors (torch) or numpy arrays (the numba and
ONNX engines) whose first dimension is the batch, so that the same step can be exported to ONNX
(named inputs/outputs), re-implemented in Numba, and batched over sessions by concatenation.
Composite modules namespace their children's keys with ``"child."`` prefixes.

**Layout, declared once.** A streaming module declares its own entries
(:meth:`StreamingModule.own_state_spec`: key -> :class:`StateEntry`) and the children whose
states its state holds, by key prefix (:meth:`StreamingModule.state_children`). Everything
else is derived from those two declarations: :meth:`~StreamingModule.init_state`,
:meth:`~StreamingModule.state_spec` (the flat layout the ONNX and numba engines allocate) and
:func:`state_prefixes` (where a module's keys are in its root's state, which is how the numba
engine finds a layer's arrays without spelling another module's keys).

**Mutation contract** (every engine, see :class:`f3stream.backends.base.Engine`):

* ``step(x, state)`` of a module, and an engine's ``encode_step`` / ``represent_step`` /
  ``decode_step``, never modify the state they are given (neither the dict nor its arrays) and
  return the advanced state as a new dict. Its arrays may be shared with the given state only
  where nothing changed (an empty step returns the given state). States are values: a caller
  may step the same state twice, keep an old one, or branch a stream.
* An engine's ``encode_rows`` / ``decode_rows`` / ``zero_rows`` are the in-place API: they
  write the advanced (or reset) streams into the arrays of the state they are given, at rows
  ``rows`` only; every other row, the key set and the array objects stay as they were. This is
  how a pool's sessions (one row each) are stepped in batches without copying states, and what
  the numba kernels do directly (they index the rows themselves).
* ``decode_tail`` returns a new array, never a view of the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import nn

# One alias for every engine: values are torch tensors (torch) or numpy arrays (numba, ONNX).
State = dict[str, Union[torch.Tensor, np.ndarray]]


@dataclass(frozen=True)
class StateEntry:
    """One state array: its shape after the batch dimension and its dtype (None: torch's
    default float dtype). Engines that keep numpy states hold floats as float32 and integers
    as int64 (:meth:`numpy_dtype`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None

    @property
    def numpy_dtype(self) -> type:
        return np.float32 if self.dtype is None or self.dtype.is_floating_point else np.int64


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def substate(state: State, prefix: str) -> State:
    """Entries of ``state`` under ``prefix.``, with the prefix removed ("" : all of them)."""
    if not prefix:
        return dict(state)
    p = prefix + "."
    n = len(p)
    return {k[n:]: v for k, v in state.items() if k.startswith(p)}


def with_prefix(prefix: str, state: State) -> State:
    return {_join(prefix, k): v for k, v in state.items()}


def concat_states(states: list[State]) -> State:
    """Stacks per-session states (batch 1 or more each) into one batched state."""
    if len(states) == 1:
        return dict(states[0])
    return {k: _cat([s[k] for s in states]) for k in states[0]}


def _cat(values: list[Any]) -> Any:
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values, dim=0)
    return np.concatenate(values, axis=0)


def split_state(state: State, sizes: list[int]) -> list[State]:
    """Inverse of :func:`concat_states`: views of consecutive rows (C-contiguous for numpy
    arrays, as the numba kernels need)."""
    parts: list[State] = [{} for _ in sizes]
    bounds = np.cumsum([0, *sizes]).tolist()
    for k, v in state.items():
        for i in range(len(sizes)):
            part = v[bounds[i]:bounds[i + 1]]
            parts[i][k] = part if isinstance(v, torch.Tensor) else np.ascontiguousarray(part)
    return parts


def state_nbytes(state: State) -> int:
    return int(sum(v.nbytes for v in state.values()))


def state_prefixes(module: "StreamingModule", prefix: str = "") -> dict["StreamingModule", str]:
    """Every streaming module in ``module``'s state tree -> the prefix of its keys in the flat
    state of ``module`` (``"transformer.0.attn."``...; "" for ``module`` itself, and a child
    declared under the empty prefix shares its parent's)."""
    out = {module: prefix}
    for p, child in module.state_children().items():
        out.update(state_prefixes(child, prefix + (p + "." if p else "")))
    return out


class StreamingModule(nn.Module):
    """A causal module stepped as ``step(x, state) -> (y, new_state)``.

    ``step`` never mutates ``state``; it returns a new dict (the mutation contract is in the
    docstring of :mod:`f3stream.streaming.state`). Running it once over a whole sequence, or
    over any split of that sequence into consecutive chunks, gives the same output (up to
    float rounding).

    Subclasses declare their state layout with :meth:`own_state_spec` and
    :meth:`state_children`; :meth:`init_state` (all zeros: a fresh stream) follows from them.
    """

    def own_state_spec(self) -> dict[str, StateEntry]:
        """This module's own state entries (not its children's), by key."""
        return {}

    def state_children(self) -> dict[str, "StreamingModule"]:
        """The children whose states live in this module's state, by key prefix, in key
        order. The empty prefix means the child's keys are this module's own (a ConvNeXt block
        whose only state is its depthwise convolution's)."""
        return {}

    def state_spec(self) -> dict[str, StateEntry]:
        """The flat layout of this module's state: key -> :class:`StateEntry`."""
        spec = dict(self.own_state_spec())
        for prefix, child in self.state_children().items():
            spec.update(with_prefix(prefix, child.state_spec()))
        return spec

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """A fresh stream's state (zeros), on ``device`` (default: where this module's
        parameters are; the CPU for a module without any)."""
        own = self.own_state_spec()
        state: State = {}
        if own:
            dev = device or next((p.device for p in self.parameters()), None)
            state = {k: torch.zeros((batch_size, *e.shape), dtype=e.dtype, device=dev)
                     for k, e in own.items()}
        for prefix, child in self.state_children().items():
            state.update(with_prefix(prefix, child.init_state(batch_size, device)))
        return state

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

    def state_children(self) -> dict[str, StreamingModule]:
        return {str(i): m for i, m in enumerate(self.layers)}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new: State = {}
        for i, m in enumerate(self.layers):
            x, s = m.step(x, substate(state, str(i)))
            new.update(with_prefix(str(i), s))
        return x, new
