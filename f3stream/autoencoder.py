"""Causal STFT-domain audio encoder and iSTFT decoder (streamable, Vocos-like).

Why STFT-domain: on a CPU core a strided-conv (SEANet) front end spends most of its time at the
full sample rate; here the only per-sample work is two fixed DFT matrix products, and every
learned layer runs at 100 Hz (STFT frames) or 25 Hz (latent frames).

Algorithmic latency: the encoder has no look-ahead (a latent frame is ready when its last
sample arrives, so 40 ms of framing); the decoder's overlap-add needs ``n_fft - stft_hop``
samples (10 ms at the defaults) of the next frame before a sample is final.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AutoencoderConfig
from .harmonic import HarmonicSource, PitchHead
from .streaming import (CausalConvNeXtBlock, CausalFraming, OverlapAdd, State, StreamingModule,
                        StreamingSequential, TransformerLayer, hann_window, irdft_basis,
                        rdft_basis, substate, with_prefix)

SPECTRAL_COMPRESSION = 0.3  # |X|^0.3 power-law compression of the STFT input
SPECTRAL_FLOOR = 1e-8       # added to |X|^2 before the compression
LEVEL_FLOOR = 1e-6          # added to the mean power before the log of the level feature
LEVEL_SCALE = 0.1           # level feature = LEVEL_SCALE * ln(mean |X|^2 + LEVEL_FLOOR)


class AudioEncoder(StreamingModule):
    """``[B, T*hop_length]`` waveform -> ``[B, T, latent_dim]`` latents (before the bottleneck)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        # The numerics of the input features that a checkpoint is trained with: engines that
        # re-implement :meth:`features` (numba) read them from here, never from a copy.
        self.spectral_compression = SPECTRAL_COMPRESSION
        self.spectral_floor = SPECTRAL_FLOOR
        self.level_scale = LEVEL_SCALE if cfg.level_feature else None
        self.level_floor = LEVEL_FLOOR
        n_bins = cfg.n_fft // 2 + 1
        self.framing = CausalFraming(cfg.n_fft, cfg.stft_hop)
        self.register_buffer("basis", rdft_basis(cfg.n_fft, hann_window(cfg.n_fft)),
                             persistent=False)
        self.input_proj = nn.Linear(2 * n_bins + int(cfg.level_feature), cfg.conv_channels)
        self.convs = StreamingSequential(*[
            CausalConvNeXtBlock(cfg.conv_channels, cfg.conv_kernel, cfg.conv_mlp_ratio)
            for _ in range(cfg.encoder_conv_blocks)])
        self.group_proj = nn.Linear(cfg.stft_frames_per_latent * cfg.conv_channels, cfg.model_dim)
        self.transformer = StreamingSequential(*[
            TransformerLayer(cfg.model_dim, cfg.n_heads, cfg.attention_window)
            for _ in range(cfg.encoder_layers)])
        self.out_norm = nn.LayerNorm(cfg.model_dim)
        self.out_proj = nn.Linear(cfg.model_dim, cfg.latent_dim)

    def state_children(self) -> dict[str, StreamingModule]:
        return {"framing": self.framing, "convs": self.convs, "transformer": self.transformer}

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, N, n_fft]`` frames -> ``[B, N, 2F]`` compressed ``[real, imag]`` spectrum.

        Computed in float64, then rounded to float32: |X|^0.3 is ill-conditioned near
        silence (its slope grows without bound as |X| -> 0), and a float32 DFT of a quiet bin
        is only accurate to ~1e-6 absolute, which the compression turned into feature
        differences of ~1e-3 and latent differences of ~4e-4 between engines whose BLAS sums
        in another order. In float64 every engine gets the same features to float32
        rounding. (The numba engine computes the same DFT with half the products, see
        ``f3stream.backends.numba.autoencoder.spectral_features``.) With ``cfg.level_feature``
        one more column holds the frame's log mean power (``LEVEL_SCALE * ln(mean |X|^2 +
        LEVEL_FLOOR)``)."""
        spec = frames.to(torch.float64) @ self.basis.to(torch.float64)   # [B, N, 2F]
        n_bins = spec.shape[-1] // 2
        power = spec[..., :n_bins].square() + spec[..., n_bins:].square()
        gain = (power + self.spectral_floor).pow((self.spectral_compression - 1.0) / 2.0)
        feats = spec * gain.repeat(1, 1, 2)
        if self.level_scale is not None:
            level = self.level_scale * torch.log(power.mean(dim=-1, keepdim=True)
                                                 + self.level_floor)
            feats = torch.cat([feats, level], dim=-1)
        return feats.to(frames.dtype)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        frames, s_framing = self.framing.step(x, substate(state, "framing"))
        h = self.input_proj(self.features(frames))
        h, s_convs = self.convs.step(h, substate(state, "convs"))
        b, n, c = h.shape
        h = self.group_proj(h.reshape(b, n // self.cfg.stft_frames_per_latent, -1))
        h, s_tr = self.transformer.step(h, substate(state, "transformer"))
        z = self.out_proj(self.out_norm(h))
        return z, {**with_prefix("framing", s_framing), **with_prefix("convs", s_convs),
                   **with_prefix("transformer", s_tr)}


class AudioDecoder(StreamingModule):
    """``[B, T, latent_dim]`` latents -> ``[B, T*hop_length]`` waveform, delayed by
    ``cfg.decoder_delay`` samples; :meth:`tail` returns the delayed samples at end of stream."""

    MAX_LOG_MAGNITUDE = 6.0  # clamp before exp(): keeps an untrained model from overflowing

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        n_bins = cfg.n_fft // 2 + 1
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.model_dim)
        self.transformer = StreamingSequential(*[
            TransformerLayer(cfg.model_dim, cfg.n_heads, cfg.attention_window)
            for _ in range(cfg.decoder_layers)])
        self.ungroup_proj = nn.Linear(cfg.model_dim, cfg.stft_frames_per_latent * cfg.conv_channels)
        self.convs = StreamingSequential(*[
            CausalConvNeXtBlock(cfg.conv_channels, cfg.conv_kernel, cfg.conv_mlp_ratio)
            for _ in range(cfg.decoder_conv_blocks)])
        self.out_norm = nn.LayerNorm(cfg.conv_channels)
        self.out_proj = nn.Linear(cfg.conv_channels, 2 * n_bins)
        self.register_buffer("basis", irdft_basis(cfg.n_fft, hann_window(cfg.n_fft)),
                             persistent=False)
        self.overlap_add = OverlapAdd(cfg.n_fft, cfg.stft_hop)
        self.harmonic: HarmonicSource | None = None
        if cfg.harmonic_source:
            self.pitch = PitchHead(cfg.latent_dim, self.PITCH_HIDDEN, cfg.stft_frames_per_latent)
            # Gains start at HARMONIC_GAIN_INIT (real) in every bin, not at zero: at g = 0 the
            # first-order effect of g on any magnitude loss is the cross term of the harmonic
            # with the decoder's own spectrum, whose sign follows their random relative phase
            # and averages out, so zero gains stay at zero (measured: 1,500 steps from zero
            # left |g| ~ 0.05, with or without the measured pitch driving the oscillator).
            self.harmonic_proj = nn.Linear(cfg.conv_channels, 2 * n_bins)
            nn.init.zeros_(self.harmonic_proj.weight)
            with torch.no_grad():
                self.harmonic_proj.bias.zero_()[:n_bins] = self.HARMONIC_GAIN_INIT
            self.harmonic = HarmonicSource(cfg.sample_rate, cfg.n_fft, cfg.stft_hop)

    PITCH_HIDDEN = 256
    HARMONIC_GAIN_INIT = 1.0

    def state_children(self) -> dict[str, StreamingModule]:
        children: dict[str, StreamingModule] = {"transformer": self.transformer,
                                                "convs": self.convs, "ola": self.overlap_add}
        if self.harmonic is not None:
            children["harmonic"] = self.harmonic
        return children

    def spectrum(self, z: torch.Tensor, state: State, oscillator_f0: torch.Tensor | None = None,
                 excitation_gate: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """Latents -> (``[B, 4T, 2F]`` complex spectrum as ``[real, imag]``, the pitch head's
        ``[B, 4T]`` f0 in Hz or None without a harmonic source, new state).

        With the harmonic source the spectrum is ``M (e^{j phi} + g E)``: ``M e^{j phi}`` the
        decoder's own, ``E`` the excitation's DFT and ``g`` a complex gain per bin, relative
        to ``M`` so that the level stays where the magnitudes put it. ``oscillator_f0``
        (training and diagnostics only: a measured pitch, ``[B, 4T]`` Hz, 0 where the pitch
        head's own is to be used) drives the oscillator instead of the pitch head.
        ``excitation_gate`` (diagnostics only: ``[B, 4T]``) scales ``E`` per frame."""
        h, s_tr = self.transformer.step(self.input_proj(z), substate(state, "transformer"))
        b, t, _ = h.shape
        h = self.ungroup_proj(h).reshape(b, t * self.cfg.stft_frames_per_latent, -1)
        h, s_convs = self.convs.step(h, substate(state, "convs"))
        h = self.out_norm(h)
        log_mag, phase = self.out_proj(h).chunk(2, dim=-1)
        mag = torch.exp(log_mag.clamp(max=self.MAX_LOG_MAGNITUDE))
        re, im = torch.cos(phase), torch.sin(phase)
        new = {**with_prefix("transformer", s_tr), **with_prefix("convs", s_convs)}
        f0 = None
        if self.harmonic is not None:
            f0 = self.pitch(z)
            drive = f0 if oscillator_f0 is None else torch.where(oscillator_f0 > 0,
                                                                   oscillator_f0.to(f0), f0)
            exc, s_h = self.harmonic.step(drive, substate(state, "harmonic"))
            if excitation_gate is not None:
                exc = exc * excitation_gate[..., None].to(exc)
            e_re, e_im = exc.chunk(2, dim=-1)
            g_re, g_im = self.harmonic_proj(h).chunk(2, dim=-1)
            re = re + g_re * e_re - g_im * e_im
            im = im + g_re * e_im + g_im * e_re
            new.update(with_prefix("harmonic", s_h))
        return torch.cat([mag * re, mag * im], dim=-1), f0, new

    def step_with_f0(self, z: torch.Tensor, state: State,
                     oscillator_f0: torch.Tensor | None = None,
                     excitation_gate: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """:meth:`step` that also returns the pitch head's f0 (for its training loss), and
        takes :meth:`spectrum`'s ``oscillator_f0`` and ``excitation_gate``."""
        spec, f0, new = self.spectrum(z, state, oscillator_f0, excitation_gate)
        wav, s_ola = self.overlap_add.step(spec @ self.basis, substate(state, "ola"))
        return wav, f0, {**new, **with_prefix("ola", s_ola)}

    def step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        wav, _, new = self.step_with_f0(z, state)
        return wav, new

    def tail(self, state: State) -> torch.Tensor:
        return self.overlap_add.tail(substate(state, "ola"))
