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
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from f3stream.alignment import align_decoded
from f3stream.model import F3Model

from .checkpointing import latest_checkpoint, load_training_state, save_training_state
from .common import CsvLog, adamw, check_ranks_in_sync, export, lr_at, setup_distributed
from .config import StageConfig, TrainConfig
from .discriminators import (aligned_crops, build_discriminator, discriminator_loss,
                             generator_adversarial_losses, same_gain_to_reference)
from .losses import (BAND_RESOLUTION, FINE_BAND_RESOLUTION, THIRD_OCTAVE_EDGES_HZ, LogMel,
                     band_energy_loss, level_loss, phase_advance_loss, spectral_losses)
from .pitch import pitch_loss, yin_pitch
from .representation_stage import train_representation
from .segments import LevelAugmentation, PackedSegmentSource, SegmentSource



class AutoencoderPart(nn.Module):
    """Just the parts stage 0 trains (so DDP sees no unused parameters)."""

    def __init__(self, model: F3Model):
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = model.encoder, model.bottleneck, model.decoder
        self.delay = model.cfg.autoencoder.decoder_delay
        self.encoder_frozen = False

    def freeze_encoder(self) -> None:
        """Train the decoder alone: the encoder gets no gradients (AdamW skips parameters
        without one, weight decay included) and runs without building a backward graph."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)

    def forward(self, wav: torch.Tensor, with_f0: bool = False,
                oscillator_f0: torch.Tensor | None = None):
        """Waveform in, reconstruction out (float32, aligned with the input); with ``with_f0``
        also the decoder's f0 per STFT frame (None without a harmonic source).
        ``oscillator_f0``: a measured pitch that drives the harmonic source where it is > 0
        (teacher forcing, see ``StageConfig.pitch_teacher_forcing``)."""
        b = wav.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            z = self.encoder.step(wav, self.encoder.init_state(b, wav.device))[0]
        z = self.bottleneck(z)
        y, f0, state = self.decoder.step_with_f0(z, self.decoder.init_state(b, wav.device),
                                                 oscillator_f0)
        y = align_decoded(y, self.decoder.tail(state), self.delay)
        return (y, f0) if with_f0 else y


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


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``start + i``: a DataLoader's workers then prepare the
    coming steps' batches in parallel, identical to those made in the loop."""

    def __init__(self, src, start: int, end: int, batch_size: int, rank: int):
        self.src, self.start, self.end = src, start, end
        self.batch_size, self.rank = batch_size, rank

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, i: int):
        return _batch(self.src, self.start + i, self.batch_size, self.rank)


def step_batches(src, start: int, end: int, batch_size: int, rank: int, workers: int,
                 pin_memory: bool = False):
    """The batches of steps ``start .. end - 1`` in order: made in the loop (``workers`` 0)
    or ahead of it by ``workers`` processes. If the workers fail (a machine with too little
    shared memory, say), the rest are made in the loop: same batches, only slower."""
    step = start
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            StepBatches(src, start, end, batch_size, rank), batch_size=None, shuffle=False,
            num_workers=workers, prefetch_factor=2, pin_memory=pin_memory)
        try:
            for item in loader:
                yield item
                step += 1
        except RuntimeError as e:
            print(f"batch workers failed at step {step} ({e}); making the batches in the "
                  "training loop from here", file=sys.stderr)
    for s in range(step, end):
        yield _batch(src, s, batch_size, rank)


