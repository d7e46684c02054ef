"""Where one stage-0 training step spends its time: data, forward, losses, backward, optimizer.

    python -m training.profile_step --config training/configs/real_cpu.json --steps 12

Prints milliseconds per phase (mean over ``--steps`` after 3 warm-up steps) as JSON. Uses the
config's packed corpus (or manifest) and loss weights, with random initial weights. With a
harmonic source, "pitch" is the YIN target of the batch (the oscillator is driven by it when
the config teacher-forces) and the pitch loss is in "losses". With an
``adversarial_weight``, "adversarial" is the discriminator's update plus the generator's
adversarial and feature-matching forward passes (their backward is in "backward").

``--compile`` puts the model, the reconstruction losses or both through ``torch.compile``
(inductor; compile time falls in the warm-up steps) to measure whether it pays on this CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


COMPILE_CHOICES = ("none", "model", "losses", "all")


def profile(config: str, steps: int, threads: int, compile_parts: str = "none") -> dict[str, float]:
    if compile_parts not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, not {compile_parts!r}")
    from f3stream.model import F3Model

    from .discriminators import (aligned_crops, build_discriminator, discriminator_loss,
                                 generator_adversarial_losses, same_gain_to_reference)
    from .common import adamw
    from .config import TrainConfig
    from .losses import (BAND_RESOLUTION, FINE_BAND_RESOLUTION, THIRD_OCTAVE_EDGES_HZ, LogMel,
                         band_energy_loss, level_loss, spectral_losses)
    from .pitch import pitch_loss, yin_pitch
    from .train import AutoencoderPart, _batch, load_stage0_sources

    torch.set_num_threads(threads)
    cfg = TrainConfig.load(config)
    stage = cfg.autoencoder
    ae = AutoencoderPart(F3Model(cfg.model)).train()
    opt = adamw(ae.parameters(), lr=stage.lr)
    src, _ = load_stage0_sources(cfg, stage)
    logmel = LogMel(cfg.model.autoencoder.sample_rate)
    disc = opt_d = None
    if stage.adversarial_weight > 0:
        disc = build_discriminator(stage.discriminator, stage.discriminator_channels)
        opt_d = adamw(disc.parameters(), lr=stage.lr)
    crop = int(stage.discriminator_crop_seconds * cfg.model.autoencoder.sample_rate)
    ae_cfg = cfg.model.autoencoder
    sr, harmonic = ae_cfg.sample_rate, ae_cfg.harmonic_source

    def recon_loss(y: torch.Tensor, x: torch.Tensor, band) -> torch.Tensor:
        mr, cx, mags = spectral_losses(y, x, band, sr, with_complex=stage.complex_weight > 0)
        loss = (stage.mrstft_weight * mr + stage.mel_weight * logmel.loss(y, x, band, mags)
                + stage.complex_weight * cx)
        if stage.band_weight:
            loss = loss + stage.band_weight * band_energy_loss(*mags[BAND_RESOLUTION], band, sr)
        if stage.level_weight:
            loss = loss + stage.level_weight * level_loss(*mags[BAND_RESOLUTION], band, sr)
        if stage.fine_band_weight:
            loss = loss + stage.fine_band_weight * band_energy_loss(
                *mags[FINE_BAND_RESOLUTION], band, sr, THIRD_OCTAVE_EDGES_HZ)
        return loss

    forward = torch.compile(ae) if compile_parts in ("model", "all") else ae
    if compile_parts in ("losses", "all"):
        recon_loss = torch.compile(recon_loss)
    totals = dict.fromkeys(("data", "pitch", "forward", "losses", "adversarial", "backward",
                            "optimizer"), 0.0)
    for step in range(steps + 3):
        t0 = time.perf_counter()
        x, band = _batch(src, step, stage.batch_size, 0)
        t1 = time.perf_counter()
        f0 = None
        if harmonic:
            target, voiced = yin_pitch(x, sr, ae_cfg.stft_hop, x.shape[1] // ae_cfg.stft_hop)
            forced = target if stage.pitch_teacher_forcing > 0 else None
        t1p = time.perf_counter()
        if harmonic:
            y, f0 = forward(x, with_f0=True, oscillator_f0=forced)
        else:
            y = forward(x)
        t2 = time.perf_counter()
        loss = recon_loss(y, x, band)
        if f0 is not None:
            loss = loss + stage.pitch_weight * pitch_loss(f0, target, voiced)
        t3 = time.perf_counter()
        if disc is not None:
            xc, yc = same_gain_to_reference(*aligned_crops(x, y, crop))
            d_loss = discriminator_loss(disc(xc), disc(yc.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            adv, fm = generator_adversarial_losses(disc(xc), disc(yc))
            loss = loss + stage.adversarial_weight * adv + stage.feature_matching_weight * fm
        t3a = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if step >= 3:
            for key, dt in zip(totals, (t1 - t0, t1p - t1, t2 - t1p, t3 - t2, t3a - t3,
                                        t4 - t3a, t5 - t4)):
                totals[key] += dt / steps
    return {k: round(v * 1000, 1) for k, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.profile_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="none",
                   help="put the model and/or the reconstruction losses through torch.compile")
    args = p.parse_args(argv)
    print(json.dumps(profile(args.config, args.steps, args.threads, args.compile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
