"""The phase-advance loss term (and the MR-STFT term) of exported checkpoints on held-out clips.

    python -m training.measure_phase_advance CHECKPOINT... [--per-source 6] --out REPORT.json

Tells whether a run trained with ``phase_advance_weight`` actually lowered the term on voices
it never saw, beside what it did to the magnitudes (``training.losses``)."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np


def measure(checkpoints: list[str], manifest: str, split: str, per_source: int,
            seed: int = 0) -> dict:
    import torch

    from f3stream.audio import load_audio
    from f3stream.tokenizer import Tokenizer

    from .diagnose_decoder import clips_per_source
    from .losses import phase_advance_loss, spectral_losses

    chosen, count = clips_per_source(manifest, split, per_source, seed)
    out = {}
    for ck in checkpoints:
        tok = Tokenizer.load(ck)
        pa, mr = [], []
        for clip in chosen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wav, _ = load_audio(clip.path, tok.sample_rate)
                z = tok.tokenize(wav, representations=False).latents
            y = torch.from_numpy(tok.decode(z)[:wav.size].astype(np.float32))[None]
            x = torch.from_numpy(wav)[None]
            with torch.no_grad():
                pa.append(phase_advance_loss(y, x, None, tok.sample_rate).item())
                mr.append(spectral_losses(y, x, None, tok.sample_rate, with_complex=False)[0].item())
        out[ck] = {"phase_advance": round(float(np.mean(pa)), 4),
                   "mrstft": round(float(np.mean(mr)), 4)}
    return {"manifest": manifest, "split": split, "clips": len(chosen), "per_source": count,
            "mean": out}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report
    from .diagnose_decoder import add_clip_arguments

    p = argparse.ArgumentParser(prog="python -m training.measure_phase_advance",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="exported checkpoint directories")
    add_clip_arguments(p, per_source=6)
    a = p.parse_args(argv)
    if a.checkpoint is not None:
        p.error("name the checkpoints as positional arguments")
    report = measure(a.checkpoints, a.manifest, a.split, a.per_source, a.seed)
    report["command"] = "python -m training.measure_phase_advance " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
