"""Can a discriminator tell a checkpoint's reconstructions from the real audio? Trains one
alone (the autoencoder frozen) and reports its hinge loss every 20 steps (2.0 is chance).

    python -m training.probe_discriminator --checkpoint f3stream/checkpoints/default \\
        --steps 200 --out docs/diagnose/discriminator-probe.json

Run with and without bringing each crop pair to one level (``same_gain_to_reference``): a
discriminator that cannot learn here cannot guide a generator either.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def probe(checkpoint: str, config: str, steps: int, lr: float, crop_seconds: float,
          same_level: bool, n_batches: int = 40) -> dict:
    from f3stream.checkpoint import load_checkpoint
    from f3stream.model import F3Model

    from .common import adamw
    from .config import TrainConfig
    from .discriminators import (aligned_crops, build_discriminator, discriminator_loss,
                                 same_gain_to_reference)
    from .train import AutoencoderPart, _batch, load_stage0_sources

    cfg = TrainConfig.load(config)
    mcfg, state, _ = load_checkpoint(checkpoint)
    model = F3Model(mcfg)
    model.load_state_dict(state)
    ae = AutoencoderPart(model).eval()
    src, _ = load_stage0_sources(cfg, cfg.autoencoder)
    with torch.no_grad():   # fixed pairs (held apart from the training run's own step order)
        pairs = [(x, ae(x)) for x, _ in (_batch(src, 10 ** 6 + i, cfg.autoencoder.batch_size, 0)
                                         for i in range(n_batches))]
    torch.manual_seed(0)
    disc = build_discriminator("mpd")
    opt = adamw(disc.parameters(), lr=lr, betas=cfg.autoencoder.betas)
    crop = int(crop_seconds * mcfg.autoencoder.sample_rate)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        x, y = pairs[step % len(pairs)]
        xc, yc = aligned_crops(x, y, crop)
        if same_level:
            xc, yc = same_gain_to_reference(xc, yc)
        loss = discriminator_loss(disc(xc), disc(yc))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    every = 20
    return {"same_level": same_level, "lr": lr, "steps": steps,
            "hinge_loss_per_20_steps": [round(sum(losses[i:i + every]) / len(losses[i:i + every]), 3)
                                        for i in range(0, steps, every)],
            "seconds_per_step": round((time.perf_counter() - t0) / steps, 3)}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report

    p = argparse.ArgumentParser(prog="python -m training.probe_discriminator",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="f3stream/checkpoints/default")
    p.add_argument("--config", default="training/configs/real_cpu.json",
                   help="training config: its corpus and batch size")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop-seconds", type=float, default=0.5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    report = {"command": "python -m training.probe_discriminator " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "checkpoint": a.checkpoint, "discriminator": "mpd",
              "runs": [probe(a.checkpoint, a.config, a.steps, a.lr, a.crop_seconds, same)
                       for same in (False, True)]}
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
