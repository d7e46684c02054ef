"""Where a checkpoint's reconstructions lose intelligibility: magnitude or phase, and how much
of the latent detail the decoder uses.

    python -m training.diagnose_decoder --checkpoint DIR --manifest data/real/manifest.jsonl \\
        --split test --per-source 6 --out docs/diagnose/NAME.json

Two measurements on the same held-out clips, scored with STOI (and PESQ-WB):

* **Magnitude / phase swap.** The STFTs (512 points, hop 128) of the input and of the
  reconstruction are recombined: the reconstruction's magnitudes with the input's phases says
  how intelligible the output would be with perfect phase; the input's magnitudes with the
  reconstruction's phases, with perfect magnitudes. Random phases with the input's magnitudes
  are the floor a phase-blind decoder would reach.
* **Band envelope / fine structure.** The magnitudes split into a coarse part, the energy of
  each third-octave band in each STFT frame (the resolution STOI and PESQ listen at), and the
  fine structure within the bands (harmonics, their valleys). The reconstruction's magnitudes
  rescaled to the input's band energies (its own fine structure and phases kept) say how much
  of the gap to perfect magnitudes is the band envelope; the input's magnitudes rescaled to
  the reconstruction's band energies (with the reconstruction's phases), how much is the
  fine structure. ``--envelope-sweep``: the first at coarser band layouts and time
  resolutions.
* **Noise robustness.** The clean latents decoded with added Gaussian noise of standard
  deviation ``alpha`` (the bottleneck's own perturbation, at inference). When a large
  ``alpha`` costs little, the decoder does not use the latents' fine detail: the information
  it relies on sits above that noise level.
* **Periodicity.** A YIN pitch tracker (``training.pitch``) on input and reconstruction: the
  share of 10 ms frames voiced (periodic) in each, and of the input's voiced frames the share
  the reconstruction keeps voiced at the same pitch (within 5 %). A decoder that renders
  voiced speech as shaped noise keeps the envelope (and much of STOI) but not the pitch.
* **Pitch head and oracle pitch** (checkpoints with a harmonic source only): the pitch
  head's error against YIN on the voiced frames (octaves; share within 5 %), and the same latents decoded with
  the oscillator driven by the input's own YIN pitch where it is voiced: what the harmonic
  source gives once its pitch head is right.
* **Harmonicity per band.** On the frames the input calls voiced, the power at the input's
  harmonics (``k * f0``) over the power half-way between them, in dB, per frequency band,
  for the input and the reconstruction (and the oracle-pitch decode): where a decoder
  renders the harmonics and where it answers with noise shaped like their envelope (~0 dB).
* **Oracle voicing gate** (harmonic source only): the same latents decoded with the
  excitation switched off where the input is unvoiced (``voicing_gate``; and with the voiced
  frames widened by ``VOICING_GATE_WIDEN`` each side): whether the excitation the decoder
  puts outside the input's voiced frames (the over-voicing above) costs or helps.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from pathlib import Path

import numpy as np

NOISE_ALPHAS = (0.0, 0.1, 0.3, 0.6, 1.0)
SWAP_N_FFT, SWAP_HOP = 512, 128


def _stft(x: np.ndarray):
    import torch

    w = torch.hann_window(SWAP_N_FFT, dtype=torch.float64)
    return torch.stft(torch.from_numpy(x).double(), SWAP_N_FFT, SWAP_HOP, window=w,
                      return_complex=True)


def _istft(spec, n: int) -> np.ndarray:
    import torch

    w = torch.hann_window(SWAP_N_FFT, dtype=torch.float64)
    return torch.istft(spec, SWAP_N_FFT, SWAP_HOP, window=w, length=n).numpy().astype(np.float32)


def bands_of_bins(edges_hz, sample_rate: int, n_fft: int = SWAP_N_FFT) -> np.ndarray:
    """Band index of each of the ``n_fft // 2 + 1`` STFT bins for bands with these edges (the
    first edge 0 Hz; the last band runs up to Nyquist)."""
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    inner = np.array(edges_hz[1:-1], dtype=float)
    return np.searchsorted(inner[inner < sample_rate / 2], freqs, side="right")


def third_octave_bands(sample_rate: int, n_fft: int = SWAP_N_FFT) -> np.ndarray:
    """The fine band-energy loss's third-octave bands (``training.losses.THIRD_OCTAVE_EDGES_HZ``:
    from 100 Hz, the bins below in the first band) per STFT bin."""
    from .losses import THIRD_OCTAVE_EDGES_HZ

    return bands_of_bins(THIRD_OCTAVE_EDGES_HZ, sample_rate, n_fft)


def envelope_band_schemes(sample_rate: int) -> dict[str, np.ndarray]:
    """The band layouts of the envelope sweep: third-octave, octave (from 100 Hz) and the wide
    bands of the band-energy loss (``training.losses.BAND_EDGES_HZ``)."""
    from .losses import BAND_EDGES_HZ

    octave = (0.0,) + tuple(100.0 * 2.0 ** k for k in range(1, 8)) + (sample_rate / 2,)
    return {"third-octave": third_octave_bands(sample_rate),
            "octave": bands_of_bins(octave, sample_rate),
            "loss wide bands": bands_of_bins(BAND_EDGES_HZ, sample_rate)}


ENVELOPE_POOL_FRAMES = (1, 2, 4, 8, 16)   # x 128 samples: 5 to 85 ms at 24 kHz


def with_band_energies(mag, reference, bands: np.ndarray, pool_frames: int = 1):
    """``mag`` (``[bins, frames]``) rescaled per band and frame to the energy ``reference``
    has there: ``reference``'s band envelope, ``mag``'s fine structure within each band. With
    ``pool_frames`` > 1 the energies are summed over blocks of that many frames first: the
    envelope only at that time resolution."""
    import torch

    index = torch.from_numpy(bands).long()
    n = int(bands.max()) + 1

    def energy(m):
        e = torch.zeros(n, m.shape[1], dtype=m.dtype).index_add_(0, index, m ** 2)
        if pool_frames > 1:
            t = e.shape[1]
            e = torch.nn.functional.pad(e, (0, (-t) % pool_frames))
            e = e.reshape(n, -1, pool_frames).sum(-1).repeat_interleave(pool_frames, 1)[:, :t]
        return e

    gain = torch.sqrt(energy(reference) / energy(mag).clamp(min=1e-20))
    return mag * gain[index]


def envelope_sweep(wav: np.ndarray, rec: np.ndarray, sample_rate: int
                   ) -> dict[str, np.ndarray]:
    """The reconstruction with the input's band energies set at each band layout and time
    resolution (its own fine structure and phases kept): ``{"BANDS, MS ms": signal}``."""
    import torch

    a, b = _stft(wav), _stft(rec)
    phase_b = torch.exp(1j * b.angle())
    out = {}
    for name, bands in envelope_band_schemes(sample_rate).items():
        for k in ENVELOPE_POOL_FRAMES:
            ms = round(1000 * k * SWAP_HOP / sample_rate)
            out[f"{name}, {ms} ms"] = _istft(
                with_band_energies(b.abs(), a.abs(), bands, k) * phase_b, wav.size)
    return out


def swapped(wav: np.ndarray, rec: np.ndarray, seed: int = 0,
            sample_rate: int = 24000) -> dict[str, np.ndarray]:
    """The recombinations of magnitude and phase, and of band envelope and fine structure,
    described in the module docstring."""
    import torch

    a, b = _stft(wav), _stft(rec)
    g = torch.Generator().manual_seed(seed)
    rand = torch.rand(a.shape, generator=g, dtype=torch.float64) * 2 * np.pi
    bands = third_octave_bands(sample_rate)
    phase_a, phase_b = torch.exp(1j * a.angle()), torch.exp(1j * b.angle())
    return {"reconstruction": rec,
            "rec_magnitude_input_phase": _istft(b.abs() * phase_a, wav.size),
            "input_magnitude_rec_phase": _istft(a.abs() * phase_b, wav.size),
            "input_magnitude_random_phase": _istft(a.abs() * torch.exp(1j * rand), wav.size),
            "rec_fine_input_band_envelope": _istft(
                with_band_energies(b.abs(), a.abs(), bands) * phase_b, wav.size),
            "input_fine_rec_band_envelope": _istft(
                with_band_energies(a.abs(), b.abs(), bands) * phase_b, wav.size)}


PITCH_TOLERANCE_OCTAVES = 0.07  # ~5 %
NEAR_VOICED_FRAMES = 3          # an over-voiced frame this close to an input-voiced one: a
                                # voicing edge held too long (or begun too early), not buzz


def periodicity(wav: np.ndarray, rec: np.ndarray, sample_rate: int) -> dict[str, int]:
    """Frame counts: ``frames``, ``input_voiced``, ``reconstruction_voiced``, ``pitch_kept``
    (voiced in both, pitches within ``PITCH_TOLERANCE_OCTAVES``), ``over_voiced`` (voiced in
    the reconstruction only) and of those ``over_voiced_near_edge`` (within
    ``NEAR_VOICED_FRAMES`` of an input-voiced frame)."""
    import torch

    from .pitch import yin_pitch

    hop = sample_rate // 100
    n = wav.size // hop
    fx, vx = yin_pitch(torch.from_numpy(wav)[None], sample_rate, hop, n)
    fy, vy = yin_pitch(torch.from_numpy(rec[:wav.size])[None], sample_rate, hop, n)
    both = vx & vy
    ratio = torch.log2(fy.clamp_min(1.0) / fx.clamp_min(1.0)).abs()
    over = (vy & ~vx)[0].numpy()
    reach = 2 * NEAR_VOICED_FRAMES + 1
    near = np.convolve(vx[0].numpy().astype(np.float64), np.ones(reach), "same") > 0.5
    return {"frames": n, "input_voiced": int(vx.sum()), "reconstruction_voiced": int(vy.sum()),
            "pitch_kept": int((both & (ratio < PITCH_TOLERANCE_OCTAVES)).sum()),
            "over_voiced": int(over.sum()), "over_voiced_near_edge": int((over & near).sum())}


HARMONICITY_BANDS_HZ = ((0, 1000), (1000, 2000), (2000, 4000), (4000, 8000))
HARMONICITY_N_FFT = 1024  # 43 ms at 24 kHz: bins of 23 Hz, a quarter of a 94 Hz f0's spacing


def band_name(lo: int, hi: int) -> str:
    return f"{lo / 1000:g}-{hi / 1000:g} kHz"


def band_harmonicity(signals: dict[str, np.ndarray], wav: np.ndarray, sample_rate: int
                     ) -> dict[str, dict[str, list[float]]]:
    """``{band: {name: [dB per voiced frame]}}``: for each 10 ms frame where ``wav`` is voiced
    (YIN) and each signal of ``signals`` (``wav`` among them, as a rule), the power spectrum
    (Hann, ``HARMONICITY_N_FFT`` points, centred on the frame) read at the input's harmonics
    ``k * f0`` over the power read half-way between them, summed within each band of
    ``HARMONICITY_BANDS_HZ``. Harmonics give tens of dB, noise about 0."""
    import torch

    from .pitch import yin_pitch

    hop = sample_rate // 100
    n = wav.size // hop
    f0, voiced = yin_pitch(torch.from_numpy(wav)[None], sample_rate, hop, n)
    frames = np.flatnonzero(voiced[0].numpy())
    f0 = f0[0].numpy()[frames]
    half = HARMONICITY_N_FFT // 2
    bins = np.fft.rfftfreq(HARMONICITY_N_FFT, 1.0 / sample_rate)
    starts = frames * hop + hop // 2          # frame centres, in the signal padded by ``half``
    window = np.hanning(HARMONICITY_N_FFT + 1)[:-1]
    out: dict[str, dict[str, list[float]]] = {band_name(*b): {} for b in HARMONICITY_BANDS_HZ}
    for name, x in signals.items():
        x = np.pad(x[:wav.size].astype(np.float64), (half, half))
        seg = x[starts[:, None] + np.arange(HARMONICITY_N_FFT)] * window
        power = np.abs(np.fft.rfft(seg, axis=-1)) ** 2 + 1e-20
        for lo, hi in HARMONICITY_BANDS_HZ:
            values = out[band_name(lo, hi)].setdefault(name, [])
            for row, f in zip(power, f0):
                k = np.arange(max(1, int(np.ceil(lo / f))), int(hi // f) + 1)
                k = k[(k * f >= lo) & ((k + 0.5) * f < hi)]
                if k.size == 0:
                    continue
                peaks = np.interp(k * f, bins, row).sum()
                valleys = np.interp((k + 0.5) * f, bins, row).sum()
                values.append(float(10.0 * np.log10(peaks / valleys)))
    return out


def pitch_head_error(model, z: np.ndarray, wav: np.ndarray) -> np.ndarray:
    """|log2(head f0 / YIN f0)| on the frames of ``wav`` that YIN calls voiced."""
    import torch

    from .pitch import yin_pitch

    ae = model.cfg.autoencoder
    with torch.no_grad():
        f0 = model.decoder.pitch(torch.from_numpy(np.ascontiguousarray(z))[None])[0]
    ref, voiced = yin_pitch(torch.from_numpy(wav)[None], ae.sample_rate, ae.stft_hop,
                            f0.shape[0])
    return (torch.log2(f0[voiced[0]] / ref[0][voiced[0]].double())).abs().numpy()


def decode_with_input_pitch(model, z: np.ndarray, wav: np.ndarray) -> np.ndarray:
    """Latents ``[T, D]`` decoded (torch) with the harmonic source's oscillator at the YIN
    pitch of ``wav`` where voiced, aligned with ``wav``."""
    import torch

    from f3stream.alignment import align_decoded

    from .pitch import yin_pitch

    ae = model.cfg.autoencoder
    zt = torch.from_numpy(np.ascontiguousarray(z))[None]
    n = zt.shape[1] * ae.stft_frames_per_latent
    f0, _ = yin_pitch(torch.from_numpy(wav)[None], ae.sample_rate, ae.stft_hop, n)
    dec = model.decoder
    with torch.no_grad():
        y, _, state = dec.step_with_f0(zt, dec.init_state(1), f0)
        y = align_decoded(y, dec.tail(state), ae.decoder_delay)
    return y[0, :wav.size].numpy().astype(np.float32)


VOICING_GATE_WIDEN = 2  # frames each side: the widened gate keeps the voicing edges


def decode_with_voicing_gate(model, z: np.ndarray, wav: np.ndarray, widen: int = 0
                             ) -> np.ndarray:
    """Latents ``[T, D]`` decoded (torch) with the harmonic excitation switched off on the
    frames where ``wav`` is unvoiced (YIN; voiced frames widened by ``widen`` each side),
    aligned with ``wav``: what a perfect voicing decision would give, if the excitation
    outside the input's voiced frames were an error."""
    import torch
    import torch.nn.functional as F

    from f3stream.alignment import align_decoded

    from .pitch import yin_pitch

    ae = model.cfg.autoencoder
    zt = torch.from_numpy(np.ascontiguousarray(z))[None]
    n = zt.shape[1] * ae.stft_frames_per_latent
    _, voiced = yin_pitch(torch.from_numpy(wav)[None], ae.sample_rate, ae.stft_hop, n)
    gate = voiced.float()
    if widen:
        gate = F.max_pool1d(gate[None], 2 * widen + 1, 1, widen)[0]
    dec = model.decoder
    with torch.no_grad():
        y, _, state = dec.step_with_f0(zt, dec.init_state(1), excitation_gate=gate)
        y = align_decoded(y, dec.tail(state), ae.decoder_delay)
    return y[0, :wav.size].numpy().astype(np.float32)


