"""Stage 1: the representation encoder on *frozen* stage-0 latents (RQ-MTP + frozen-LM loss)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from f3stream.checkpoint import load_checkpoint
from f3stream.representation import RepresentationTrainingHeads, rq_mtp_loss
from f3stream.tokenizer import Tokenizer

from .checkpointing import latest_checkpoint, load_training_state, save_training_state
from .common import (CsvLog, adamw, check_ranks_in_sync, export, load_stage0, lr_at,
                     setup_distributed)
from .config import TrainConfig


class LatentClips:
    """Frozen latents of every clip of a split, computed once, with transcripts."""

    def __init__(self, tok: Tokenizer, clips, max_frames: int):
        from f3stream.audio import load_audio

        self.latents, self.texts = [], []
        for c in tqdm(clips, desc="latents", disable=not sys.stderr.isatty()):
            wav, _ = load_audio(c.path, tok.sample_rate)
            self.latents.append(tok.encode(wav)[:max_frames])
            self.texts.append(c.text)
        if not self.latents:
            raise ValueError("no clips in this split")

    def batch(self, rng: np.random.Generator, batch_size: int):
        idx = rng.choice(len(self.latents), size=batch_size, replace=len(self.latents) < batch_size)
        t = max(self.latents[i].shape[0] for i in idx)
        z = np.zeros((batch_size, t, self.latents[0].shape[1]), np.float32)
        mask = np.zeros((batch_size, t), bool)
        for j, i in enumerate(idx):
            n = self.latents[i].shape[0]
            z[j, :n], mask[j, :n] = self.latents[i], True
        return torch.from_numpy(z), torch.from_numpy(mask), [self.texts[i] for i in idx]


def representation_losses(model, heads, lm, stage, z, mask, texts, generator):
    reps = model.representation(z)
    rq = lm_loss = torch.zeros((), device=z.device)
    acc = torch.zeros(())
    if stage.use_rq:
        codes = heads.quantizer(z)
        logits = heads.mtp(reps)
        rq = rq_mtp_loss(logits, codes, mask)
        with torch.no_grad():
            valid = mask[:, :-1] & mask[:, 1:]
            acc = (logits[:, :-1, 0].argmax(-1) == codes[:, 1:])[valid].float().mean()
    if stage.use_lm:
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            tokens = heads.adapter(reps[keep])
            f = heads.adapter.factor
            tok_mask = mask[keep][:, ::f]
            lm_loss = lm(tokens, tok_mask, [texts[i] for i in keep], generator)
    return rq, lm_loss, acc


def train_representation(cfg: TrainConfig, out: Path, resume: bool,
                         max_steps: int | None = None) -> None:
    from .data.manifest import read_manifest
    from .frozen_lm import build_supervision

    stage = cfg.representation
    if not (stage.use_rq or stage.use_lm):
        raise ValueError("stage 1 needs at least one of use_rq / use_lm")
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed + 1)
    model = load_stage0(out, cfg, device)
    # the steps stage 0 really ran (a run stopped early exports fewer than configured)
    stage0_steps = load_checkpoint(out / "export")[2].get("stage0_steps",
                                                          cfg.autoencoder.steps)
    for p in list(model.encoder.parameters()) + list(model.decoder.parameters()):
        p.requires_grad_(False)
    model.encoder.eval()
    model.decoder.eval()
    rcfg = cfg.model.representation
    heads = RepresentationTrainingHeads(cfg.model.autoencoder.latent_dim, rcfg).to(device)
    lm = build_supervision(stage.lm).to(device) if stage.use_lm else None
    if lm is not None and lm.dim != rcfg.lm_dim:
        raise ValueError(f"config lm_dim {rcfg.lm_dim} != the LM's width {lm.dim}")
    trainable = nn.ModuleDict({"representation": model.representation, "mtp": heads.mtp,
                               "adapter": heads.adapter})
    opt = adamw(trainable.parameters(), lr=stage.lr, betas=stage.betas,
                weight_decay=stage.weight_decay)
    stage_dir = out / "representation"
    modules = {"representation": model.representation, "heads": heads}
    start = 0
    if resume and (ck := latest_checkpoint(stage_dir)) is not None:
        start = load_training_state(ck, modules, {"optimizer": opt})["step"]
        if rank == 0:
            print(f"resumed from {ck} at step {start}")
    tok = Tokenizer(model, device=device)
    max_frames = int(stage.segment_seconds * cfg.model.autoencoder.frame_rate)
    train = LatentClips(tok, read_manifest(cfg.manifest, split="train"), max_frames)
    val = LatentClips(tok, read_manifest(cfg.manifest, split="val"), max_frames)
    val_batches = [val.batch(np.random.default_rng([cfg.seed, 10**9, i]), stage.batch_size)
                   for i in range(4)]
    log = CsvLog(stage_dir / "log.csv", rank == 0)
    log.truncate_after(start)
    stage_dir.mkdir(parents=True, exist_ok=True)
    end = stage.steps if max_steps is None else min(stage.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=stage.steps, desc="representation",
               disable=rank != 0 or not sys.stderr.isatty())
    t0 = time.time()
    for step in bar:
        lr = lr_at(step, stage)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg.seed, step, rank])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        z, mask, texts = train.batch(rng, stage.batch_size)
        trainable.train()
        rq, lm_loss, acc = representation_losses(model, heads, lm, stage, z.to(device),
                                                 mask.to(device), texts, gen)
        loss = rq + stage.lm_weight * lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:  # data parallel: average gradients over ranks (every rank, every param)
            for p in trainable.parameters():
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                torch.distributed.all_reduce(g)
                p.grad = g / world
        grad = nn.utils.clip_grad_norm_(trainable.parameters(), stage.grad_clip)
        opt.step()
        done = step + 1
        if done % stage.log_every == 0 or done == end:
            row = {"step": done, "loss": f"{loss.item():.5f}", "rq_mtp": f"{rq.item():.5f}",
                   "lm": f"{lm_loss.item():.5f}", "rq_acc1": f"{acc.item():.4f}",
                   "grad_norm": f"{grad.item():.4f}", "lr": f"{lr:.3e}",
                   "sec_per_step": f"{(time.time() - t0) / max(1, done - start):.3f}",
                   "val_rq_acc1": "", "val_lm": ""}
            if done % stage.eval_every == 0 or done == stage.steps:
                trainable.eval()
                with torch.no_grad():
                    vals = [representation_losses(model, heads, lm, stage, vz.to(device),
                                                  vm.to(device), vt,
                                                  torch.Generator().manual_seed(i))
                            for i, (vz, vm, vt) in enumerate(val_batches)]
                row["val_rq_acc1"] = f"{np.mean([v[2].item() for v in vals]):.4f}"
                row["val_lm"] = f"{np.mean([v[1].item() for v in vals]):.5f}"
            log.write(row)
            bar.set_postfix(rq=row["rq_mtp"], lm=row["lm"])
        if rank == 0 and (done % stage.checkpoint_every == 0 or done == end):
            save_training_state(stage_dir, done, modules, {"optimizer": opt},
                                {"stage": "representation"})
            info = {"trained": True, "stage0_steps": stage0_steps,
                    "stage1_steps": done, "seed": cfg.seed,
                    "stage1_losses": {"rq": stage.use_rq, "lm": stage.lm if stage.use_lm
                                      else None}}
            export(model, out, info)
    check_ranks_in_sync(trainable, world, rank, "stage 1")
