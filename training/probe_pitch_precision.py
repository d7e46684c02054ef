"""Is the YIN pitch that drives the harmonic source in training precise enough for the upper
harmonics?

    python -m training.probe_pitch_precision --per-source 6 --out docs/diagnose/NAME.json

Why ask: the decoder's harmonic source is switched off above ~1 kHz (``training.harmonic_gains``),
and its oscillator runs at YIN's pitch in training (teacher forcing). A harmonic ``k`` is off
by ``k`` times the pitch error, so at 3 kHz a 1 % error moves a 100 Hz voice's harmonic by a
third of the spacing: if YIN were that far off, the excitation could not match the voice's
upper harmonics and the decoder would be right to mute them. Two measurements:

* **Synthetic voices with a known pitch** (harmonic series, vibrato up to +-10 % at 1-4 Hz,
  noise): YIN's error against the true pitch at each 10 ms frame centre, in percent.
* **Held-out real voices, cross-band.** YIN's pitch refined by a harmonic-comb search
  (+-3 % in 0.05 % steps) on one band, and the harmonic contrast (power at ``k f0`` over
  power half-way between, dB) scored on *another* band with YIN's and with the refined pitch.
  A refinement that fits noise raises the contrast on the band it searched and not on the
  other; a real correction raises both.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

SAMPLE_RATE = 24000
HOP = 240
N_FFT = 1024
ZERO_PAD = 8
SEARCH = 1 + np.linspace(-0.03, 0.03, 121)
BAND_PAIRS = (((500, 2000), (2000, 4000)), ((2000, 4000), (500, 2000)))


def synthetic_voice(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic series with vibrato and noise, and its true f0 per sample."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 250) * (1 + rng.uniform(0, 0.1)
                                 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
    phase = np.cumsum(f0) / SAMPLE_RATE
    x = np.zeros(n)
    for k in range(1, 80):
        x += np.sin(2 * np.pi * k * phase + rng.uniform(0, 6)) / k * (k * f0 < 11000)
    return x + 0.02 * rng.standard_normal(n), f0


def frame_spectra(x: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log power spectra (Hann, ``N_FFT`` points zero-padded ``ZERO_PAD`` times) centred on
    the 10 ms frames ``frames``, and their bin frequencies."""
    half = N_FFT // 2
    xp = np.pad(x.astype(np.float64), (half, half))
    seg = xp[frames[:, None] * HOP + HOP // 2 + np.arange(N_FFT)] * np.hanning(N_FFT + 1)[:-1]
    power = np.abs(np.fft.rfft(seg, N_FFT * ZERO_PAD, axis=-1)) ** 2
    return np.log(power + 1e-12), np.fft.rfftfreq(N_FFT * ZERO_PAD, 1.0 / SAMPLE_RATE)


def comb_contrast(log_power: np.ndarray, bins: np.ndarray, f0s: np.ndarray, lo: float,
                  hi: float) -> np.ndarray:
    """Mean dB of power at ``k f0`` over power at ``(k + 1/2) f0`` within ``[lo, hi)``, for
    each candidate of ``f0s`` (NaN where no harmonic lies in the band)."""
    k = np.arange(1, 200)
    f = f0s[:, None] * k[None, :]
    ok = (f >= lo) & (f + f0s[:, None] / 2 < hi)
    peaks = np.where(ok, np.interp(f, bins, log_power), 0.0).sum(1)
    valleys = np.where(ok, np.interp(f + f0s[:, None] / 2, bins, log_power), 0.0).sum(1)
    count = ok.sum(1)
    return np.where(count > 0, (peaks - valleys) / np.maximum(count, 1), np.nan) * 10 / np.log(10)


def refine(log_power: np.ndarray, bins: np.ndarray, f0: float, band: tuple[float, float]
           ) -> float:
    """The candidate within +-3 % of ``f0`` whose comb fits ``band`` best."""
    scores = comb_contrast(log_power, bins, f0 * SEARCH, *band)
    return float(f0 * SEARCH[np.nanargmax(scores)]) if np.isfinite(scores).any() else f0


def yin_error_on_synthetic(voices: int, seed: int = 0) -> np.ndarray:
    """|YIN / true - 1| in percent on every voiced frame of ``voices`` synthetic voices."""
    import torch

    from .pitch import yin_pitch

    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(voices):
        x, f0 = synthetic_voice(2.0, rng)
        est, voiced = yin_pitch(torch.from_numpy(x.astype(np.float32))[None], SAMPLE_RATE, HOP)
        centres = np.arange(est.shape[1]) * HOP + HOP // 2
        keep = voiced[0].numpy() & (centres > N_FFT) & (centres < x.size - N_FFT)
        errors.append(np.abs(est[0].numpy()[keep] / f0[centres[keep]] - 1) * 100)
    return np.concatenate(errors)


def cross_band(wav: np.ndarray) -> dict[str, list[tuple[float, float, float]]]:
    """Per band pair: (contrast with YIN, contrast refined, |shift| %) per voiced frame."""
    import torch

    from .pitch import yin_pitch

    f0, voiced = yin_pitch(torch.from_numpy(wav)[None], SAMPLE_RATE, HOP)
    frames = np.flatnonzero(voiced[0].numpy())
    out: dict[str, list] = {}
    if frames.size == 0:
        return out
    logp, bins = frame_spectra(wav, frames)
    for row, f in zip(logp, f0[0].numpy()[frames]):
        for fit, score in BAND_PAIRS:
            g = refine(row, bins, float(f), fit)
            before, after = comb_contrast(row, bins, np.array([f, g]), *score)
            if np.isfinite(before) and np.isfinite(after):
                out.setdefault(f"refined on {fit[0]}-{fit[1]} Hz, scored on {score[0]}-{score[1]} Hz",
                               []).append((float(before), float(after), abs(g / f - 1) * 100))
    return out


def probe(manifest: str, split: str, per_source: int, voices: int, seed: int = 0) -> dict:
    from f3stream.audio import load_audio

    from .diagnose_decoder import clips_per_source

    err = yin_error_on_synthetic(voices, seed)
    chosen, count = clips_per_source(manifest, split, per_source, seed)
    pairs: dict[str, list] = {}
    for clip in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(clip.path, SAMPLE_RATE)
        for key, rows in cross_band(wav).items():
            pairs.setdefault(key, []).extend(rows)
    pct = lambda a, q: round(float(np.percentile(a, q)), 3)  # noqa: E731
    return {"synthetic": {"voices": voices, "frames": int(err.size),
                          "yin_error_percent": {"median": pct(err, 50), "p90": pct(err, 90)}},
            "real": {"manifest": manifest, "split": split, "clips": len(chosen),
                     "per_source": count, **{key: {
                         "frames": len(rows),
                         "contrast_db_yin": round(float(np.mean([r[0] for r in rows])), 2),
                         "contrast_db_refined": round(float(np.mean([r[1] for r in rows])), 2),
                         "shift_percent_median": round(float(np.median([r[2] for r in rows])), 2)}
                         for key, rows in pairs.items()}}}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report

    p = argparse.ArgumentParser(prog="python -m training.probe_pitch_precision",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="data/real/manifest.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--per-source", type=int, default=6)
    p.add_argument("--synthetic-voices", type=int, default=20)
    p.add_argument("--out", help="write the report (JSON) here too")
    a = p.parse_args(argv)
    report = probe(a.manifest, a.split, a.per_source, a.synthetic_voices)
    report["command"] = "python -m training.probe_pitch_precision " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
