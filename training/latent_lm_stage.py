"""Train the small causal latent LM (f3stream.latent_lm) on a frozen tokenizer's latents.

    python -m training.latent_lm_stage --checkpoint f3stream/checkpoints/default \\
        --manifest data/corpus/manifest.jsonl --out runs/latent_lm --steps 2000

Latents are standardised by one global scale (their train-set RMS) before modelling, so the
flow loss of two tokenizers is comparable whatever the raw scale of their latents; the scale is
stored with the LM so generation can undo it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from f3stream.audio import load_audio
from f3stream.latent_lm import LatentLM, LatentLMConfig, save_latent_lm
from f3stream.tokenizer import Tokenizer

from .common import adamw
from .data.manifest import read_manifest


def clip_latents(tok: Tokenizer, clips, desc: str = "latents") -> list[np.ndarray]:
    out = []
    for c in tqdm(clips, desc=desc, unit="clip", disable=not sys.stderr.isatty()):
        wav, _ = load_audio(c.path, tok.sample_rate)
        out.append(tok.encode(wav))
    return out


def crops(latents: list[np.ndarray], rng: np.random.Generator, batch: int, frames: int
          ) -> torch.Tensor:
    """Random ``frames``-long crops (shorter clips zero-padded at the end)."""
    x = np.zeros((batch, frames, latents[0].shape[1]), np.float32)
    for j, i in enumerate(rng.integers(0, len(latents), size=batch)):
        z = latents[i]
        a = int(rng.integers(0, max(1, z.shape[0] - frames + 1)))
        piece = z[a:a + frames]
        x[j, :piece.shape[0]] = piece
    return torch.from_numpy(x)


def train_latent_lm(train: list[np.ndarray], val: list[np.ndarray], cfg: LatentLMConfig,
                    steps: int, out: Path | None = None, batch: int = 16, frames: int = 100,
                    lr: float = 5e-4, seed: int = 0, log: Path | None = None
                    ) -> tuple[LatentLM, float, dict]:
    """Returns (model, global scale, {"val_flow_loss": ...})."""
    torch.manual_seed(seed)
    scale = float(np.sqrt(np.mean(np.concatenate([z.ravel() for z in train]) ** 2))) or 1.0
    train = [z / scale for z in train]
    val = [z / scale for z in val]
    model = LatentLM(cfg)
    opt = adamw(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    rows = []
    bar = tqdm(range(steps), desc="latent LM", disable=not sys.stderr.isatty())
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / steps))
        model.train()
        loss = model.flow_loss(crops(train, rng, batch, frames))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            rows.append({"step": step + 1, "flow_loss": round(loss.item(), 5),
                         "sec": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{loss.item():.4f}")
    val_loss = evaluate_flow_loss(model, val, frames)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "flow_loss", "sec"])
            w.writeheader()
            w.writerows(rows)
    if out is not None:
        save_latent_lm(model, out, {"scale": scale, "steps": steps, "seed": seed,
                                    "val_flow_loss": val_loss})
    return model.eval(), scale, {"val_flow_loss": val_loss}


@torch.no_grad()
def evaluate_flow_loss(model: LatentLM, latents: list[np.ndarray], frames: int,
                       repeats: int = 4) -> float:
    """Mean flow loss over every whole ``frames``-window of the (standardised) clips, with
    fixed noise draws, so two runs are compared on identical terms."""
    model.eval()
    g = torch.Generator().manual_seed(1234)
    losses = []
    for z in latents:
        for a in range(0, max(1, z.shape[0] - frames + 1), frames):
            x = torch.from_numpy(np.ascontiguousarray(z[a:a + frames]))[None]
            if x.shape[1] < 2 * model.cfg.patch:
                continue
            for _ in range(repeats):
                losses.append(model.flow_loss(x, g).item())
    return float(np.mean(losses)) if losses else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.latent_lm_stage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="tokenizer checkpoint (default: bundled)")
    p.add_argument("--manifest", default="data/corpus/manifest.jsonl")
    p.add_argument("--out", required=True, help="folder for the latent LM checkpoint")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=100, help="training crop length (frames)")
    p.add_argument("--model-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tok = Tokenizer.load(args.checkpoint)
    train = clip_latents(tok, read_manifest(args.manifest, "train"), "train latents")
    val = clip_latents(tok, read_manifest(args.manifest, "val"), "val latents")
    cfg = LatentLMConfig(latent_dim=tok.latent_dim, model_dim=args.model_dim, layers=args.layers)
    _, _, res = train_latent_lm(train, val, cfg, args.steps, Path(args.out), args.batch,
                                args.frames, seed=args.seed, log=Path(args.out) / "log.csv")
    print(f"val flow loss {res['val_flow_loss']:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
