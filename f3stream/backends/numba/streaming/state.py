"""Mirror of :mod:`f3stream.streaming.state`: a flat state as the named structures the kernels
take, and :class:`~f3stream.streaming.StreamingSequential` (a stack of layers).

A module's state structure is a ``NamedTuple`` (its mirror's ``state``) whose fields are the
module's own state keys and its state children's prefixes, exactly as the torch module declares
them (``own_state_spec`` / ``state_children``): ``SlidingWindowAttentionState(k, v, pos)``,
``TransformerLayerState(attn)``, ``AudioDecoderState(transformer, convs, ola)``. A module whose
state is one child's (declared under the empty prefix) has its child's structure; a stack has a
tuple of its layers' (None when empty). :func:`state_binder` checks the structures against the
declarations once, at engine build, and returns a function that binds a flat state to them:
where each module's keys are comes from the torch tree, so no mirror spells another module's
keys.

Kernels update the arrays they are given **in place**, at the rows they are told: the engine
decides which arrays those are (a pool's, or a copy for a step that must leave its input as it
was; the mutation contract is in :mod:`f3stream.streaming.state`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ....errors import F3StreamError
from ....streaming.state import State, StateEntry, StreamingModule, StreamingSequential
from ..weights import Mirror, Reader

Binder = Callable[[State], Any]


def state_binder(module: StreamingModule, prefix: str, mirrors: dict[type, Mirror]) -> Binder:
    """A function ``flat state -> module's state structure``, for ``module`` whose keys are
    under ``prefix`` (``"encoder."``, or "" for a root).

    It runs on every step, so it is generated once as one flat function (a few microseconds
    per call, where nested closures took three times as long): it looks the module's arrays
    up, checks each against its declared layout (the kernels index them without bounds
    checks and write into them) and builds the nested structure."""
    leaves: list[tuple[str, StateEntry]] = []
    names: dict[str, Any] = {}
    expr = _expression(module, prefix, mirrors, leaves, names)
    lines = ["def bind(state):"]
    lines += [f"    a{i} = state[{key!r}]" for i, (key, _) in enumerate(leaves)]
    checks = []
    for i, (_, entry) in enumerate(leaves):
        names[f"D{i}"], names[f"S{i}"] = np.dtype(entry.numpy_dtype), tuple(entry.shape)
        checks.append(f"a{i}.__class__ is ndarray and a{i}.dtype == D{i} "
                      f"and a{i}.shape[1:] == S{i} and a{i}.flags.carray")
    if checks:
        lines.append("    if not (" + "\n            and ".join(checks) + "):")
        lines.append("        fail(state)")
    lines.append(f"    return {expr}")
    names.update(ndarray=np.ndarray, fail=functools.partial(_fail, leaves))
    exec(compile("\n".join(lines), f"<state binder of {type(module).__name__}>", "exec"), names)
    return names["bind"]


def _expression(module: StreamingModule, prefix: str, mirrors: dict[type, Mirror],
                leaves: list[tuple[str, StateEntry]], names: dict[str, Any]) -> str:
    """The Python expression that builds ``module``'s state structure from the arrays
    ``a0, a1...`` (appended to ``leaves``); classes and constants go into ``names``."""
    own, children = module.own_state_spec(), module.state_children()
    mirror = mirrors.get(type(module))
    kind = mirror.state if mirror is not None else None
    if kind is None:
        if not own and list(children) == [""]:
            return _expression(children[""], prefix, mirrors, leaves, names)
        if not own and not children:
            return "None"
        raise F3StreamError(f"the numba engine has no state mirror of {type(module).__name__}:"
                            " add one to its kernel module and register it in "
                            "f3stream.backends.numba.engine.MIRRORS")
    if not (isinstance(kind, type) and hasattr(kind, "_fields")):
        return kind(module, prefix, mirrors, leaves, names)
    declared = set(own) | set(children)
    unknown = declared - set(kind._fields)
    if unknown:
        raise F3StreamError(f"{type(module).__name__} declares state {sorted(unknown)} that "
                            f"its numba mirror {kind.__name__} does not take")
    parts = []
    for f in kind._fields:
        if f in own:
            leaves.append((prefix + f, own[f]))
            parts.append(f"a{len(leaves) - 1}")
        elif f in children:
            parts.append(_expression(children[f], f"{prefix}{f}.", mirrors, leaves, names))
        elif hasattr(kind, "absent"):  # e.g. a convolution without left context has no buffer
            parts.append(_name(names, "K", kind.absent(module, f)))
        else:
            raise F3StreamError(f"the numba mirror {kind.__name__} takes state {f!r} that "
                                f"{type(module).__name__} does not declare")
    return f"{_name(names, 'T', kind)}({', '.join(parts)})"


def _name(names: dict[str, Any], stem: str, value: Any) -> str:
    """A fresh name for ``value`` in the generated function's namespace."""
    name = f"{stem}{len(names)}"
    names[name] = value
    return name


def _fail(leaves: list[tuple[str, StateEntry]], state: State) -> None:
    for key, entry in leaves:
        a, dtype, shape = state[key], np.dtype(entry.numpy_dtype), tuple(entry.shape)
        if (type(a) is not np.ndarray or a.dtype != dtype or a.shape[1:] != shape
                or not a.flags.carray):
            raise F3StreamError(f"numba engine state {key!r} must be a writable, aligned, "
                                f"C-contiguous {dtype} array of shape [batch, "
                                f"{', '.join(map(str, shape))}], got {type(a).__name__} "
                                f"{getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")


# -- StreamingSequential: a stack of layers --------------------------------------------------
def stack_weights(module: StreamingSequential, read: Reader) -> tuple | None:
    """The layers' weights as a tuple (None for an empty stack: the kernel skips it)."""
    return tuple(read(m) for m in module.layers) or None


def stack_state(module: StreamingSequential, prefix: str, mirrors: dict[type, Mirror],
                leaves: list[tuple[str, StateEntry]], names: dict[str, Any]) -> str:
    """The layers' states as a tuple (None for an empty stack)."""
    parts = [_expression(m, f"{prefix}{p}.", mirrors, leaves, names)
             for p, m in module.state_children().items()]
    return f"({', '.join(parts)},)" if parts else "None"


MIRRORS = {StreamingSequential: Mirror(stack_weights, stack_state)}
