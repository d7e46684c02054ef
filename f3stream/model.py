"""The whole tokenizer as one ``nn.Module``: encoder, bottleneck, decoder, representation encoder.

Two streaming directions share the module: *encode* (waveform -> latents -> representations)
and *decode* (latents -> waveform). Each has a flat state (see :mod:`f3stream.streaming.state`).
"""

from __future__ import annotations

import torch
from torch import nn

from .alignment import align_decoded
from .autoencoder import AudioDecoder, AudioEncoder
from .bottleneck import NoiseBottleneck
from .config import TokenizerConfig
from .representation import RepresentationEncoder
from .streaming import State, StateEntry, StreamingModule, substate, with_prefix


class F3Model(nn.Module):
    # Where each module's state lives in the encode direction's flat state (the decode
    # direction's state is the decoder's, unprefixed).
    ENCODER_STATE = "encoder"
    REPRESENTATION_STATE = "representation"

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ae = cfg.autoencoder
        self.encoder = AudioEncoder(ae)
        self.bottleneck = NoiseBottleneck(ae.normalize_latents, ae.noise_gamma)
        self.decoder = AudioDecoder(ae)
        self.representation = RepresentationEncoder(ae.latent_dim, cfg.representation)

    # -- encode direction -------------------------------------------------------------------
    def encode_state_children(self, with_representations: bool = True
                              ) -> dict[str, StreamingModule]:
        """The modules whose states make up the encode direction's state, by key prefix."""
        children: dict[str, StreamingModule] = {self.ENCODER_STATE: self.encoder}
        if with_representations:
            children[self.REPRESENTATION_STATE] = self.representation
        return children

    def encode_state_spec(self, with_representations: bool = True) -> dict[str, StateEntry]:
        return {k: e for p, m in self.encode_state_children(with_representations).items()
                for k, e in with_prefix(p, m.state_spec()).items()}

    def init_encode_state(self, batch_size: int, with_representations: bool = True,
                          device: torch.device | None = None) -> State:
        state: State = {}
        for p, m in self.encode_state_children(with_representations).items():
            state.update(with_prefix(p, m.init_state(batch_size, device)))
        return state

    @classmethod
    def has_representations(cls, state: State) -> bool:
        """Whether an encode-direction state includes the representation encoder's."""
        p = cls.REPRESENTATION_STATE + "."
        return any(k.startswith(p) for k in state)

    def encode_step(self, wav: torch.Tensor, state: State
                    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """``[B, T*hop]`` samples -> latents ``[B, T, D]``, representations ``[B, T, R]`` (or
        None if the state has no representation part), new state. Deterministic (no noise)."""
        z, s_enc = self.encoder.step(wav, substate(state, self.ENCODER_STATE))
        z = self.bottleneck(z, perturb=False)
        new = with_prefix(self.ENCODER_STATE, s_enc)
        reps = None
        rep_state = substate(state, self.REPRESENTATION_STATE)
        if rep_state:
            reps, s_rep = self.representation.step(z, rep_state)
            new.update(with_prefix(self.REPRESENTATION_STATE, s_rep))
        return z, reps, new

    # -- decode direction -------------------------------------------------------------------
    def decode_state_spec(self) -> dict[str, StateEntry]:
        return self.decoder.state_spec()

    def init_decode_state(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.decoder.init_state(batch_size, device)

    def decode_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``[B, T, D]`` latents -> ``[B, T*hop]`` samples delayed by ``decoder_delay``."""
        return self.decoder.step(z, state)

    def decode_tail(self, state: State) -> torch.Tensor:
        return self.decoder.tail(state)

    # -- training ---------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-clip autoencoding for training: returns (bottleneck latents, reconstruction
        aligned with ``wav``). The bottleneck perturbs latents in training mode."""
        b = wav.shape[0]
        z = self.encoder.step(wav, self.encoder.init_state(b, wav.device))[0]
        z = self.bottleneck(z)
        state = self.decoder.init_state(b, wav.device)
        y, state = self.decoder.step(z, state)
        return z, align_decoded(y, self.decoder.tail(state), self.cfg.autoencoder.decoder_delay)
