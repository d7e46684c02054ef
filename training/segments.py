"""Deterministic random segments from an in-memory clip set.

The batch of step ``s`` on rank ``r`` depends only on ``(seed, s, r)``, so a resumed run sees
exactly the batches an uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
            wet = np.convolve(x, ir)[: x.size]
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
