"""Start a stage-0 training run from an installed checkpoint (e.g. the bundled one).

Why: a run directory holds the optimizer's moments and the raw (non-EMA) weights; when it is
lost, the last installed checkpoint is what is left. This writes a training state that
``python -m training.train autoencoder --resume`` continues from: model and EMA both set to the
checkpoint's weights (upcast to float32), the step taken from the checkpoint's
``stage0_steps``, and a fresh AdamW. A fresh Adam's first updates are sign-like (every weight
moves by the full learning rate), so the state records ``rewarm_from``: training then ramps the
learning rate up again over the stage's ``warmup_steps`` from that step (``lr_at``'s warm-up,
shifted), instead of kicking trained weights at mid-schedule rate.

    python -m training.seed --checkpoint f3stream/checkpoints/default \\
        --config training/configs/real_cpu_deep03_level_harm10_nocx_tf.json --out runs/NEW
    python -m training.train autoencoder --config training/configs/... --out runs/NEW --resume
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from f3stream.checkpoint import load_checkpoint, load_state_strict
from f3stream.model import F3Model

from .checkpointing import latest_checkpoint, save_training_state
from .common import adamw
from .config import TrainConfig
from .train import AutoencoderPart


def seed(checkpoint: Path, cfg: TrainConfig, out: Path, step: int | None = None) -> Path:
    ck_cfg, state, info = load_checkpoint(checkpoint)
    if ck_cfg != cfg.model:
        raise SystemExit(f"{checkpoint}'s model config differs from the training config's:\n"
                         f"  checkpoint: {ck_cfg}\n  config:     {cfg.model}")
    if step is None:
        step = int(info.get("stage0_steps", 0))
    if latest_checkpoint(out / "autoencoder") is not None:
        raise SystemExit(f"{out}/autoencoder already holds a checkpoint: refusing to overwrite it")
    model, ema = F3Model(cfg.model), F3Model(cfg.model)
    for m in (model, ema):
        load_state_strict(m, state, str(checkpoint))
    s = cfg.autoencoder
    opt = adamw(AutoencoderPart(model).parameters(), lr=s.lr, betas=s.betas,
                weight_decay=s.weight_decay)
    torch.manual_seed(cfg.seed)
    extra = {"stage": "autoencoder", "rewarm_from": step, "seeded_from": str(checkpoint)}
    return save_training_state(out / "autoencoder", step, {"model": model, "ema": ema},
                               {"generator": opt}, extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.seed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="installed checkpoint directory")
    p.add_argument("--config", required=True, help="the run's training config")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--step", type=int,
                   help="step to continue from (default: the checkpoint's stage0_steps)")
    a = p.parse_args(argv)
    path = seed(Path(a.checkpoint), TrainConfig.load(a.config), Path(a.out), a.step)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