def _out_of_time(mine: bool, world: int, device: torch.device) -> bool:
    """Whether any rank's time budget is spent (all ranks must stop at the same step)."""
    if world == 1:
        return mine
    import torch.distributed as dist

    flag = torch.tensor([float(mine)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * model``, with ``d`` warming up as ``(1 + s) / (10 + s)`` so
    the average does not drag the random initialisation along."""
    d = min(decay, (1 + step) / (10 + step))
    # one fused pass over all tensors (the per-tensor loop cost twice as much)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()],
                         1.0 - d)



def train_autoencoder(cfg: TrainConfig, out: Path, resume: bool, max_steps: int | None = None,
                      rewarm: bool = False, max_seconds: float | None = None) -> F3Model:
    """Stage 0. ``max_steps`` stops early (as if killed) for tests of ``--resume``. ``rewarm``
    (with ``resume``): the config's schedule changed (e.g. more ``steps``), so the rate ramps up
    from the resumed step over ``warmup_steps`` instead of jumping to the new schedule's value.
    ``max_seconds``: stop after the first step that ends past this much training time (the
    set-up not counted), checkpoint and export written: a lent GPU's minutes are a fixed
    budget (``training.gpu_burst``)."""
    stage = cfg.autoencoder
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    model = F3Model(cfg.model).to(device)
    ae = AutoencoderPart(model).to(device)
    if stage.freeze_encoder:
        ae.freeze_encoder()
    net = nn.parallel.DistributedDataParallel(ae) if world > 1 else ae
    opt_g = adamw(ae.parameters(), lr=stage.lr, betas=stage.betas,
                  weight_decay=stage.weight_decay)
    modules: dict[str, nn.Module] = {"model": model}
    optimizers: dict[str, torch.optim.Optimizer] = {"generator": opt_g}
    use_disc = stage.adversarial_weight > 0
    if use_disc:
        disc = build_discriminator(stage.discriminator, stage.discriminator_channels).to(device)
        disc_net = nn.parallel.DistributedDataParallel(disc) if world > 1 else disc
        opt_d = adamw(disc.parameters(), lr=stage.discriminator_lr or stage.lr,
                      betas=stage.betas)
        modules["discriminator"], optimizers["discriminator"] = disc, opt_d
    ema = None
    if stage.ema_decay > 0:
        ema = F3Model(cfg.model).to(device)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        modules["ema"] = ema
    stage_dir = out / "autoencoder"
    start = 0
    extra: dict = {"stage": "autoencoder"}
    if resume and (ck := latest_checkpoint(stage_dir)) is not None:
        meta = load_training_state(ck, modules, optimizers)
        start = meta["step"]
        if "rewarm_from" in meta.get("extra", {}):
            extra["rewarm_from"] = meta["extra"]["rewarm_from"]
        if rewarm:
            extra["rewarm_from"] = start
        if rank == 0:
            print(f"resumed from {ck} at step {start}"
                  + (f" ({', '.join(meta['fresh'])}: not in the checkpoint, starting fresh)"
                     if meta["fresh"] else ""))
    if stage.freeze_encoder and ema is not None:
        # the exported (averaged) encoder is the one the tokenizer ships: train the decoder on
        # its latents; the average of unchanging weights then stays exactly those weights
        model.encoder.load_state_dict(ema.encoder.state_dict())
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
        lv = level_loss(*mags[BAND_RESOLUTION], band, cfg.model.autoencoder.sample_rate)
        fb = (band_energy_loss(*mags[FINE_BAND_RESOLUTION], band,
                               cfg.model.autoencoder.sample_rate, THIRD_OCTAVE_EDGES_HZ)
              if stage.fine_band_weight else y.new_zeros(()))
        pa = (phase_advance_loss(y, x, band, cfg.model.autoencoder.sample_rate)
              if stage.phase_advance_weight else y.new_zeros(()))
        return mr, logmel.loss(y, x, band, mags), cx, be, lv, fb, pa

    harmonic = cfg.model.autoencoder.harmonic_source
    end = stage.steps if max_steps is None else min(stage.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=stage.steps, desc="autoencoder",
               disable=rank != 0 or not sys.stderr.isatty() and os.environ.get("CI") == "true")
    batches = step_batches(train_src, start, end, stage.batch_size, rank, stage.loader_workers,
                           pin_memory=device.type == "cuda")
    t0 = time.time()
    for step in bar:
        lr = lr_at(step, stage, extra.get("rewarm_from"))
        for name, opt in optimizers.items():
            scale = (stage.discriminator_lr / stage.lr
                     if name == "discriminator" and stage.discriminator_lr else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr * scale
        x, band = next(batches)
        x = x.to(device, non_blocking=True)
        band = band.to(device, non_blocking=True) if band is not None else None
        ae.bottleneck.noise_gamma = noise_gamma_at(step, stage, final_gamma)
        ae.train()
        target = voiced = forced = None
        if harmonic:
            target, voiced = yin_pitch(x, cfg.model.autoencoder.sample_rate,
                                       cfg.model.autoencoder.stft_hop,
                                       x.shape[1] // cfg.model.autoencoder.stft_hop)
            if stage.pitch_teacher_forcing > 0:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                items = torch.rand(x.shape[0], 1, generator=g) < stage.pitch_teacher_forcing
                forced = torch.where(items.to(device), target, torch.zeros_like(target))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage.autocast_bf16):
            y, f0 = net(x, with_f0=True, oscillator_f0=forced)
        y = y.float()
        mr, mel, cx, be, lv, fb, pa = recon_losses(y, x, band)
        loss = (stage.mrstft_weight * mr + stage.mel_weight * mel
                + stage.complex_weight * cx + stage.band_weight * be + stage.level_weight * lv
                + stage.fine_band_weight * fb + stage.phase_advance_weight * pa)
        pl = torch.zeros((), device=device)
        if f0 is not None:
            pl = pitch_loss(f0, target, voiced)
            loss = loss + stage.pitch_weight * pl
        adv = fm = d_loss = torch.zeros((), device=device)
        if use_disc and step >= stage.discriminator_start:
            xc, yc = same_gain_to_reference(*aligned_crops(
                x, y, int(stage.discriminator_crop_seconds * cfg.model.autoencoder.sample_rate)))
            d_loss = discriminator_loss(disc_net(xc), disc_net(yc.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            adv, fm = generator_adversarial_losses(disc_net(xc), disc_net(yc))
            loss = loss + stage.adversarial_weight * adv + stage.feature_matching_weight * fm
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        grad = nn.utils.clip_grad_norm_(ae.parameters(), stage.grad_clip)
        opt_g.step()
        if ema is not None:
            update_ema(ema, model, stage.ema_decay, step)
        done = step + 1
        if max_seconds is not None and _out_of_time(time.time() - t0 > max_seconds, world,
                                                     device):
            end = done
        if done % stage.log_every == 0 or done == end:
            row = {"step": done, "loss": f"{loss.item():.5f}", "mrstft": f"{mr.item():.5f}",
                   "mel": f"{mel.item():.5f}", "complex": f"{cx.item():.5f}", "adv": f"{adv.item():.5f}",
                   "fm": f"{fm.item():.5f}", "disc": f"{d_loss.item():.5f}",
                   "grad_norm": f"{grad.item():.4f}", "lr": f"{lr:.3e}",
                   "sec_per_step": f"{(time.time() - t0) / max(1, done - start):.3f}",
                   "val_mel": "", "band": f"{be.item():.5f}", "level": f"{lv.item():.5f}"}
            if f0 is not None:
                row["pitch"] = f"{pl.item():.5f}"
            if stage.fine_band_weight:
                row["fine_band"] = f"{fb.item():.5f}"
            if stage.phase_advance_weight:
                row["phase_advance"] = f"{pa.item():.5f}"
            if done % stage.eval_every == 0 or done == stage.steps:
                ae.eval()
                with torch.no_grad():
                    row["val_mel"] = f"{sum(recon_losses(ae(v), v)[1].item() for v in val_batches) / len(val_batches):.5f}"
            log.write(row)
            bar.set_postfix(mel=row["mel"], val_mel=row["val_mel"] or "-")
        if rank == 0 and (done % stage.checkpoint_every == 0 or done == end):
            save_training_state(stage_dir, done, modules, optimizers, extra)
            export(ema if ema is not None else model, out,
                   {"trained": True, "stage0_steps": done, "stage1_steps": 0,
                                "seed": cfg.seed})
        if done == end:
            break
    check_ranks_in_sync(ae, world, rank, "stage 0")
    return model



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["autoencoder", "representation", "all"])
    parser.add_argument("--config", required=True, help="training config JSON")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--manifest", help="override the config's manifest path")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="stage 0: stop after this step, checkpoint and export written "
                             "(the bundled checkpoint's chain of runs stops each one so)")
    parser.add_argument("--rewarm", action="store_true",
                        help="stage 0, with --resume: the config's schedule changed (e.g. more "
                             "steps); ramp the learning rate up from the resumed step over "
                             "warmup_steps instead of jumping to the new schedule's rate")
    parser.add_argument("--max-minutes", type=float, metavar="MIN",
                        help="stage 0: stop once this much training time has passed, "
                             "checkpoint and export written (e.g. a lent GPU's minutes)")
    args = parser.parse_args(argv)
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.rewarm and not args.resume:
        parser.error("--rewarm continues a run: it needs --resume")
    if args.stop_at is not None and args.stop_at < 1:
        parser.error(f"--stop-at must be a step >= 1, got {args.stop_at}")
    cfg = TrainConfig.load(args.config)
    if args.manifest:
        cfg.manifest = args.manifest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("autoencoder", "all"):
        train_autoencoder(cfg, out, args.resume, max_steps=args.stop_at, rewarm=args.rewarm,
                          max_seconds=None if args.max_minutes is None
                          else 60.0 * args.max_minutes)
    if args.stage in ("representation", "all"):
        train_representation(cfg, out, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
