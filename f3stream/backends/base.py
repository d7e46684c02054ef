"""The engine interface shared by all backends.

Arrays in and out are numpy float32; a *state* is a flat dict whose keys mirror the torch
model's state keys (``encoder.transformer.0.attn.k`` ...) and whose values have the batch as
their first dimension, so states can be batched across sessions by concatenation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import TokenizerConfig

State = dict[str, Any]  # values are torch tensors (torch engine) or numpy arrays (others)


class Engine:
    """Runs the model's stateful steps. Subclasses implement the ``*_step`` methods."""

    name = "abstract"

    def __init__(self, cfg: TokenizerConfig):
        self.cfg = cfg

    # -- encode: waveform -> latents (+ representations) ---------------------------------
    def init_encode_state(self, batch_size: int, with_representations: bool = True) -> State:
        raise NotImplementedError

    def encode_step(self, wav: np.ndarray, state: State
                    ) -> tuple[np.ndarray, np.ndarray | None, State]:
        """``[B, T*hop]`` float32 -> latents ``[B, T, D]``, reps ``[B, T, R]`` or None, state."""
        raise NotImplementedError

    def encode_rows(self, wav: np.ndarray, state: State, rows: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`encode_step` for the streams stored at rows ``rows`` of a batched state,
        which is updated in place (wav row b belongs to state row ``rows[b]``).

        This lets many sessions keep their states as rows of one pooled state
        (:class:`~f3stream.session.EncoderStatePool`): a batched step over any subset of them
        costs one gather and one scatter per state tensor here, and nothing in engines whose
        kernels index the rows themselves (numba)."""
        if len(rows) == self._batch(state) and np.array_equal(rows, np.arange(len(rows))):
            z, r, new = self.encode_step(wav, state)
            state.update(new)
            return z, r
        idx = self._index(rows)
        z, r, new = self.encode_step(wav, {k: v[idx] for k, v in state.items()})
        for k, v in new.items():
            state[k][idx] = v
        return z, r

    def decode_rows(self, z: np.ndarray, state: State, rows: np.ndarray) -> np.ndarray:
        """:meth:`decode_step` for the streams at rows ``rows`` of a batched decoder state,
        updated in place (see :meth:`encode_rows`)."""
        if len(rows) == self._batch(state) and np.array_equal(rows, np.arange(len(rows))):
            wav, new = self.decode_step(z, state)
            state.update(new)
            return wav
        idx = self._index(rows)
        wav, new = self.decode_step(z, {k: v[idx] for k, v in state.items()})
        for k, v in new.items():
            state[k][idx] = v
        return wav

    def zero_rows(self, state: State, rows: np.ndarray) -> None:
        """Resets the streams at ``rows`` of a batched state to a fresh start, in place."""
        idx = self._index(rows)
        for v in state.values():
            v[idx] = 0

    @staticmethod
    def _batch(state: State) -> int:
        return int(next(iter(state.values())).shape[0])

    def _index(self, rows: np.ndarray) -> Any:
        """Row indices in the form this engine's state arrays accept."""
        return np.asarray(rows, dtype=np.int64)

    # -- represent: latents -> representations ------------------------------------------
    def init_represent_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def represent_step(self, z: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        raise NotImplementedError

    # -- decode: latents -> waveform -----------------------------------------------------
    def init_decode_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def decode_step(self, z: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """``[B, T, D]`` -> ``[B, T*hop]`` samples delayed by ``decoder_delay``."""
        raise NotImplementedError

    def decode_tail(self, state: State) -> np.ndarray:
        """``[B, decoder_delay]``: the samples still held in the overlap-add carry."""
        raise NotImplementedError

    # -- state helpers (numpy by default) ----------------------------------------------
    @staticmethod
    def has_representations(state: State) -> bool:
        return any(k.startswith("representation.") for k in state)

    def concat_states(self, states: list[State]) -> State:
        if len(states) == 1:
            return dict(states[0])
        return {k: np.concatenate([s[k] for s in states], axis=0) for k in states[0]}

    def split_state(self, state: State, sizes: list[int]) -> list[State]:
        parts: list[State] = [{} for _ in sizes]
        bounds = np.cumsum([0] + list(sizes))
        for k, v in state.items():
            for i in range(len(sizes)):
                parts[i][k] = np.ascontiguousarray(v[bounds[i]:bounds[i + 1]])
        return parts

    def state_nbytes(self, state: State) -> int:
        return int(sum(v.nbytes for v in state.values()))


class NumpyStateEngine(Engine):
    """Shared state layout for the non-torch engines: the torch model's keys, numpy arrays."""

    def __init__(self, cfg: TokenizerConfig, encode_shapes: dict, represent_shapes: dict,
                 decode_shapes: dict):
        super().__init__(cfg)
        self._enc_shapes = encode_shapes
        self._rep_shapes = represent_shapes
        self._dec_shapes = decode_shapes

    @staticmethod
    def _zeros(shapes: dict, batch_size: int, prefix: str = "") -> State:
        return {prefix + k: np.zeros((batch_size,) + shape, dtype=dtype)
                for k, (shape, dtype) in shapes.items()}

    def init_encode_state(self, batch_size: int, with_representations: bool = True) -> State:
        state = self._zeros(self._enc_shapes, batch_size, "encoder.")
        if with_representations:
            state.update(self._zeros(self._rep_shapes, batch_size, "representation."))
        return state

    def init_represent_state(self, batch_size: int) -> State:
        return self._zeros(self._rep_shapes, batch_size)

    def init_decode_state(self, batch_size: int) -> State:
        return self._zeros(self._dec_shapes, batch_size)


def state_shapes(torch_state: dict) -> dict:
    """``{key: (shape without batch, numpy dtype)}`` from a batch-1 torch state."""
    out = {}
    for k, v in torch_state.items():
        dtype = np.int64 if not v.is_floating_point() else np.float32
        out[k] = (tuple(v.shape[1:]), dtype)
    return out
