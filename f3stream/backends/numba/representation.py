"""Mirror of :mod:`f3stream.representation`: the causal representation encoder (the training
heads are not part of inference)."""

from __future__ import annotations

from typing import Any, NamedTuple

from numba import njit

from ...representation import RepresentationEncoder
from .nn import LayerNorm, Linear, layer_norm, linear
from .streaming.attention import transformer_stack
from .weights import Mirror


class RepresentationEncoderWeights(NamedTuple):  # fields: the module's attribute names
    input_proj: Linear
    transformer: Any          # tuple of TransformerLayerWeights, or None
    out_norm: LayerNorm
    out_proj: Linear


class RepresentationEncoderState(NamedTuple):
    transformer: Any


MIRRORS = {RepresentationEncoder: Mirror(RepresentationEncoderWeights,
                                         RepresentationEncoderState)}


@njit(cache=True, nogil=True)
def representation_encoder(z2, bsz, s, rows, plan, w):
    """:class:`RepresentationEncoder` step: latents ``[B*T, D]`` -> representations
    ``[B*T, R]``; the streams' states at ``rows`` advance in place."""
    t_len = z2.shape[0] // bsz
    h = linear(z2, w.input_proj, plan)
    h = transformer_stack(h.reshape(bsz, t_len, h.shape[1]), s.transformer, rows, plan,
                          w.transformer)
    return linear(layer_norm(h.reshape(bsz * t_len, h.shape[2]), w.out_norm), w.out_proj, plan)
