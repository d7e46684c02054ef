"""Train the F3 tokenizer: stage 0 (autoencoder), stage 1 (representation encoder), or both.

    python -m training.train autoencoder    --config training/configs/cpu_small.json --out runs/x
    python -m training.train representation --config training/configs/cpu_small.json --out runs/x
    python -m training.train all            --config training/configs/cpu_small.json --out runs/x
    torchrun --nproc_per_node=4 -m training.train all --config ... --out ...   # DDP

Every run is seeded; ``--resume`` continues from ``OUT/<stage>/checkpoints/latest`` exactly as
if it had never stopped (batches are a function of the step, RNG and optimizer state are
restored). Logs go to ``OUT/<stage>/log.csv``; the inference checkpoint (f3stream format) is
exported to ``OUT/export`` at every checkpoint and at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from f3stream.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from f3stream.config import TokenizerConfig
from f3stream.fileio import atomic_write_bytes
from f3stream.model import F3Model

from .checkpointing import latest_checkpoint, load_training_state, save_training_state
from .losses import (BAND_RESOLUTION, LogMel, MultiResolutionDiscriminator,
                     band_energy_loss, discriminator_loss, generator_adversarial_losses,
                     spectral_losses)
from .segments import Augmentation, LevelAugmentation, PackedSegmentSource, SegmentSource


@dataclass
class StageConfig:
    steps: int = 1000
    batch_size: int = 16
    segment_seconds: float = 1.6
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
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
    complex_weight: float = 0.0         # compressed complex-spectrum (phase-aware) loss
    band_weight: float = 0.0            # log wide-band energy loss (level and dynamics)
    # Noise schedule: gamma ramps linearly from ``noise_gamma_start`` to the model's
    # ``noise_gamma`` over ``noise_ramp_steps`` (0: the model's gamma from the first step).
    noise_gamma_start: float = 0.0
    noise_ramp_steps: int = 0
    autocast_bf16: bool = False         # model in bfloat16 autocast (CPU AMX), losses in float32
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


# -- distributed helpers ----------------------------------------------------------------------
def check_ranks_in_sync(module: nn.Module, world: int, rank: int, what: str) -> None:
    """Data parallelism keeps every rank's weights identical (each rank sees other batches,
    the gradients are averaged). Compares a checksum of the weights across ranks at the end
    of a stage and stops with an error if they diverged (e.g. gradients not synchronised)."""
    if world <= 1:
        return
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.parameters():
        total[0] += p.detach().double().sum().cpu()
        total[1] += p.detach().double().square().sum().cpu()
    lo, hi = total.clone(), total.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"{what}: data-parallel ranks ended with different weights "
                           f"(checksums {lo.tolist()} .. {hi.tolist()})")
    if rank == 0:
        print(f"{what}: {world} ranks in sync (weights checksum {total[0].item():.6f})")


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


class CsvLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint (they will be logged again), so
        a killed-and-resumed run's log reads like an uninterrupted one."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
        atomic_write_bytes(self.path, "".join(keep).encode())

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        if not new:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if set(row) - set(header):  # columns added (a newer trainer resumed the run)
                with open(self.path, newline="") as f:
                    old = list(csv.DictReader(f))
                fields = header + [k for k in row if k not in header]
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=fields, restval="")
                w.writeheader()
                w.writerows(old)
                atomic_write_bytes(self.path, buf.getvalue().encode())
                header = fields
            row = {k: row.get(k, "") for k in header}
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


class AutoencoderPart(nn.Module):
    """Just the parts stage 0 trains (so DDP sees no unused parameters)."""

    def __init__(self, model: F3Model):
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = model.encoder, model.bottleneck, model.decoder
        self.delay = model.cfg.autoencoder.decoder_delay

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform in, reconstruction out (float32, aligned with the input)."""
        b = wav.shape[0]
        z = self.bottleneck(self.encoder.step(wav, self.encoder.init_state(b, wav.device))[0])
        y, state = self.decoder.step(z, self.decoder.init_state(b, wav.device))
        return torch.cat([y, self.decoder.tail(state)], dim=-1)[:, self.delay:]