def clips_per_source(manifest: str, split: str, per_source: int, seed: int = 0):
    """Up to ``per_source`` clips of each source of the split, in a seeded order, and the
    count per source: the held-out clips both diagnostics score."""
    from f3stream.manifest import read_manifest

    clips = read_manifest(manifest, split)
    random.Random(seed).shuffle(clips)
    chosen, count = [], {}
    for c in clips:
        if count.get(c.source, 0) < per_source:
            chosen.append(c)
            count[c.source] = count.get(c.source, 0) + 1
    return chosen, count


def add_clip_arguments(p: argparse.ArgumentParser, per_source: int,
                       checkpoint: bool = True) -> None:
    """The options the diagnostics and probes share: which checkpoint (unless the tool reads
    no model), which held-out clips, where the report goes."""
    if checkpoint:
        p.add_argument("--checkpoint", default=None,
                       help="checkpoint directory (default: bundled)")
    p.add_argument("--manifest", default="data/real/manifest.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--per-source", type=int, default=per_source,
                   help=f"clips per source (default: {per_source})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report (JSON) here too")


def diagnose(checkpoint: str | None, manifest: str, split: str, per_source: int,
             seed: int = 0, figure: str | None = None, sweep: bool = False) -> dict:
    from f3stream.audio import load_audio
    from f3stream.evaluation.metrics import pesq_wb, stoi
    from f3stream.tokenizer import Tokenizer

    tok = Tokenizer.load(checkpoint)
    sr = tok.sample_rate
    chosen, count = clips_per_source(manifest, split, per_source, seed)
    rng = np.random.default_rng(seed)
    scores: dict[str, dict[str, list]] = {}
    counts: dict[str, int] = {}
    source_counts: dict[str, dict[str, int]] = {}
    figure_clip = None

    def add(key: str, metric: str, value) -> None:
        scores.setdefault(key, {}).setdefault(metric, []).append(value)

    for clip in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(clip.path, sr)
        z = tok.tokenize(wav, representations=False).latents
        rec = tok.decode(z)[:wav.size].astype(np.float32)
        voicing = periodicity(wav, rec, sr)
        for key, value in voicing.items():
            counts[key] = counts.get(key, 0) + value
            src = source_counts.setdefault(clip.source, {})
            src[key] = src.get(key, 0) + value
        oracle = None
        if tok.config.autoencoder.harmonic_source:
            err = pitch_head_error(tok.model, z, wav)
            counts["head_voiced"] = counts.get("head_voiced", 0) + err.size
            counts["head_within"] = (counts.get("head_within", 0)
                                     + int((err < PITCH_TOLERANCE_OCTAVES).sum()))
            scores.setdefault("pitch_head", {}).setdefault("octaves", []).extend(err.tolist())
            oracle = decode_with_input_pitch(tok.model, z, wav)
            add("oracle_pitch", "stoi", stoi(wav, oracle, sr))
            add("oracle_pitch", "pesq_wb", pesq_wb(wav, oracle, sr))
            for key, value in periodicity(wav, oracle, sr).items():
                counts["oracle_" + key] = counts.get("oracle_" + key, 0) + value
            for name, widen in (("voicing_gate", 0), ("voicing_gate_widened", VOICING_GATE_WIDEN)):
                gated = decode_with_voicing_gate(tok.model, z, wav, widen)
                add(name, "stoi", stoi(wav, gated, sr))
                add(name, "pesq_wb", pesq_wb(wav, gated, sr))
        signals = {"input": wav, "reconstruction": rec}
        if oracle is not None:
            signals["oracle_pitch"] = oracle
        for band, per_signal in band_harmonicity(signals, wav, sr).items():
            for name, values in per_signal.items():
                scores.setdefault(f"harmonicity_db {band}", {}).setdefault(name, []
                                                                           ).extend(values)
        if figure and figure_clip is None and voicing["input_voiced"] > 100:
            figure_clip = (clip, wav, rec, oracle)
        for key, y in swapped(wav, rec, seed, sr).items():
            add(key, "stoi", stoi(wav, y, sr))
            add(key, "pesq_wb", pesq_wb(wav, y, sr))
        if sweep:
            for key, y in envelope_sweep(wav, rec, sr).items():
                add(f"envelope {key}", "stoi", stoi(wav, y, sr))
        for alpha in NOISE_ALPHAS:
            noisy = (z + alpha * rng.standard_normal(z.shape)).astype(np.float32)
            add(f"latent_noise_{alpha:g}", "stoi", stoi(wav, tok.decode(noisy)[:wav.size], sr))

    if figure and figure_clip is not None:
        from f3stream.evaluation.plots import plot_narrowband

        clip, wav, rec, oracle = figure_clip
        signals = {"input": wav, "reconstruction": rec}
        if oracle is not None:
            signals["reconstruction, oscillator at the input's pitch"] = oracle
        plot_narrowband(Path(figure), signals, sr, f"{Path(clip.path).name} "
                        f"({clip.source}, held out): {checkpoint or 'bundled'}")

    def mean(v):
        got = [x for x in v if x is not None]
        return round(float(np.mean(got)), 4) if got else None

    return {"checkpoint": checkpoint or "bundled", "manifest": manifest, "split": split,
            "clips": len(chosen), "per_source": count,
            "swap_stft": {"n_fft": SWAP_N_FFT, "hop": SWAP_HOP},
            "mean": {k: {m: mean(v) for m, v in d.items()} for k, d in scores.items()},
            "periodicity": {
                "frames": counts.get("frames", 0),
                "input_voiced_share": round(counts.get("input_voiced", 0)
                                            / max(1, counts.get("frames", 0)), 4),
                "reconstruction_voiced_share": round(counts.get("reconstruction_voiced", 0)
                                                     / max(1, counts.get("frames", 0)), 4),
                "pitch_kept_share_of_input_voiced": round(
                    counts.get("pitch_kept", 0) / max(1, counts.get("input_voiced", 0)), 4),
                "over_voiced_share": round(counts.get("over_voiced", 0)
                                           / max(1, counts.get("frames", 0)), 4),
                "over_voiced_near_edge_share_of_over_voiced": round(
                    counts.get("over_voiced_near_edge", 0)
                    / max(1, counts.get("over_voiced", 0)), 4),
                "per_source": {src: {
                    "input_voiced_share": round(c["input_voiced"] / max(1, c["frames"]), 4),
                    "reconstruction_voiced_share": round(c["reconstruction_voiced"]
                                                         / max(1, c["frames"]), 4)}
                    for src, c in sorted(source_counts.items())},
                **({"pitch_head_within_5_percent_of_input_voiced": round(
                    counts["head_within"] / max(1, counts["head_voiced"]), 4)}
                   if "head_voiced" in counts else {}),
                **({"oracle_pitch_kept_share_of_input_voiced": round(
                    counts["oracle_pitch_kept"] / max(1, counts.get("input_voiced", 0)), 4)}
                   if "oracle_pitch_kept" in counts else {})}}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report

    p = argparse.ArgumentParser(prog="python -m training.diagnose_decoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(p, per_source=6)
    p.add_argument("--figure", help="PNG: narrow-band spectrograms (0-2 kHz) of the first "
                   "clip with over a second of voiced frames: input, reconstruction (and with "
                   "a harmonic source, decoded at the input's pitch)")
    p.add_argument("--envelope-sweep", action="store_true",
                   help="also score the reconstruction with the input's band energies at three "
                        "band layouts and five time resolutions (5-85 ms): which envelope "
                        "errors cost STOI")
    a = p.parse_args(argv)
    report = diagnose(a.checkpoint, a.manifest, a.split, a.per_source, a.seed, a.figure,
                      a.envelope_sweep)
    report["command"] = "python -m training.diagnose_decoder " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
