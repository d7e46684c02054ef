"""The training run's configuration: one JSON file -> :class:`TrainConfig` (the model's
:class:`~f3stream.config.TokenizerConfig`, the data, the augmentations and one
:class:`StageConfig` per stage). Shared by both stages; imports no stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from f3stream.config import TokenizerConfig

from .segments import Augmentation, LevelAugmentation


@dataclass
class StageConfig:
    steps: int = 1000
    batch_size: int = 16
    segment_seconds: float = 1.6
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    # The last ``cooldown_steps`` of the schedule scale the rate linearly down to zero (the
    # decay of a warm-up/stable/decay schedule): a release branch anneals while the main run
    # goes on at its floor. 0: no cool-down.
    cooldown_steps: int = 0
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    # stage 0 loss weights
    mrstft_weight: float = 1.0
    mel_weight: float = 1.0
    adversarial_weight: float = 0.0     # 0 disables the discriminator (fast CPU runs)
    feature_matching_weight: float = 2.0
    discriminator_start: int = 0
    discriminator: str = "mrd"          # "mrd", "mpd" or "mpd+mrd" (training/discriminators.py)
    discriminator_channels: int = 32    # width of the STFT (mrd) discriminators
    discriminator_crop_seconds: float = 0.0  # judge a random window of this length (0: all)
    discriminator_lr: float = 0.0       # 0: the generator's learning rate
    complex_weight: float = 0.0         # compressed complex-spectrum (phase-aware) loss
    band_weight: float = 0.0            # log wide-band energy loss (level and dynamics)
    level_weight: float = 0.0           # log total-power loss (the RMS level)
    fine_band_weight: float = 0.0       # log third-octave band energy loss on 5 ms frames
    phase_advance_weight: float = 0.0   # per-bin phase advance (instantaneous frequency) loss
    pitch_weight: float = 1.0           # the harmonic source's pitch head (octaves, voiced frames)
    # Share of the items whose oscillator runs at the measured (YIN) pitch where voiced,
    # instead of the pitch head's: the harmonic gains learn before the pitch head is right.
    pitch_teacher_forcing: float = 0.0
    # Noise schedule: gamma ramps linearly from ``noise_gamma_start`` to the model's
    # ``noise_gamma`` over ``noise_ramp_steps`` (0: the model's gamma from the first step).
    noise_gamma_start: float = 0.0
    noise_ramp_steps: int = 0
    autocast_bf16: bool = False         # model in bfloat16 autocast (CPU AMX), losses in float32
    # Worker processes preparing the next steps' batches (0: in the training loop). A GPU
    # step is faster than one core cuts, resamples and augments a batch; the batches are
    # the same either way (each is a function of seed, step and rank).
    loader_workers: int = 0
    # Stage 0 trains only the decoder: the encoder's weights, hence the latents the tokenizer
    # emits (and what stage 1 and the latent LM read), stay as they are.
    freeze_encoder: bool = False
    # Exponential moving average of the autoencoder's weights (0: off). The export then holds
    # the averaged weights: good at any step of a long run cut into pieces, without waiting
    # for a learning-rate decay.
    ema_decay: float = 0.0
    # stage 1 switches (ablations)
    use_rq: bool = True
    use_lm: bool = True
    lm: str = "minilm"                  # "minilm" or a path to a local HF causal LM directory
    lm_weight: float = 1.0


def _section(kind: type, values: dict[str, Any], where: str):
    """A config section as ``kind`` (JSON lists become tuples); unknown keys are an error."""
    bad = set(values) - set(kind.__dataclass_fields__)
    if bad:
        raise ValueError(f"{where}: unknown keys {sorted(bad)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class TrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    manifest: str = "data/corpus/manifest.jsonl"
    # A packed corpus (training.data.pack) replaces the manifest for stage 0 when set.
    packed: str = ""
    source_weights: dict[str, float] = field(default_factory=dict)
    level: LevelAugmentation = field(default_factory=LevelAugmentation)
    seed: int = 0
    gain_db: tuple[float, float] = (-12.0, 3.0)
    augment: Augmentation = field(default_factory=Augmentation)
    autoencoder: StageConfig = field(default_factory=StageConfig)
    representation: StageConfig = field(default_factory=StageConfig)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        known = {"model", "manifest", "seed", "gain_db", "augment", "autoencoder",
                 "representation", "packed", "source_weights", "level"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        stages = {name: _section(StageConfig, data.get(name, {}), f"{path}: {name}")
                  for name in ("autoencoder", "representation")}
        augment = _section(Augmentation, data.get("augment", {}), f"{path}: augment")
        level = _section(LevelAugmentation, data.get("level", {}), f"{path}: level")
        return cls(model=TokenizerConfig.from_dict(data.get("model", {})), augment=augment,
                   packed=data.get("packed", ""), level=level,
                   source_weights=dict(data.get("source_weights", {})),
                   manifest=data.get("manifest", cls.manifest), seed=data.get("seed", 0),
                   gain_db=tuple(data.get("gain_db", (-12.0, 3.0))), **stages)

