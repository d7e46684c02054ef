"""Deterministic random segments from an in-memory clip set.

The batch of step ``s`` on rank ``r`` depends only on ``(seed, s, r)``, so a resumed run sees
exactly the batches an uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import fftconvolve

from f3stream.audio import load_audio


@dataclass(frozen=True)
class Augmentation:
    """Optional corruptions of training audio (the autoencoder reconstructs the corrupted clip,
    so they widen the input distribution rather than teach denoising).

    ``noise_prob``: add white or brown noise at an SNR drawn from ``noise_snr_db``;
    ``reverb_prob``: convolve with a synthetic exponentially decaying noise tail (RT60 drawn
    from ``reverb_rt60``), mixed 50/50 with the dry signal.
    """

    noise_prob: float = 0.0
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    reverb_prob: float = 0.0
    reverb_rt60: tuple[float, float] = (0.1, 0.6)

    def apply(self, x: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        if self.reverb_prob and rng.random() < self.reverb_prob:
            rt60 = rng.uniform(*self.reverb_rt60)
            n = int(rt60 * sample_rate)
            t = np.arange(n) / sample_rate
            ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
            ir[0] = 1.0
            ir /= np.sqrt(np.sum(ir ** 2))
            wet = fftconvolve(x, ir)[: x.size]   # direct np.convolve: ~0.2 s a segment
            x = (0.5 * x + 0.5 * wet).astype(np.float32)
        if self.noise_prob and rng.random() < self.noise_prob:
            noise = rng.standard_normal(x.size)
            if rng.random() < 0.5:  # brown noise: integrated white noise, low-frequency heavy
                noise = np.cumsum(noise)
                noise -= np.linspace(noise[0], noise[-1], noise.size)
            p_sig = float(np.mean(x ** 2)) + 1e-10
            p_noise = float(np.mean(noise ** 2)) + 1e-10
            snr = rng.uniform(*self.noise_snr_db)
            x = (x + noise * np.sqrt(p_sig / p_noise / 10 ** (snr / 10))).astype(np.float32)
        return x


class SegmentSource:
    def __init__(self, paths: list[str], sample_rate: int, segment_samples: int, seed: int,
                 gain_db: tuple[float, float] = (0.0, 0.0),
                 augment: "Augmentation | None" = None):
        if not paths:
            raise ValueError("no clips to train on (empty split?)")
        self.clips = [(load_audio(p, sample_rate)[0] * 32767).astype(np.int16) for p in paths]
        lengths = np.array([c.size for c in self.clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.segment = segment_samples
        self.seed = seed
        self.gain_db = gain_db
        self.sample_rate = sample_rate
        self.augment = augment or Augmentation()

    @property
    def seconds(self) -> float:
        return sum(c.size for c in self.clips) / self.sample_rate

    def batch(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step, rank])
        out = np.zeros((batch_size, self.segment), dtype=np.float32)
        for i, k in enumerate(rng.choice(len(self.clips), size=batch_size, p=self.weights)):
            clip = self.clips[k]
            if clip.size > self.segment:
                a = int(rng.integers(0, clip.size - self.segment + 1))
                piece = clip[a:a + self.segment]
            else:
                piece = clip
            gain = 10 ** (rng.uniform(*self.gain_db) / 20.0)
            x = piece.astype(np.float32) / 32768.0 * gain
            out[i, :piece.size] = self.augment.apply(x, rng, self.sample_rate)
        return torch.from_numpy(np.clip(out, -1.0, 1.0))

    def fixed_batches(self, n: int, batch_size: int) -> list[torch.Tensor]:
        """Evaluation batches: the same every call."""
        return [self.batch(10**9 + i, batch_size) for i in range(n)]


@dataclass(frozen=True)
class LevelAugmentation:
    """Level and speed of real training audio.

    ``level_dbfs``: every segment is scaled to an RMS level (over its active part) drawn from
    this range, so the model sees the levels real microphones produce, from a quiet far
    talker to a close one.
    ``peak_limit``: scale a segment down (and clip it) where its peak would pass full scale.
    Speech peaks 12-20 dB above its RMS, so with the limit segments above about -12 dBFS
    almost never occur whatever the range says (0.6 % of them with a range up to -8), and
    the model compressed loud, limited input (game voices at -7 dBFS came back 4-5 dB quiet).
    Off, the float segment keeps the drawn level and may pass full scale: the model only
    sees numbers, and learns the whole range.
    ``speed_prob`` / ``speed_range``: resample by a factor (tempo and pitch together, as sox
    ``speed`` does) for new apparent speakers; the clip's band limit moves with it.
    """

    level_dbfs: tuple[float, float] = (-45.0, -14.0)
    peak_limit: bool = True
    speed_prob: float = 0.0
    speed_range: tuple[float, float] = (0.88, 1.12)


class PackedSegmentSource:
    """Random fixed-length segments from a packed corpus (:mod:`training.data.pack`).

    Like :class:`SegmentSource`, the batch of ``(seed, step, rank)`` is fixed, so resumed runs
    see the batches an uninterrupted run would. ``source_weights`` scales each source's share
    (sampling is proportional to clip length times its source's weight; unlisted sources
    weigh 1). :meth:`batch_with_band` also returns each segment's band limit in Hz.
    """

    def __init__(self, corpus, split: str, segment_samples: int, seed: int,
                 source_weights: dict[str, float] | None = None,
                 level: LevelAugmentation | None = None,
                 augment: Augmentation | None = None):
        self.corpus = corpus
        self.clips = corpus.select(split)
        if self.clips.size == 0:
            raise ValueError(f"no clips in split {split!r} of the packed corpus")
        weights = source_weights or {}
        unknown = set(weights) - set(corpus.sources.tolist())
        if unknown:
            raise ValueError(f"source_weights names unknown sources {sorted(unknown)}; the "
                             f"corpus has {sorted(set(corpus.sources.tolist()))}")
        w = np.array([weights.get(s, 1.0) for s in corpus.sources[self.clips]], np.float64)
        p = corpus.lengths[self.clips] * w
        if p.sum() <= 0:
            raise ValueError("every source of this split has weight 0")
        self.p = p / p.sum()
        self.segment = segment_samples
        self.seed = seed
        self.sample_rate = corpus.sample_rate
        self.level = level or LevelAugmentation()
        self.augment = augment or Augmentation()

    @property
    def seconds(self) -> float:
        return float(self.corpus.lengths[self.clips].sum()) / self.sample_rate

    def _piece(self, k: int, rng: np.random.Generator, speed: float) -> np.ndarray:
        off, n = int(self.corpus.offsets[k]), int(self.corpus.lengths[k])
        need = int(np.ceil(self.segment * speed)) + 64
        a = int(rng.integers(0, n - need + 1)) if n > need else 0
        x = self.corpus.audio[off + a: off + a + min(n, need)].astype(np.float32) / 32768.0
        if speed != 1.0:
            from scipy.signal import resample_poly
            up = 100
            x = resample_poly(x, up, int(round(up * speed))).astype(np.float32)
        return x[: self.segment]

    def batch_with_band(self, step: int, batch_size: int, rank: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, rank])
        out = np.zeros((batch_size, self.segment), dtype=np.float32)
        band = np.zeros(batch_size, dtype=np.float32)
        lv = self.level
        for i, j in enumerate(rng.choice(self.clips.size, size=batch_size, p=self.p)):
            k = int(self.clips[j])
            speed = 1.0
            if lv.speed_prob and rng.random() < lv.speed_prob:
                speed = float(rng.uniform(*lv.speed_range))
            x = self._piece(k, rng, speed)
            band[i] = min(float(self.corpus.band_hz[k]) / speed, self.sample_rate / 2)
            # level over the active part (frames within 40 dB of the loudest), so pauses and
            # short clips padded with silence do not skew it
            frames = x[: x.size - x.size % 240].reshape(-1, 240) if x.size >= 240 else x[None]
            e = (frames ** 2).mean(axis=1)
            active = e[e > e.max() * 1e-4] if e.max() > 0 else e
            rms = float(np.sqrt(active.mean())) + 1e-9
            gain = 10 ** (rng.uniform(*lv.level_dbfs) / 20.0) / rms
            peak = float(np.abs(x).max()) * gain
            if lv.peak_limit and peak > 0.98:
                gain *= 0.98 / peak
            x = self.augment.apply(x * gain, rng, self.sample_rate)
            out[i, : x.size] = x
        if lv.peak_limit:
            out = np.clip(out, -1.0, 1.0)
        return torch.from_numpy(out), torch.from_numpy(band)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        return self.batch_with_band(step, batch_size, rank)[0]

    def fixed_batches(self, n: int, batch_size: int) -> list[torch.Tensor]:
        return [self.batch(10**9 + i, batch_size) for i in range(n)]
