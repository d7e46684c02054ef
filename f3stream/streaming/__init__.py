"""Causal streaming building blocks sharing one convention: ``step(x, state) -> (y, state)``."""

from .attention import SlidingWindowAttention, TransformerLayer, alibi_slopes
from .conv import CausalConv1d, CausalConvNeXtBlock
from .framing import CausalFraming, OverlapAdd, hann_window, irdft_basis, rdft_basis
from .state import (State, StateEntry, StreamingModule, StreamingSequential, concat_states,
                    split_state, state_nbytes, state_prefixes, substate, with_prefix)

__all__ = [
    "CausalConv1d", "CausalConvNeXtBlock", "CausalFraming", "OverlapAdd", "SlidingWindowAttention",
    "State", "StateEntry", "StreamingModule", "StreamingSequential", "TransformerLayer",
    "alibi_slopes", "concat_states", "hann_window", "irdft_basis", "rdft_basis", "split_state",
    "state_nbytes", "state_prefixes", "substate", "with_prefix",
]
