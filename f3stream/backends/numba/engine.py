"""The numba engine: the mirror of :class:`~f3stream.model.F3Model` and the
:class:`~f3stream.backends.base.Engine` API over the kernel modules.

:data:`MIRRORS` is the one mapping from torch module types to their numba mirrors (weights and
state structures); weights are read through it once, at load (:class:`~.weights.Reader`), and
flat states are bound through it on every step (:func:`~.streaming.state.state_binder`).
Adding a layer type: one kernel module (its structures, its kernel, its ``MIRRORS``) and one
line here.

Each direction is one compiled call (one GIL release) per step: a server's event loop holds
the GIL while it parses and sends, and a step made of ~25 kernel calls had to win it back ~25
times, which measured doubled a small batched step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numba
import numpy as np
import torch
from numba import njit

from ...errors import F3StreamError
from ...model import F3Model
from ..base import NumpyStateEngine, State
from . import autoencoder, bottleneck, harmonic, nn, representation
from .autoencoder import AudioDecoderWeights, AudioEncoderWeights, audio_decoder, audio_encoder
from .bottleneck import NoiseBottleneckWeights, noise_bottleneck
from .nn import gemm_plan
from .representation import RepresentationEncoderWeights, representation_encoder
from .streaming import attention, conv, framing
from .streaming import state as streaming_state
from .streaming.state import state_binder
from .weights import Mirror, Reader


class F3ModelWeights(NamedTuple):  # fields: F3Model's attribute names
    encoder: AudioEncoderWeights
    bottleneck: NoiseBottleneckWeights
    decoder: AudioDecoderWeights
    representation: RepresentationEncoderWeights


MIRRORS: dict[type, Mirror] = {
    **nn.MIRRORS,               # nn.Linear, nn.LayerNorm, the transformer MLP
    **streaming_state.MIRRORS,  # StreamingSequential
    **framing.MIRRORS,          # CausalFraming, OverlapAdd
    **conv.MIRRORS,             # CausalConv1d, CausalConvNeXtBlock
    **attention.MIRRORS,        # SlidingWindowAttention, TransformerLayer
    **autoencoder.MIRRORS,      # AudioEncoder, AudioDecoder
    **harmonic.MIRRORS,         # PitchHead, HarmonicSource
    **bottleneck.MIRRORS,       # NoiseBottleneck
    **representation.MIRRORS,   # RepresentationEncoder
    F3Model: Mirror(F3ModelWeights),
}


@njit(cache=True, nogil=True)
def encode_kernel(wav, s, rows, plan, w_encoder, w_bottleneck):
    """:meth:`F3Model.encode_step` up to the latents: encoder, then bottleneck."""
    return noise_bottleneck(audio_encoder(wav, s, rows, plan, w_encoder), w_bottleneck)


class _DirectCall:
    """A compiled kernel called through its compiled entry point once its types are known.

    numba's dispatcher types every argument on every call, in Python for named tuples (~0.4 us
    each): for the ~100 nested tuples of an encode step's weights that was ~50 us, 4 % of a
    one-frame step. The engine passes every argument in fixed types (weights that never
    change, states checked by their binders, float32/int64 C arrays, Python ints), so after
    the first call (which compiles, or loads from numba's cache) the overload for those types
    is called directly; the dispatcher stays the fallback."""

    def __init__(self, kernel: Any):
        self.kernel = kernel
        self._entry: Callable | None = None

    def __call__(self, *args: Any) -> Any:
        entry = self._entry
        if entry is not None:
            return entry(*args)
        out = self.kernel(*args)
        try:
            self._entry = self.kernel.get_overload(tuple(numba.typeof(a) for a in args))
        except Exception:  # a numba without this API: keep its dispatcher
            self._entry = self.kernel
        return out


def _copy(state: State) -> State:
    """A state's arrays, copied (what a step that must leave its input as it was runs on)."""
    return {k: np.array(v, order="C", copy=True) for k, v in state.items()}


class NumbaEngine(NumpyStateEngine):
    """CPU-only; no torch in the hot loop (torch is used once, to read the weights).

    ``*_rows`` run the kernels on the given state's rows in place; ``*_step`` run them on a
    copy of the state (the mutation contract of :mod:`f3stream.streaming.state`)."""

    name = "numba"

    def __init__(self, model: F3Model, device: torch.device | None = None):
        if device is not None and torch.device(device).type != "cpu":
            raise F3StreamError(f"the numba backend runs on the CPU only, not {device}; use "
                                "device='cpu' (or backend='torch'/'onnx' for a GPU)")
        super().__init__(model)
        ae = model.cfg.autoencoder
        self._samples_per_frame = ae.hop_length
        self._latent_dim = ae.latent_dim
        self._rep_dim = model.cfg.representation.output_dim
        self.weights: F3ModelWeights = Reader(MIRRORS)(model)
        self.gemm_plan = gemm_plan()
        # where each module's state is: the model's declarations, not spelled out here
        prefix = {m: p + "." for p, m in model.encode_state_children(True).items()}
        self._encoder_state = state_binder(model.encoder, prefix[model.encoder], MIRRORS)
        self._representation_state = state_binder(model.representation,
                                                  prefix[model.representation], MIRRORS)
        self._represent_only_state = state_binder(model.representation, "", MIRRORS)
        self._decoder_state = state_binder(model.decoder, "", MIRRORS)
        self._rep_key = next(k for k in model.encode_state_spec(True)
                             if k.startswith(prefix[model.representation]))
        self._encode = _DirectCall(encode_kernel)
        self._represent = _DirectCall(representation_encoder)
        self._decode = _DirectCall(audio_decoder)

    @property
    def gemm_plan(self) -> tuple[int, int]:
        """``(block_limit, own_rows)``, see :func:`~f3stream.backends.numba.nn.gemm_plan`;
        settable (benchmarks compare plans)."""
        return self._plan

    @gemm_plan.setter
    def gemm_plan(self, plan) -> None:
        block_limit, own_rows = plan
        self._plan = (int(block_limit), int(own_rows))  # the kernels' compiled type

    @staticmethod
    def _rows(rows: np.ndarray, n: int, state: State) -> np.ndarray:
        """``rows`` as int64, checked against the state's batch (the kernels write there)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        batch = next(iter(state.values())).shape[0]
        if rows.shape != (n,) or not (0 <= rows[0] < batch if n == 1 else
                                      n == 0 or (rows.min() >= 0 and rows.max() < batch)):
            raise F3StreamError(f"rows {rows.tolist()} do not index {n} streams of a state "
                                f"with {batch} rows")
        return rows

    # -- the in-place API: kernels on the state's rows ---------------------------------------
    def encode_rows(self, wav, state, rows):
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        if wav.ndim != 2 or wav.shape[1] % self._samples_per_frame:
            raise F3StreamError(f"encode_step needs [B, T*hop] samples, got {wav.shape}")
        bsz = wav.shape[0]
        t_len = wav.shape[1] // self._samples_per_frame
        with_reps = self._rep_key in state
        if t_len == 0:
            return (np.zeros((bsz, 0, self._latent_dim), np.float32),
                    np.zeros((bsz, 0, self._rep_dim), np.float32) if with_reps else None)
        rows = self._rows(rows, bsz, state)
        w, plan = self.weights, self._plan
        z = self._encode(wav, self._encoder_state(state), rows, plan, w.encoder, w.bottleneck)
        reps = None
        if with_reps:
            reps = self._represent(z, bsz, self._representation_state(state), rows, plan,
                                   w.representation).reshape(bsz, t_len, -1)
        return z.reshape(bsz, t_len, -1), reps

    def decode_rows(self, z, state, rows):
        z = np.ascontiguousarray(z, dtype=np.float32)
        bsz, t_len, _ = z.shape
        if t_len == 0:
            return np.zeros((bsz, 0), np.float32)
        rows = self._rows(rows, bsz, state)
        return self._decode(z.reshape(bsz * t_len, -1), bsz, self._decoder_state(state), rows,
                            self._plan, self.weights.decoder)

    # -- the functional API: the same kernels on a copy ---------------------------------------
    def encode_step(self, wav, state):
        if np.shape(wav)[-1] == 0:
            z, reps = self.encode_rows(wav, state, np.arange(np.shape(wav)[0]))
            return z, reps, state
        new = _copy(state)
        z, reps = self.encode_rows(wav, new, np.arange(np.shape(wav)[0]))
        return z, reps, new

    def represent_step(self, z, state):
        z = np.ascontiguousarray(z, dtype=np.float32)
        bsz, t_len, _ = z.shape
        if t_len == 0:
            return np.zeros((bsz, 0, self._rep_dim), np.float32), state
        new = _copy(state)
        rows = self._rows(np.arange(bsz), bsz, new)
        r = self._represent(z.reshape(bsz * t_len, -1), bsz, self._represent_only_state(new),
                            rows, self._plan, self.weights.representation)
        return r.reshape(bsz, t_len, -1), new

    def decode_step(self, z, state):
        if np.shape(z)[1] == 0:
            return self.decode_rows(z, state, np.arange(np.shape(z)[0])), state
        new = _copy(state)
        return self.decode_rows(z, new, np.arange(np.shape(z)[0])), new

    def warmup(self) -> None:
        """Compiles (or loads from the on-disk cache) every kernel with a 1-frame step."""
        z, _ = self.encode_rows(np.zeros((1, self._samples_per_frame), np.float32),
                                self.init_encode_state(1), np.zeros(1, np.int64))
        self.decode_rows(z, self.init_decode_state(1), np.zeros(1, np.int64))
