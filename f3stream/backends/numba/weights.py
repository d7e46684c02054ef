"""Weights as named structures, read from the torch module tree through one declared mapping.

Every numba layer keeps its weights in a ``NamedTuple`` (numba passes named tuples into
compiled code as structs; kernels read fields by name). The mapping from torch module types to
those structures is :data:`f3stream.backends.numba.engine.MIRRORS`, one :class:`Mirror` per
type, and :class:`Reader` walks the torch tree with it:

* a structure whose fields are named after its torch module's attributes is read field by
  field (``RepresentationEncoderWeights(input_proj, transformer, out_norm, out_proj)``: each
  attribute read through its own type's mirror, tensors as float32 arrays, numbers as they
  are);
* a structure with a ``from_torch(module, read)`` classmethod reads its module itself (a
  layout change such as a transposed weight, or a check of what the kernel supports).

So a mirror reads only its own torch module's attributes, never a grandchild's, and a module
with no mirror is a clear error at load time rather than a silently wrong engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ...errors import F3StreamError


def f32(t: torch.Tensor) -> np.ndarray:
    """A tensor as a C-contiguous float32 numpy copy."""
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


@dataclass(frozen=True)
class Mirror:
    """How the numba engine sees one torch module type.

    ``weights``: the named structure of its weights (a ``NamedTuple`` class, read field by
    field or by its ``from_torch``), or a function ``(module, read) -> structure`` (a stack's
    tuple); None for a module without weights. ``state``: the named structure of its state
    (fields: the declared keys and child prefixes, see
    :mod:`f3stream.backends.numba.streaming.state`), or for a stack the function that lays
    out its layers' states; None for a module without state of its own (stateless, or whose
    state is one child's, declared under the empty prefix)."""

    weights: Any = None
    state: Any = None


class Reader:
    """Reads the named weight structure of a torch module (or a tensor, or a number)."""

    def __init__(self, mirrors: dict[type, Mirror]):
        self.mirrors = mirrors

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return f32(obj)
        if isinstance(obj, (bool, int, float, np.floating, np.integer)) or obj is None:
            return obj
        mirror = self.mirrors.get(type(obj))
        if mirror is None or mirror.weights is None:
            raise F3StreamError(f"the numba engine has no mirror of {type(obj).__name__}: add "
                                "a kernel module for it and register it in "
                                "f3stream.backends.numba.engine.MIRRORS")
        kind: Callable | type = mirror.weights
        if hasattr(kind, "from_torch"):
            return kind.from_torch(obj, self)
        if isinstance(kind, type) and hasattr(kind, "_fields"):
            return kind(*(self(getattr(obj, f)) for f in kind._fields))
        return kind(obj, self)
