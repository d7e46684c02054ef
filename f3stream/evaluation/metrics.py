"""Signal and transcript metrics: SI-SDR, log-mel distance, PESQ, STOI, word error rate.

Own implementations where the definition is short (SI-SDR, log-mel, edit distance) so the numbers
do not depend on which version of some library is installed; PESQ and STOI come from the
reference-faithful ``pesq`` and ``pystoi`` packages.
"""

from __future__ import annotations

import math
import unicodedata
import warnings
from functools import lru_cache

import numpy as np

from ..audio import resample
from .errors import require

PESQ_RATE = 16000          # wideband PESQ is defined at 16 kHz
PESQ_MIN_SECONDS = 0.25    # the pesq package rejects shorter buffers
STOI_MIN_SECONDS = 0.4     # pystoi needs ~30 frames of 25.6 ms at 10 kHz to say anything
MEL_N_FFT = 1024
# The log-mel definition of training/losses.py (LogMel): magnitude, 100 bands, n_fft 1024, hop 256,
# natural log floored at 1e-5, so that eval's mel L1 reads on the same scale as training's val_mel.
MEL_HOP = 256
MEL_BANDS = 100
LOG_FLOOR = 1e-5
SI_SDR_CAP = 100.0         # dB: a perfect copy scores this, not +inf (JSON has no inf)


# -- SI-SDR ------------------------------------------------------------------------------------
def level_change_db(reference: np.ndarray, estimate: np.ndarray) -> float | None:
    """RMS level of ``estimate`` relative to ``reference`` in dB (0: loudness preserved);
    None for a silent reference."""
    ref = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    est = float(np.sqrt(np.mean(np.square(estimate, dtype=np.float64))))
    if ref < 1e-6:
        return None
    return 20.0 * float(np.log10(max(est, 1e-12) / ref))


