"""Grow a stage-0 training checkpoint into a model with more decoder ConvNeXt blocks, more
transformer layers in the encoder or the decoder, and/or a harmonic source
(``harmonic_source``: the decoder's pitch head and harmonic gains).

Why: the decoder's 100 Hz stage (``conv_channels`` wide) is the cheap part of a step (the
losses and the 25 Hz transformers cost far more), so depth there buys capacity for little
time. The 25 Hz transformers see 40 frames of a 1.6 s training segment, so a layer there
costs little time too. New blocks and layers are appended after the trained ones with their
residual branches at zero (a block's layer scale; a layer's attention and MLP output
projections), so the grown model computes exactly what the old one did; a harmonic source starts as a fresh
decoder's does (its gains at ``AudioDecoder.HARMONIC_GAIN_INIT``: it adds harmonics at once,
because at zero gains it would not learn). Training continues from there; the optimizer keeps
its moments for every old parameter (matched by name, not by position).

    python -m training.grow --from runs/long --config training/configs/NEW.json --out runs/NEW
    python -m training.train autoencoder --config training/configs/NEW.json --out runs/NEW --resume
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from f3stream.model import F3Model

from .checkpointing import latest_checkpoint, load_training_state, save_training_state
from .common import adamw
from .config import TrainConfig
from .train import AutoencoderPart


def _optimizer(ae: AutoencoderPart, cfg: TrainConfig) -> torch.optim.AdamW:
    s = cfg.autoencoder
    return adamw(ae.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)


# what may grow: the config field and the state-dict prefix of its stack's layers
GROWABLE = {"decoder_conv_blocks": "decoder.convs.layers.",
            "encoder_layers": "encoder.transformer.layers.",
            "decoder_layers": "decoder.transformer.layers."}


def _silence_new_layers(model: F3Model, counts: dict[str, tuple[int, int]]) -> None:
    """Zero the residual branches of the appended blocks and layers: identity at first."""
    stacks = {"decoder_conv_blocks": model.decoder.convs,
              "encoder_layers": model.encoder.transformer,
              "decoder_layers": model.decoder.transformer}
    with torch.no_grad():
        for field, (n_old, n_new) in counts.items():
            for i in range(n_old, n_new):
                layer = stacks[field].layers[i]
                if field == "decoder_conv_blocks":
                    layer.gamma.zero_()
                else:
                    for out in (layer.attn.out, layer.mlp[2]):
                        out.weight.zero_()
                        out.bias.zero_()


def grow(src: Path, old_cfg: TrainConfig, new_cfg: TrainConfig, out: Path) -> Path:
    old_ae, new_ae = old_cfg.model.autoencoder, new_cfg.model.autoencoder
    counts = {f: (getattr(old_ae, f), getattr(new_ae, f)) for f in GROWABLE}
    for f, (n_old, n_new) in counts.items():
        if n_new < n_old:
            raise SystemExit(f"cannot shrink {f} from {n_old} to {n_new}")
    if old_ae.harmonic_source and not new_ae.harmonic_source:
        raise SystemExit("cannot remove the harmonic source")
    added_harmonic = new_ae.harmonic_source and not old_ae.harmonic_source
    ck = latest_checkpoint(src / "autoencoder")
    if ck is None:
        raise SystemExit(f"no stage-0 checkpoint under {src}/autoencoder")
    old = F3Model(old_cfg.model)
    old_ema = F3Model(old_cfg.model)
    old_opt = _optimizer(AutoencoderPart(old), old_cfg)
    meta = load_training_state(ck, {"model": old, "ema": old_ema}, {"generator": old_opt})
    new, new_ema = F3Model(new_cfg.model), F3Model(new_cfg.model)
    for dst, srcm in ((new, old), (new_ema, old_ema)):
        missing, unexpected = dst.load_state_dict(srcm.state_dict(), strict=False)
        grown = {k for k in missing
                 if any(k.startswith(prefix) and int(k[len(prefix):].split(".")[0])
                        >= counts[f][0] for f, prefix in GROWABLE.items())
                 or (added_harmonic and k.startswith(("decoder.pitch.",
                                                      "decoder.harmonic_proj.")))}
        if set(missing) - grown or unexpected:
            raise SystemExit(f"checkpoint does not match: missing {sorted(set(missing) - grown)}"
                             f", unexpected {sorted(unexpected)}")
        _silence_new_layers(dst, counts)
    old_part, new_part = AutoencoderPart(old), AutoencoderPart(new)
    new_opt = _optimizer(new_part, new_cfg)
    by_name = {n: old_opt.state[p] for n, p in old_part.named_parameters() if p in old_opt.state}
    for n, p in new_part.named_parameters():
        if n in by_name:
            new_opt.state[p] = {k: v.clone() if torch.is_tensor(v) else v
                                for k, v in by_name[n].items()}
    extra = dict(meta.get("extra", {}), grown_from=str(ck),
                 **{f: list(c) for f, c in counts.items()},
                 harmonic_source=[old_ae.harmonic_source, new_ae.harmonic_source])
    return save_training_state(out / "autoencoder", meta["step"],
                               {"model": new, "ema": new_ema}, {"generator": new_opt}, extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.grow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="src", required=True, help="run directory to grow from")
    p.add_argument("--from-config", help="the source run's training config "
                   "(default: training/configs/real_cpu.json)",
                   default="training/configs/real_cpu.json")
    p.add_argument("--config", required=True, help="the grown run's training config")
    p.add_argument("--out", required=True, help="new run directory")
    a = p.parse_args(argv)
    path = grow(Path(a.src), TrainConfig.load(a.from_config), TrainConfig.load(a.config),
                Path(a.out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