def load_sources(cfg: TrainConfig, stage: StageConfig, with_text: bool = False):
    from .data.manifest import read_manifest

    sr = cfg.model.autoencoder.sample_rate
    seg = int(stage.segment_seconds * sr)
    seg -= seg % cfg.model.autoencoder.hop_length
    train = read_manifest(cfg.manifest, split="train")
    val = read_manifest(cfg.manifest, split="val")
    return (SegmentSource([c.path for c in train], sr, seg, cfg.seed, cfg.gain_db, cfg.augment),
            SegmentSource([c.path for c in val], sr, seg, cfg.seed + 1), train, val)


def load_stage0_sources(cfg: TrainConfig, stage: StageConfig):
    """(train, val) segment sources for stage 0: the packed corpus when the config names one
    (band limits per segment), else the manifest's files decoded into memory."""
    if not cfg.packed:
        train_src, val_src, _, _ = load_sources(cfg, stage)
        return train_src, val_src
    from .data.pack import PackedCorpus

    sr = cfg.model.autoencoder.sample_rate
    seg = int(stage.segment_seconds * sr)
    seg -= seg % cfg.model.autoencoder.hop_length
    corpus = PackedCorpus.open(cfg.packed)
    if corpus.sample_rate != sr:
        raise ValueError(f"{cfg.packed} is packed at {corpus.sample_rate} Hz, the model runs "
                         f"at {sr} Hz")
    return (PackedSegmentSource(corpus, "train", seg, cfg.seed, cfg.source_weights, cfg.level,
                                cfg.augment),
            PackedSegmentSource(corpus, "val", seg, cfg.seed + 1, cfg.source_weights,
                                LevelAugmentation(level_dbfs=(-26.0, -26.0))))


def noise_gamma_at(step: int, stage: StageConfig, final: float) -> float:
    if stage.noise_ramp_steps <= 0:
        return final
    t = min(1.0, step / stage.noise_ramp_steps)
    return stage.noise_gamma_start + t * (final - stage.noise_gamma_start)


def _batch(src, step: int, batch_size: int, rank: int):
    if isinstance(src, PackedSegmentSource):
        return src.batch_with_band(step, batch_size, rank)
    return src.batch(step, batch_size, rank), None


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * model``, with ``d`` warming up as ``(1 + s) / (10 + s)`` so
    the average does not drag the random initialisation along."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - d)


def export(model: F3Model, out: Path, info: dict[str, Any]) -> None:
    save_checkpoint(model, model.cfg, out / "export", info=info)