def band_level_change_db(reference: np.ndarray, estimate: np.ndarray, sample_rate: int,
                         low_hz: float, high_hz: float) -> float | None:
    """Energy of ``estimate`` between ``low_hz`` and ``high_hz`` relative to ``reference``'s, in
    dB (e.g. 6-12 kHz: does a full-band input keep its highs?); None when the reference has
    (almost) nothing there."""
    n = min(reference.size, estimate.size)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    band = (freqs >= low_hz) & (freqs < high_hz)
    ref = float(np.sum(np.abs(np.fft.rfft(reference[:n].astype(np.float64)))[band] ** 2))
    est = float(np.sum(np.abs(np.fft.rfft(estimate[:n].astype(np.float64)))[band] ** 2))
    total = float(np.sum(reference[:n].astype(np.float64) ** 2)) * n
    if ref <= 1e-6 * total or ref == 0.0:
        return None
    return 10.0 * float(np.log10(max(est, 1e-30) / ref))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR (dB) over the common length, both signals made zero-mean.

    Invariant to the estimate's gain, so a codec that changes loudness is not punished for it.
    NaN for a silent reference (undefined); clipped to +-``SI_SDR_CAP`` (an exact scaled copy
    gives the cap rather than +inf, so it still counts in averages).
    """
    n = min(reference.size, estimate.size)
    s = reference[:n].astype(np.float64) - reference[:n].mean()
    e = estimate[:n].astype(np.float64) - estimate[:n].mean()
    energy = float(np.dot(s, s))
    if n == 0 or energy == 0.0:
        return math.nan
    target = (float(np.dot(s, e)) / energy) * s
    noise = float(np.sum((e - target) ** 2))
    t = float(np.dot(target, target))
    if noise == 0.0:
        return SI_SDR_CAP
    if t == 0.0:
        return -SI_SDR_CAP
    return max(-SI_SDR_CAP, min(SI_SDR_CAP, 10.0 * math.log10(t / noise)))


# -- log-mel -----------------------------------------------------------------------------------
def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int = MEL_N_FFT, n_mels: int = MEL_BANDS
                   ) -> np.ndarray:
    """Triangular HTK-mel filters ``[n_mels, n_fft // 2 + 1]`` from 0 Hz to Nyquist."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(wav: np.ndarray, sample_rate: int, n_fft: int = MEL_N_FFT, hop: int = MEL_HOP,
            n_mels: int = MEL_BANDS) -> np.ndarray:
    """Natural-log mel magnitude spectrogram ``[frames, n_mels]`` (periodic Hann window, centred
    frames with reflect padding), ``1 + len(wav) // hop`` frames."""
    x = np.asarray(wav, dtype=np.float32)
    mode = "reflect" if x.size > n_fft // 2 else "constant"
    x = np.pad(x, (n_fft // 2, n_fft // 2), mode=mode)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = np.maximum(np.abs(np.fft.rfft(frames * window, axis=1)), LOG_FLOOR)
    mel = spec @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def log_mel_l1(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference of the log-mel spectrograms over the common length (the
    training mel loss, so comparable to training's ``val_mel``)."""
    n = min(reference.size, estimate.size)
    a, b = log_mel(reference[:n], sample_rate), log_mel(estimate[:n], sample_rate)
    return float(np.mean(np.abs(a - b)))


# -- PESQ / STOI -------------------------------------------------------------------------------
def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float | None:
    """Wideband PESQ (MOS-LQO, about 1.0-4.64) after resampling to 16 kHz.

    ``None`` when PESQ cannot be computed (clip shorter than 0.25 s, or no speech detected):
    the caller counts these as skipped rather than failing the whole run.
    """
    pesq = require("pesq", "PESQ")
    n = min(reference.size, estimate.size)
    if n < PESQ_MIN_SECONDS * sample_rate:
        return None
    ref = resample(np.ascontiguousarray(reference[:n], np.float32), sample_rate, PESQ_RATE)
    est = resample(np.ascontiguousarray(np.clip(estimate[:n], -1, 1), np.float32), sample_rate,
                   PESQ_RATE)
    try:
        return float(pesq.pesq(PESQ_RATE, ref.astype(np.float64), est.astype(np.float64), "wb"))
    except Exception:  # pesq's own errors (NoUtterancesError, BufferTooShortError, ...)
        return None


def stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float | None:
    """Short-time objective intelligibility (0-1); ``None`` for clips too short to score."""
    pystoi = require("pystoi", "STOI")
    n = min(reference.size, estimate.size)
    if n < STOI_MIN_SECONDS * sample_rate:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystoi warns (and returns 1e-5) on too few frames
        value = float(pystoi.stoi(reference[:n].astype(np.float64),
                                  estimate[:n].astype(np.float64), sample_rate, extended=False))
    return value if math.isfinite(value) and value > 1e-4 else None


# -- word error rate ---------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lower-cased words; punctuation (except in-word apostrophes) becomes a word break, so
    "Yes, here we are!" and "yes here we are" compare equal."""
    text = unicodedata.normalize("NFKC", text).lower()
    chars = [c if (c.isalnum() or c == "'") else " " for c in text]
    return [w.strip("'") for w in "".join(chars).split() if w.strip("'")]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between word lists."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one pair: edits / reference words (may exceed 1 with insertions).

    Raises ``ValueError`` for an empty reference, where WER is undefined.
    """
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        raise ValueError("WER is undefined for an empty reference")
    return edit_distance(ref, hyp) / len(ref)


def corpus_wer(pairs: list[tuple[str, str]]) -> tuple[float | None, int, int]:
    """(total edits / total reference words, pairs used, pairs skipped for an empty reference).

    Pooling edits over the corpus (rather than averaging per-clip WERs) keeps one-word clips
    from dominating the figure.
    """
    edits = words = used = 0
    for ref, hyp in pairs:
        r = normalize_words(ref)
        if not r:
            continue
        edits += edit_distance(r, normalize_words(hyp))
        words += len(r)
        used += 1
    return (edits / words if words else None), used, len(pairs) - used
