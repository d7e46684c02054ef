"""The reference engine: the torch ``F3Model`` itself (CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..model import F3Model
from .base import Engine, State


class TorchEngine(Engine):
    """States stay torch tensors on the model's device, so a GPU stream never round-trips its
    KV caches through host memory; only inputs and outputs cross as numpy."""

    name = "torch"

    def __init__(self, model: F3Model, device: torch.device):
        super().__init__(model.cfg)
        self.model = model
        self.device = device

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    @staticmethod
    def _np(x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def init_encode_state(self, batch_size: int, with_representations: bool = True) -> State:
        return self.model.init_encode_state(batch_size, with_representations, self.device)

    def encode_step(self, wav, state):
        with torch.inference_mode():
            z, r, state = self.model.encode_step(self._t(wav), state)
        return self._np(z), (None if r is None else self._np(r)), state

    def init_represent_state(self, batch_size: int) -> State:
        return self.model.representation.init_state(batch_size, self.device)

    def represent_step(self, z, state):
        with torch.inference_mode():
            r, state = self.model.representation.step(self._t(z), state)
        return self._np(r), state

    def init_decode_state(self, batch_size: int) -> State:
        return self.model.init_decode_state(batch_size, self.device)

    def decode_step(self, z, state):
        with torch.inference_mode():
            wav, state = self.model.decode_step(self._t(z), state)
        return self._np(wav), state

    def decode_tail(self, state):
        # a copy: on the CPU ``.numpy()`` would be a view of the state, which zero_rows (a
        # pooled session's reset) overwrites in place
        return np.array(self._np(self.model.decode_tail(state)), copy=True)

    def encode_rows(self, wav, state, rows):
        with torch.inference_mode():  # in-place row writes into inference tensors
            return super().encode_rows(wav, state, rows)

    def decode_rows(self, z, state, rows):
        with torch.inference_mode():
            return super().decode_rows(z, state, rows)

    def zero_rows(self, state, rows):
        with torch.inference_mode():
            super().zero_rows(state, rows)

    def _index(self, rows):
        return torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
