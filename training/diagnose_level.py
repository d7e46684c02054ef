"""Why reconstructions come back quieter than the input: which training loss term wants it.

    python -m training.diagnose_level --checkpoint DIR --manifest data/real/manifest.jsonl \\
        --split test --per-source 4 --out docs/diagnose/level-NAME.json

Each held-out clip is brought to several input levels (RMS dBFS) and reconstructed. Then
the reconstruction is scaled by a gain ``g`` (a sweep in dB) and every stage-0 loss term is
evaluated on ``(g * y, x)``. The gain at which a term is smallest is the level that term pulls
the decoder towards, from where it stands now:

* 0 dB: the term is satisfied with the level as it is;
* above 0 dB: the term pushes the output louder;
* below 0 dB: the term pushes it quieter still.

When the weighted total's best gain is near 0 dB while the output is several dB too quiet,
the loss itself holds the level down, not a lack of training; the per-term columns say which.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

INPUT_LEVELS_DBFS = (-45.0, -35.0, -26.0, -18.0, -10.0)
GAIN_SWEEP_DB = tuple(float(g) for g in np.arange(-20.0, 12.01, 0.5))


def loss_terms(y, x, sample_rate: int, weights: dict[str, float], logmel) -> dict[str, float]:
    """Every stage-0 reconstruction term on ``(y, x)`` (``[1, N]`` tensors), and their
    weighted sum under ``weights`` (the stage's ``*_weight`` values)."""
    from .losses import BAND_RESOLUTION, band_energy_loss, level_loss, spectral_losses

    mr, cx, mags = spectral_losses(y, x, None, sample_rate)
    terms = {"mrstft": mr.item(), "mel": logmel.loss(y, x, None, mags).item(),
             "complex": cx.item(),
             "band": band_energy_loss(*mags[BAND_RESOLUTION], None, sample_rate).item(),
             "level": level_loss(*mags[BAND_RESOLUTION], None, sample_rate).item()}
    terms["total"] = sum(weights.get(k, 0.0) * v for k, v in terms.items())
    return terms


def best_gains(y, x, sample_rate: int, weights: dict[str, float], logmel) -> dict[str, float]:
    """For each term, the gain (dB) in :data:`GAIN_SWEEP_DB` at which it is smallest."""
    table = [loss_terms(y * 10 ** (g / 20), x, sample_rate, weights, logmel)
             for g in GAIN_SWEEP_DB]
    return {k: GAIN_SWEEP_DB[int(np.argmin([row[k] for row in table]))] for k in table[0]}


def rms_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def diagnose(checkpoint: str | None, manifest: str, split: str, per_source: int,
             weights: dict[str, float], seed: int = 0) -> dict:
    import torch

    from f3stream.audio import load_audio
    from f3stream.tokenizer import Tokenizer

    from .diagnose_decoder import clips_per_source
    from .losses import LogMel

    tok = Tokenizer.load(checkpoint)
    sr = tok.sample_rate
    logmel = LogMel(sr)
    chosen, count = clips_per_source(manifest, split, per_source, seed)
    rows: dict[float, list[dict]] = {lvl: [] for lvl in INPUT_LEVELS_DBFS}
    for clip in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(clip.path, sr)
        for lvl in INPUT_LEVELS_DBFS:
            x = (wav * 10 ** ((lvl - rms_dbfs(wav)) / 20)).astype(np.float32)
            rec = tok.decode(tok.tokenize(x, representations=False).latents)[:x.size]
            with torch.no_grad():
                best = best_gains(torch.from_numpy(rec.astype(np.float32))[None],
                                  torch.from_numpy(x)[None], sr, weights, logmel)
            rows[lvl].append({"level_change_db": rms_dbfs(rec) - rms_dbfs(x),
                              **{f"best_gain_db_{k}": v for k, v in best.items()}})
    summary = {}
    for lvl, got in rows.items():
        summary[f"{lvl:g}"] = {k: round(float(np.median([r[k] for r in got])), 2)
                               for k in got[0]}
    return {"checkpoint": checkpoint or "bundled", "manifest": manifest, "split": split,
            "clips": len(chosen), "per_source": count, "weights": weights,
            "gain_sweep_db": [GAIN_SWEEP_DB[0], GAIN_SWEEP_DB[-1], 0.5],
            "median_by_input_level_dbfs": summary}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report
    from .diagnose_decoder import add_clip_arguments

    p = argparse.ArgumentParser(prog="python -m training.diagnose_level", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(p, per_source=4)
    p.add_argument("--weights", default="mrstft=1,mel=1,complex=0.5,band=4,level=0",
                   help="loss weights as name=value,... (default: the real_cpu configs' "
                        "before the level term)")
    a = p.parse_args(argv)
    try:
        weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(","))}
    except ValueError:
        p.error(f"--weights must look like mrstft=1,mel=1,complex=0.5,band=4, got {a.weights!r}")
    unknown = weights.keys() - {"mrstft", "mel", "complex", "band", "level"}
    if unknown:
        p.error(f"--weights: unknown term {', '.join(sorted(unknown))} "
                "(terms: mrstft, mel, complex, band, level)")
    report = diagnose(a.checkpoint, a.manifest, a.split, a.per_source, weights, a.seed)
    report["command"] = "python -m training.diagnose_level " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
