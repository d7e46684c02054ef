"""Would the stage-0 losses (and STOI, PESQ-WB) reward harmonics where the decoder has none?

    python -m training.probe_harmonic_mix [--checkpoint DIR] --band 1000 4000 --per-source 2 \\
        --out docs/diagnose/NAME.json

A harmonic-source decoder's spectrum is ``M (e^{j phi} + g E)`` (``f3stream.autoencoder``).
Where its gains ``g`` have fallen near zero they stay there: the first-order effect of ``g``
on a magnitude loss averages out over the random phase between ``E`` and ``e^{j phi}``. So
whether harmonics would pay in a band cannot be read off training; this probe asks directly.
On the frames the input calls voiced (YIN; the oscillator at that pitch, as in training with
teacher forcing), the band's bins are replaced by ``M (a e^{j phi} + b E)`` with a harmonic
share ``w`` (``a = sqrt(1 - w)``, ``b`` so that ``E`` carries ``w`` of the power), rescaled
per frame to the band power the decoder gave: the same envelope and level, more or fewer
harmonics. Each ``w`` is scored with the stage-0 loss terms, STOI, PESQ-WB and the band's
harmonicity (``training.diagnose_decoder``). ``model`` is the decoder as it is.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

HARMONIC_SHARES = (0.0, 0.25, 0.5, 0.75, 0.9)
LOSS_WEIGHTS = {"mrstft": 1.0, "mel": 1.0, "band": 4.0, "level": 1.0}  # the bundled recipe's


def decode_with_harmonic_share(model, z, f0, band_hz: tuple[float, float],
                               share: float | None):
    """Latents ``[1, T, D]`` decoded (torch, offline) with the oscillator at ``f0 [1, N]``
    (Hz; 0 = the pitch head's own) and, when ``share`` is not None, the band's bins of the
    frames where ``f0 > 0`` remixed to that harmonic share at equal band power. Returns the
    waveform ``[1, L]`` aligned with the input."""
    import torch

    from f3stream.alignment import align_decoded
    from f3stream.streaming import substate

    dec, ae = model.decoder, model.cfg.autoencoder
    state = dec.init_state(1)
    h, _ = dec.transformer.step(dec.input_proj(z), substate(state, "transformer"))
    h = dec.ungroup_proj(h).reshape(1, z.shape[1] * ae.stft_frames_per_latent, -1)
    h, _ = dec.convs.step(h, substate(state, "convs"))
    h = dec.out_norm(h)
    log_mag, phase = dec.out_proj(h).chunk(2, dim=-1)
    mag = torch.exp(log_mag.clamp(max=dec.MAX_LOG_MAGNITUDE))
    re, im = torch.cos(phase), torch.sin(phase)
    own = dec.pitch(z)
    exc, _ = dec.harmonic.step(torch.where(f0 > 0, f0.to(own), own),
                               substate(state, "harmonic"))
    e_re, e_im = exc.chunk(2, dim=-1)
    g_re, g_im = dec.harmonic_proj(h).chunk(2, dim=-1)
    out_re, out_im = re + g_re * e_re - g_im * e_im, im + g_re * e_im + g_im * e_re
    if share is not None:
        freqs = torch.arange(ae.n_fft // 2 + 1) * ae.sample_rate / ae.n_fft
        sel = (freqs >= band_hz[0]) & (freqs < band_hz[1])
        e_power = (e_re ** 2 + e_im ** 2)[..., sel].mean(-1, keepdim=True).clamp_min(1e-6)
        a, b = float(np.sqrt(1.0 - share)), torch.sqrt(share / e_power)
        new_re, new_im = a * re + b * e_re, a * im + b * e_im
        old_p = ((mag * out_re) ** 2 + (mag * out_im) ** 2)[..., sel].sum(-1, keepdim=True)
        new_p = ((mag * new_re) ** 2 + (mag * new_im) ** 2)[..., sel].sum(-1, keepdim=True)
        k = torch.sqrt(old_p / new_p.clamp_min(1e-12))
        where = sel[None, None, :] & (f0 > 0)[..., None]
        out_re = torch.where(where, new_re * k, out_re)
        out_im = torch.where(where, new_im * k, out_im)
    spec = torch.cat([mag * out_re, mag * out_im], dim=-1)
    y, s_ola = dec.overlap_add.step(spec @ dec.basis, substate(state, "ola"))
    return align_decoded(y, dec.overlap_add.tail(s_ola), ae.decoder_delay)


def loss_terms(y: np.ndarray, x: np.ndarray, sample_rate: int, per_resolution: bool = False
               ) -> dict[str, float]:
    """The stage-0 terms of ``y`` against ``x`` (no band limit) and their weighted total
    (:data:`LOSS_WEIGHTS`); with ``per_resolution`` each MR-STFT resolution's term too."""
    import torch

    from .losses import (BAND_RESOLUTION, DEFAULT_RESOLUTIONS, LogMel, band_energy_loss,
                         level_loss, multi_resolution_stft_loss, spectral_losses)

    yt, xt = torch.from_numpy(y)[None].float(), torch.from_numpy(x)[None].float()
    with torch.no_grad():
        mr, _, mags = spectral_losses(yt, xt, None, sample_rate, with_complex=False)
        terms = {"mrstft": mr.item(), "mel": LogMel(sample_rate).loss(yt, xt, None, mags).item(),
                 "band": band_energy_loss(*mags[BAND_RESOLUTION], None, sample_rate).item(),
                 "level": level_loss(*mags[BAND_RESOLUTION], None, sample_rate).item()}
        if per_resolution:
            for n_fft, hop in DEFAULT_RESOLUTIONS:
                terms[f"mrstft {n_fft}"] = multi_resolution_stft_loss(
                    yt, xt, ((n_fft, hop),)).item()
    terms["total"] = sum(LOSS_WEIGHTS[k] * terms[k] for k in LOSS_WEIGHTS)
    return terms


def probe(checkpoint: str | None, manifest: str, split: str, per_source: int,
          band_hz: tuple[float, float], seed: int = 0) -> dict:
    import torch

    from f3stream.audio import load_audio
    from f3stream.evaluation.metrics import pesq_wb, stoi
    from f3stream.tokenizer import Tokenizer

    from .diagnose_decoder import band_harmonicity, clips_per_source
    from .pitch import yin_pitch

    tok = Tokenizer.load(checkpoint)
    if not tok.config.autoencoder.harmonic_source:
        raise SystemExit("the checkpoint's decoder has no harmonic source")
    ae = tok.config.autoencoder
    sr = ae.sample_rate
    chosen, count = clips_per_source(manifest, split, per_source, seed)
    rows: dict[str, dict[str, list]] = {}
    for clip in chosen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(clip.path, sr)
        z = torch.from_numpy(tok.tokenize(wav, representations=False).latents)[None]
        f0, _ = yin_pitch(torch.from_numpy(wav)[None], sr, ae.stft_hop,
                          z.shape[1] * ae.stft_frames_per_latent)
        for share in (None, *HARMONIC_SHARES):
            with torch.no_grad():
                y = decode_with_harmonic_share(tok.model, z, f0, band_hz, share)[:, :wav.size]
            yn = y[0].numpy().astype(np.float32)
            terms = loss_terms(yn, wav, sr)
            terms["stoi"], terms["pesq_wb"] = stoi(wav, yn, sr), pesq_wb(wav, yn, sr)
            harm = band_harmonicity({"y": yn}, wav, sr)
            for name, per_signal in harm.items():
                if per_signal["y"]:
                    terms[f"harmonicity_db {name}"] = float(np.mean(per_signal["y"]))
            key = "model" if share is None else f"share {share:g}"
            for metric, value in terms.items():
                rows.setdefault(key, {}).setdefault(metric, []).append(value)

    def mean(v):
        got = [q for q in v if q is not None]
        return round(float(np.mean(got)), 4) if got else None

    return {"checkpoint": checkpoint or "bundled", "manifest": manifest, "split": split,
            "clips": len(chosen), "per_source": count, "band_hz": list(band_hz),
            "loss_weights": LOSS_WEIGHTS,
            "mean": {k: {m: mean(v) for m, v in d.items()} for k, d in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    from .common import print_and_write_report
    from .diagnose_decoder import add_clip_arguments

    p = argparse.ArgumentParser(prog="python -m training.probe_harmonic_mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(p, per_source=2)
    p.add_argument("--band", type=float, nargs=2, default=(1000.0, 4000.0),
                   metavar=("LO_HZ", "HI_HZ"), help="the band to remix (default: 1000 4000)")
    a = p.parse_args(argv)
    if not 0 <= a.band[0] < a.band[1]:
        p.error("--band needs 0 <= LO_HZ < HI_HZ")
    report = probe(a.checkpoint, a.manifest, a.split, a.per_source, tuple(a.band), a.seed)
    report["command"] = "python -m training.probe_harmonic_mix " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print_and_write_report(report, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
