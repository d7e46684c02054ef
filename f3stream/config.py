"""Model configuration: plain dataclasses that round-trip through the checkpoint's JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# Sane bounds of every size in a config. A config comes from a checkpoint's config.json, i.e.
# from disk: without bounds an absurd value (model_dim 10**7) is only noticed after torch has
# tried to allocate it (20 GB and a minute later). The upper bounds are ~30x the bundled model.
AUTOENCODER_BOUNDS: dict[str, tuple[int, int]] = {
    "sample_rate": (1000, 384_000), "frame_rate": (1, 1000), "latent_dim": (1, 4096),
    "n_fft": (1, 16384), "stft_hop": (1, 16384), "conv_channels": (1, 8192),
    "conv_kernel": (1, 1023), "conv_mlp_ratio": (1, 16), "encoder_conv_blocks": (0, 64),
    "decoder_conv_blocks": (0, 64), "model_dim": (1, 8192), "n_heads": (1, 256),
    "encoder_layers": (0, 64), "decoder_layers": (0, 64), "attention_window": (1, 65536),
}
REPRESENTATION_BOUNDS: dict[str, tuple[int, int]] = {
    "model_dim": (1, 8192), "n_heads": (1, 256), "layers": (1, 64),
    "attention_window": (1, 65536), "mlp_ratio": (1, 16), "output_dim": (1, 8192),
    "mtp_heads": (1, 64), "rq_code_dim": (1, 1024), "rq_codebook_size": (1, 1 << 20),
    "lm_dim": (1, 8192), "lm_downsample": (1, 64),
}


def _check_bounds(obj: Any, bounds: dict[str, tuple[int, int]], prefix: str = "") -> None:
    for name, (lo, hi) in bounds.items():
        value = getattr(obj, name)
        if not lo <= value <= hi:
            raise ConfigError(f"{prefix}{name} {value} is out of range [{lo}, {hi}]")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Causal STFT-domain autoencoder: waveform <-> ``latent_dim`` latents at ``frame_rate`` Hz.

    The encoder works on a causal STFT (``n_fft`` window, ``stft_hop`` hop), mixes time with
    causal ConvNeXt blocks at the STFT rate, groups ``hop_length // stft_hop`` STFT frames into one
    latent frame and runs a causal transformer at the latent rate. The decoder mirrors it and
    ends with an inverse STFT by overlap-add, which delays its output by ``n_fft - stft_hop``
    samples (the only look-ahead in the whole codec).
    """

    sample_rate: int = 24000
    frame_rate: int = 25
    latent_dim: int = 64
    n_fft: int = 480
    stft_hop: int = 240
    conv_channels: int = 128
    conv_kernel: int = 7
    conv_mlp_ratio: int = 3
    encoder_conv_blocks: int = 4
    decoder_conv_blocks: int = 4
    model_dim: int = 256
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_window: int = 32
    # One extra encoder input per STFT frame: its log mean power. Every other layer of the
    # encoder is nearly scale-invariant (LayerNorms after a linear input projection), so
    # without it the input level reaches the latents only weakly and reconstructions come
    # out at a compressed level (loud input much too quiet). False keeps older checkpoints.
    level_feature: bool = False
    # A source-filter head in the decoder: it predicts each STFT frame's pitch, an oscillator
    # renders the harmonics (``f3stream.harmonic``) and per-bin complex gains, relative to the
    # decoder's own magnitudes, add them to its spectrum. False keeps older checkpoints.
    harmonic_source: bool = False
    # Noise-regularised bottleneck (F3 Eq. 1-2). ``normalize=False, noise_gamma=0`` is a plain AE.
    normalize_latents: bool = True
    noise_gamma: float = 1.0

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (960 at 24 kHz / 25 Hz = 40 ms)."""
        return self.sample_rate // self.frame_rate

    @property
    def stft_frames_per_latent(self) -> int:
        return self.hop_length // self.stft_hop

    @property
    def decoder_delay(self) -> int:
        """Samples of look-ahead the overlap-add decoder needs before a sample is final."""
        return self.n_fft - self.stft_hop

    def validate(self) -> None:
        _check_bounds(self, AUTOENCODER_BOUNDS)
        if self.sample_rate % self.frame_rate:
            raise ConfigError(f"frame_rate {self.frame_rate} must divide sample_rate "
                              f"{self.sample_rate}")
        if self.hop_length % self.stft_hop:
            raise ConfigError(f"stft_hop {self.stft_hop} must divide the frame hop "
                              f"{self.hop_length}")
        if self.n_fft % self.stft_hop or self.n_fft < self.stft_hop:
            raise ConfigError("n_fft must be a positive multiple of stft_hop")
        if self.model_dim % self.n_heads:
            raise ConfigError("model_dim must be divisible by n_heads")
        if not 0 <= self.noise_gamma <= 100:  # NaN fails too
            raise ConfigError(f"noise_gamma {self.noise_gamma} is out of range [0, 100]")


@dataclass(frozen=True)
class RepresentationConfig:
    """Causal transformer over frozen latents, plus the sizes of its training-only heads."""

    model_dim: int = 256
    n_heads: int = 4
    layers: int = 4
    attention_window: int = 64
    mlp_ratio: int = 4
    output_dim: int = 768
    # RQ-MTP: a frozen random-projection quantizer gives a code per frame; ``mtp_heads`` heads
    # predict the codes of frames t+1 .. t+mtp_heads.
    mtp_heads: int = 4
    rq_code_dim: int = 16
    rq_codebook_size: int = 8192
    rq_seed: int = 1234
    # Frozen-LM supervision: pairs of frames (25 -> 12.5 Hz) are projected to the LM's width.
    lm_dim: int = 384
    lm_downsample: int = 2

    def validate(self) -> None:
        _check_bounds(self, REPRESENTATION_BOUNDS, "representation ")
        if self.model_dim % self.n_heads:
            raise ConfigError("representation model_dim must be divisible by n_heads")


@dataclass(frozen=True)
class TokenizerConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    representation: RepresentationConfig = field(default_factory=RepresentationConfig)

    def validate(self) -> "TokenizerConfig":
        self.autoencoder.validate()
        self.representation.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenizerConfig":
        """Build from JSON data; unknown keys are an error (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise ConfigError("tokenizer config must be a JSON object")
        unknown = set(data) - {"autoencoder", "representation"}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        return cls(autoencoder=_build(AutoencoderConfig, data.get("autoencoder", {})),
                   representation=_build(RepresentationConfig,
                                         data.get("representation", {}))).validate()


def _build(kind: type, data: Any):
    if not isinstance(data, dict):
        raise ConfigError(f"{kind.__name__} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    for key, value in data.items():
        expected = type(fields[key].default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{kind.__name__}.{key} must be {expected.__name__}, "
                              f"got {value!r}")
    return kind(**data)
