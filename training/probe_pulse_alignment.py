"""Do the stage-0 losses prefer noise to harmonics whose pulses come at the wrong time?

    python -m training.probe_pulse_alignment --band 1000 4000 --per-source 6 \\
        --out docs/diagnose/pulse-alignment.json

The decoder's oscillator (``f3stream.harmonic``) runs free: its phase starts at zero with the
stream and nothing in the decoder's network sees it, so the glottal pulses it renders fall at
an arbitrary time within each pitch period of the input's. A per-bin complex gain cannot move
them (a delay is a phase ramp ``2 pi f tau`` that changes with ``tau`` at every frame), and a
magnitude loss at a short STFT window sees the pulses' timing: at 128 points (5 ms) a
voice's pulse train is an amplitude modulation at the pitch rate. This probe asks, on the
input alone (no model), what the losses would say to each answer a decoder could give in a
band on the input-voiced frames (YIN, ``training.pitch``):

* ``half_period_delay``: the input's own band, delayed by half a pitch period per frame
  (the harmonics exact, the pulses in the wrong place: a free-running oscillator's average);
* ``full_period_delay``: delayed by a whole period (the same operation with the pulses in
  place: a control for what the per-frame delay itself costs);
* ``random_phase``: the input's band magnitudes (512-point frames) with random phases: no
  pulses, and the harmonics blurred (from frame to frame the phases do not continue);
* ``oscillator_comb``: the decoder's own oscillator (``f3stream.harmonic``) at YIN's pitch,
  scaled in each third-octave band of the band and each frame to the input's energy there
  (exact harmonics of one pitch under the input's envelope: the best a flat per-band gain on
  the harmonic source could do);
* ``band_noise``: the input's energy in each third-octave band of the band spread evenly over
  its bins, random phases (the envelope without the harmonics: what the decoder renders).

Each is scored with the stage-0 loss terms (each MR-STFT resolution too), STOI, PESQ-WB and
the band's harmonicity (``training.diagnose_decoder``).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from .probe_harmonic_mix import LOSS_WEIGHTS, loss_terms

VARIANTS = ("identity", "half_period_delay", "full_period_delay", "random_phase",
            "oscillator_comb", "band_noise")


def band_variants(wav: np.ndarray, sample_rate: int, band_hz: tuple[float, float],
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``wav`` with its ``band_hz`` bins changed on the voiced frames, one signal per name of
    :data:`VARIANTS` (``identity``: the STFT round trip alone)."""
    import torch

    from f3stream.harmonic import phase_increment, pulse_train

    from .diagnose_decoder import SWAP_HOP, SWAP_N_FFT, _istft, _stft, third_octave_bands
    from .pitch import yin_pitch

    spec = _stft(wav)                                           # [bins, frames], complex128
    n_frames = spec.shape[1]
    f0, voiced = yin_pitch(torch.from_numpy(wav)[None], sample_rate, SWAP_HOP, n_frames)
    f0, voiced = f0[0].double(), voiced[0]
    freqs = torch.arange(spec.shape[0], dtype=torch.float64) * sample_rate / SWAP_N_FFT
    in_band = (freqs >= band_hz[0]) & (freqs < band_hz[1])
    sel = in_band[:, None] & voiced[None, :]                    # [bins, frames]
    period = torch.where(voiced, 1.0 / f0.clamp_min(1.0), torch.zeros_like(f0))
    g = torch.Generator().manual_seed(seed)
    random_phase = torch.exp(1j * 2 * np.pi * torch.rand(spec.shape, generator=g,
                                                          dtype=torch.float64))

    def delayed(periods: float):
        ramp = torch.exp(-1j * 2 * np.pi * freqs[:, None] * periods * period[None, :])
        return torch.where(sel, spec * ramp, spec)

    d = phase_increment(torch.where(voiced, f0, torch.full_like(f0, 100.0)), sample_rate)
    inc = d * SWAP_HOP
    start = torch.remainder(torch.cumsum(inc, 0) - inc, 1 << 32)
    comb = _stft(pulse_train(start, d, SWAP_HOP).reshape(-1)[:wav.size].numpy())
    bands = torch.from_numpy(third_octave_bands(sample_rate, SWAP_N_FFT)).long()
    power, comb_power = spec.abs() ** 2, comb.abs() ** 2
    flat = torch.zeros_like(power)
    comb_gain = torch.zeros_like(power)
    for b in torch.unique(bands[in_band]):
        rows = (bands == b) & in_band
        flat[rows] = power[rows].mean(0, keepdim=True)
        comb_gain[rows] = (power[rows].sum(0, keepdim=True)
                           / comb_power[rows].sum(0, keepdim=True).clamp_min(1e-20)).sqrt()
    out = {"identity": spec,
           "half_period_delay": delayed(0.5),
           "full_period_delay": delayed(1.0),
           "random_phase": torch.where(sel, spec.abs() * random_phase, spec),
           "oscillator_comb": torch.where(sel, comb * comb_gain, spec),
           "band_noise": torch.where(sel, flat.sqrt() * random_phase, spec)}
    return {name: _istft(s, wav.size) for name, s in out.items()}


def probe(manifest: str, split: str, per_source: int, band_hz: tuple[float, float],
          seed: int = 0, sample_rate: int = 24000) -> dict:
    from f3stream.audio import load_audio
    from f3stream.evaluation.metrics import pesq_wb, stoi

    from .diagnose_decoder import band_harmonicity, band_name, clips_per_source

    chosen, count = clips_per_source(manifest, split, per_source, seed)
    rows: dict[str, dict[str, list]] = {}
    for clip in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(clip.path, sample_rate)
        signals = band_variants(wav, sample_rate, band_hz, seed)
        harm = band_harmonicity(signals, wav, sample_rate)
        for name, y in signals.items():
            terms = loss_terms(y, wav, sample_rate, per_resolution=True)
            terms["stoi"], terms["pesq_wb"] = stoi(wav, y, sample_rate), pesq_wb(wav, y, sample_rate)
            for band, per_signal in harm.items():
                if per_signal.get(name):
                    terms[f"harmonicity_db {band}"] = float(np.mean(per_signal[name]))
            for metric, value in terms.items():
                rows.setdefault(name, {}).setdefault(metric, []).append(value)

    def mean(v):
        got = [q for q in v if q is not None]
        return round(float(np.mean(got)), 4) if got else None

    return {"manifest": manifest, "split": split, "clips": len(chosen), "per_source": count,
            "band_hz": list(band_hz), "band": band_name(int(band_hz[0]), int(band_hz[1])),
            "loss_weights": LOSS_WEIGHTS,
            "mean": {k: {m: mean(v) for m, v in d.items()} for k, d in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report
    from .diagnose_decoder import add_clip_arguments

    p = argparse.ArgumentParser(prog="python -m training.probe_pulse_alignment",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(p, per_source=6, checkpoint=False)
    p.add_argument("--band", type=float, nargs=2, default=(1000.0, 4000.0),
                   metavar=("LO_HZ", "HI_HZ"), help="the band to change (default: 1000 4000)")
    a = p.parse_args(argv)
    if not 0 <= a.band[0] < a.band[1]:
        p.error("--band needs 0 <= LO_HZ < HI_HZ")
    report = probe(a.manifest, a.split, a.per_source, tuple(a.band), a.seed)
    report["command"] = "python -m training.probe_pulse_alignment " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
