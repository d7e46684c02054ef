"""What a harmonic-source run's decoder does with its harmonics: the size of its gains |g| in
voiced and unvoiced frames (YIN on the input), below 1 kHz and at 1-4 kHz, and how often its
pitch head is within 5 % of the measured pitch, on the first fixed validation batch, with the
live (not averaged) weights of each run's latest training checkpoint.

    python -m training.harmonic_gains --config CONFIG RUN... [--out REPORT.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def gains(run: Path, cfg) -> dict:
    import torch

    from f3stream.model import F3Model
    from f3stream.streaming import substate

    from .checkpointing import latest_checkpoint, load_training_state
    from .pitch import yin_pitch
    from .train import AutoencoderPart, load_stage0_sources

    ae_cfg = cfg.model.autoencoder
    model = F3Model(cfg.model)
    ck = latest_checkpoint(run / "autoencoder")
    if ck is None:
        raise SystemExit(f"no stage-0 checkpoint under {run}")
    meta = load_training_state(ck, {"model": model}, {})
    _, val = load_stage0_sources(cfg, cfg.autoencoder)
    x = val.fixed_batches(1, cfg.autoencoder.batch_size)[0]
    d, b = model.decoder, x.shape[0]
    with torch.no_grad():
        ae = AutoencoderPart(model).eval()
        z = ae.bottleneck(ae.encoder.step(x, ae.encoder.init_state(b))[0])
        state = d.init_state(b)
        h, _ = d.transformer.step(d.input_proj(z), substate(state, "transformer"))
        h = d.ungroup_proj(h).reshape(b, z.shape[1] * ae_cfg.stft_frames_per_latent, -1)
        h, _ = d.convs.step(h, substate(state, "convs"))
        g = d.harmonic_proj(d.out_norm(h))
        n_bins = g.shape[-1] // 2
        mag = (g[..., :n_bins] ** 2 + g[..., n_bins:] ** 2).sqrt()
        target, voiced = yin_pitch(x, ae_cfg.sample_rate, ae_cfg.stft_hop, h.shape[1])
        err = (torch.log2(d.pitch(z)[voiced] / target[voiced])).abs()
    hz_per_bin = ae_cfg.sample_rate / ae_cfg.n_fft
    low, mid = int(1000 / hz_per_bin), int(4000 / hz_per_bin)
    return {"run": str(run), "step": meta["step"],
            "gain_voiced": round(float(mag[voiced].mean()), 3),
            "gain_unvoiced": round(float(mag[~voiced].mean()), 3),
            "gain_below_1khz_voiced": round(float(mag[voiced][:, :low].mean()), 3),
            "gain_below_1khz_unvoiced": round(float(mag[~voiced][:, :low].mean()), 3),
            "gain_1_4khz_voiced": round(float(mag[voiced][:, low:mid].mean()), 3),
            "pitch_head_within_5_percent": round(float((err < 0.07).float().mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report
    from .config import TrainConfig

    p = argparse.ArgumentParser(prog="python -m training.harmonic_gains", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (with a harmonic source)")
    p.add_argument("--config", required=True, help="the runs' training config (data, model)")
    p.add_argument("--out", help="write the report (JSON) here too")
    a = p.parse_args(argv)
    cfg = TrainConfig.load(a.config)
    if not cfg.model.autoencoder.harmonic_source:
        raise SystemExit(f"{a.config} has no harmonic source")
    report = {"runs": [gains(Path(r), cfg) for r in a.runs],
              "command": "python -m training.harmonic_gains " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