def train_autoencoder(cfg: TrainConfig, out: Path, resume: bool, max_steps: int | None = None
                      ) -> F3Model:
    """Stage 0. ``max_steps`` stops early (as if killed) for tests of ``--resume``."""
    stage = cfg.autoencoder
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    model = F3Model(cfg.model).to(device)
    ae = AutoencoderPart(model).to(device)
    net = nn.parallel.DistributedDataParallel(ae) if world > 1 else ae
    opt_g = torch.optim.AdamW(ae.parameters(), lr=stage.lr, betas=stage.betas,
                              weight_decay=stage.weight_decay)
    modules: dict[str, nn.Module] = {"model": model}
    optimizers: dict[str, torch.optim.Optimizer] = {"generator": opt_g}
    use_disc = stage.adversarial_weight > 0
    if use_disc:
        disc = MultiResolutionDiscriminator().to(device)
        disc_net = nn.parallel.DistributedDataParallel(disc) if world > 1 else disc
        opt_d = torch.optim.AdamW(disc.parameters(), lr=stage.lr, betas=stage.betas)
        modules["discriminator"], optimizers["discriminator"] = disc, opt_d
    ema = None
    if stage.ema_decay > 0:
        ema = F3Model(cfg.model).to(device)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        modules["ema"] = ema
    stage_dir = out / "autoencoder"
    start = 0
    if resume and (ck := latest_checkpoint(stage_dir)) is not None:
        start = load_training_state(ck, modules, optimizers)["step"]
        if rank == 0:
            print(f"resumed from {ck} at step {start}")
    train_src, val_src = load_stage0_sources(cfg, stage)
    val_batches = [b.to(device) for b in val_src.fixed_batches(4, stage.batch_size)]
    final_gamma = cfg.model.autoencoder.noise_gamma
    logmel = LogMel(cfg.model.autoencoder.sample_rate).to(device)
    log = CsvLog(stage_dir / "log.csv", rank == 0)
    log.truncate_after(start)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        print(f"stage 0: {sum(p.numel() for p in ae.parameters()) / 1e6:.2f} M parameters, "
              f"{train_src.seconds / 3600:.2f} h of training audio, device {device}, "
              f"world size {world}")

    def recon_losses(y, x, band=None):
        mr, cx, mags = spectral_losses(y, x, band, cfg.model.autoencoder.sample_rate,
                                       with_complex=stage.complex_weight > 0)
        be = band_energy_loss(*mags[BAND_RESOLUTION], band,
                              cfg.model.autoencoder.sample_rate)
        return mr, logmel.loss(y, x, band, mags), cx, be

    end = stage.steps if max_steps is None else min(stage.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=stage.steps, desc="autoencoder",
               disable=rank != 0 or not sys.stderr.isatty() and os.environ.get("CI") == "true")
    t0 = time.time()
    for step in bar:
        lr = lr_at(step, stage)
        for opt in optimizers.values():
            for g in opt.param_groups:
                g["lr"] = lr
        x, band = _batch(train_src, step, stage.batch_size, rank)
        x = x.to(device)
        band = band.to(device) if band is not None else None
        ae.bottleneck.noise_gamma = noise_gamma_at(step, stage, final_gamma)
        ae.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage.autocast_bf16):
            y = net(x)
        y = y.float()
        mr, mel, cx, be = recon_losses(y, x, band)
        loss = (stage.mrstft_weight * mr + stage.mel_weight * mel
                + stage.complex_weight * cx + stage.band_weight * be)
        adv = fm = d_loss = torch.zeros((), device=device)
        if use_disc and step >= stage.discriminator_start:
            d_loss = discriminator_loss(disc_net(x), disc_net(y.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            adv, fm = generator_adversarial_losses(disc_net(x), disc_net(y))
            loss = loss + stage.adversarial_weight * adv + stage.feature_matching_weight * fm
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        grad = nn.utils.clip_grad_norm_(ae.parameters(), stage.grad_clip)
        opt_g.step()
        if ema is not None:
            update_ema(ema, model, stage.ema_decay, step)
        done = step + 1
        if done % stage.log_every == 0 or done == end:
            row = {"step": done, "loss": f"{loss.item():.5f}", "mrstft": f"{mr.item():.5f}",
                   "mel": f"{mel.item():.5f}", "complex": f"{cx.item():.5f}", "adv": f"{adv.item():.5f}",
                   "fm": f"{fm.item():.5f}", "disc": f"{d_loss.item():.5f}",
                   "grad_norm": f"{grad.item():.4f}", "lr": f"{lr:.3e}",
                   "sec_per_step": f"{(time.time() - t0) / max(1, done - start):.3f}",
                   "val_mel": "", "band": f"{be.item():.5f}"}
            if done % stage.eval_every == 0 or done == stage.steps:
                ae.eval()
                with torch.no_grad():
                    row["val_mel"] = f"{sum(recon_losses(ae(v), v)[1].item() for v in val_batches) / len(val_batches):.5f}"
            log.write(row)
            bar.set_postfix(mel=row["mel"], val_mel=row["val_mel"] or "-")
        if rank == 0 and (done % stage.checkpoint_every == 0 or done == end):
            save_training_state(stage_dir, done, modules, optimizers, {"stage": "autoencoder"})
            export(ema if ema is not None else model, out,
                   {"trained": True, "stage0_steps": done, "stage1_steps": 0,
                                "seed": cfg.seed})
    check_ranks_in_sync(ae, world, rank, "stage 0")
    return model


def load_stage0(out: Path, cfg: TrainConfig, device: torch.device) -> F3Model:
    model_cfg, state, _ = load_checkpoint(out / "export")
    if model_cfg != cfg.model:
        raise ValueError("the exported stage-0 model's config differs from --config")
    model = F3Model(model_cfg)
    load_state_strict(model, state, str(out / "export"))
    return model.to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["autoencoder", "representation", "all"])
    parser.add_argument("--config", required=True, help="training config JSON")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--manifest", help="override the config's manifest path")
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    if args.manifest:
        cfg.manifest = args.manifest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("autoencoder", "all"):
        train_autoencoder(cfg, out, args.resume)
    if args.stage in ("representation", "all"):
        from .representation_stage import train_representation
        train_representation(cfg, out, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
