"""The engine interface shared by all backends.

Arrays in and out are numpy float32; a *state* is a flat dict whose keys are the torch model's
state keys (``encoder.transformer.0.attn.k`` ...) and whose values have the batch as their
first dimension, so states can be batched across sessions by concatenation. The layout is the
one the modules declare (:mod:`f3stream.streaming.state`); no engine spells it out.

**Mutation contract** (the same for every engine; written once, in
:mod:`f3stream.streaming.state`, and checked for every engine by
``tests/backends/test_backends.py::test_engines_honour_the_mutation_contract``):

* ``encode_step`` / ``represent_step`` / ``decode_step`` never modify the state they are given
  and return the advanced state as a new dict (which may share arrays with the given one only
  where nothing changed, as an empty step does).
* ``encode_rows`` / ``decode_rows`` / ``zero_rows`` write into the arrays of the state they
  are given, at rows ``rows`` only (the in-place API of state pools).
* ``decode_tail`` returns a new array, never a view of the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import TokenizerConfig
from ..model import F3Model
from ..streaming.state import State, StateEntry, concat_states, split_state, state_nbytes

if TYPE_CHECKING:
    from ..autoencoder import AudioDecoder

__all__ = ["Engine", "NumpyStateEngine", "State"]


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
        """``[B, T*hop]`` float32 -> latents ``[B, T, D]``, reps ``[B, T, R]`` or None, and the
        new state; ``state`` itself is left as it was."""
        raise NotImplementedError

    def encode_rows(self, wav: np.ndarray, state: State, rows: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`encode_step` for the streams stored at rows ``rows`` of a batched state,
        which is updated in place (wav row b belongs to state row ``rows[b]``); the other rows
        are not touched.

        This lets many sessions keep their states as rows of one pooled state
        (:class:`~f3stream.session.EncoderStatePool`): a batched step over any subset of them
        costs one gather and one scatter per state tensor here, and nothing in engines whose
        kernels index the rows themselves (numba)."""
        if len(rows) == self._batch(state) and np.array_equal(rows, np.arange(len(rows))):
            z, r, new = self.encode_step(wav, state)
            self._write(state, new, slice(None))
            return z, r
        idx = self._index(rows)
        z, r, new = self.encode_step(wav, {k: v[idx] for k, v in state.items()})
        self._write(state, new, idx)
        return z, r

    def decode_rows(self, z: np.ndarray, state: State, rows: np.ndarray) -> np.ndarray:
        """:meth:`decode_step` for the streams at rows ``rows`` of a batched decoder state,
        updated in place (see :meth:`encode_rows`)."""
        if len(rows) == self._batch(state) and np.array_equal(rows, np.arange(len(rows))):
            wav, new = self.decode_step(z, state)
            self._write(state, new, slice(None))
            return wav
        idx = self._index(rows)
        wav, new = self.decode_step(z, {k: v[idx] for k, v in state.items()})
        self._write(state, new, idx)
        return wav

    def zero_rows(self, state: State, rows: np.ndarray) -> None:
        """Resets the streams at ``rows`` of a batched state to a fresh start, in place."""
        idx = self._index(rows)
        for v in state.values():
            v[idx] = 0

    @staticmethod
    def _write(state: State, new: State, idx: Any) -> None:
        """Writes a step's new state into ``state``'s arrays at ``idx`` (in place)."""
        for k, v in new.items():
            if v is not state[k]:
                state[k][idx] = v

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
        """``[B, T, D]`` -> ``[B, T*hop]`` samples delayed by ``decoder_delay``, new state."""
        raise NotImplementedError

    def decode_tail(self, state: State) -> np.ndarray:
        """``[B, decoder_delay]``: the samples still held in the overlap-add carry (a copy)."""
        raise NotImplementedError

    # -- state helpers: one implementation for torch tensors and numpy arrays -------------
    @staticmethod
    def has_representations(state: State) -> bool:
        return F3Model.has_representations(state)

    @staticmethod
    def concat_states(states: list[State]) -> State:
        return concat_states(states)

    @staticmethod
    def split_state(state: State, sizes: list[int]) -> list[State]:
        return split_state(state, sizes)

    @staticmethod
    def state_nbytes(state: State) -> int:
        return state_nbytes(state)


class NumpyStateEngine(Engine):
    """The non-torch engines' states: the layouts the model's modules declare, as zeroed numpy
    arrays (floats as float32, integers as int64)."""

    def __init__(self, model: F3Model):
        super().__init__(model.cfg)
        self._encode_specs = {True: model.encode_state_spec(True),
                              False: model.encode_state_spec(False)}
        self._represent_spec = model.representation.state_spec()
        self._decode_spec = model.decode_state_spec()
        self._decoder: AudioDecoder = model.decoder

    @staticmethod
    def _zeros(spec: dict[str, StateEntry], batch_size: int) -> State:
        return {k: np.zeros((batch_size, *e.shape), dtype=e.numpy_dtype)
                for k, e in spec.items()}

    def init_encode_state(self, batch_size: int, with_representations: bool = True) -> State:
        return self._zeros(self._encode_specs[bool(with_representations)], batch_size)

    def init_represent_state(self, batch_size: int) -> State:
        return self._zeros(self._represent_spec, batch_size)

    def init_decode_state(self, batch_size: int) -> State:
        return self._zeros(self._decode_spec, batch_size)

    def decode_tail(self, state: State) -> np.ndarray:
        # the decoder says where its tail is (its overlap-add's carry); read on numpy arrays
        return np.array(self._decoder.tail(state), dtype=np.float32, copy=True)
