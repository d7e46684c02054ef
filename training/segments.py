"""Deterministic random segments from an in-memory clip set.

The batch of step ``s`` on rank ``r`` depends only on ``(seed, s, r)``, so a resumed run sees
exactly the batches an uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from f3stream.audio import load_audio


class SegmentSource:
    def __init__(self, paths: list[str], sample_rate: int, segment_samples: int, seed: int,
                 gain_db: tuple[float, float] = (0.0, 0.0)):
        if not paths:
            raise ValueError("no clips to train on (empty split?)")
        self.clips = [(load_audio(p, sample_rate)[0] * 32767).astype(np.int16) for p in paths]
        lengths = np.array([c.size for c in self.clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.segment = segment_samples
        self.seed = seed
        self.gain_db = gain_db

    @property
    def seconds(self) -> float:
        return sum(c.size for c in self.clips) / 24000.0

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
            out[i, :piece.size] = piece.astype(np.float32) / 32768.0 * gain
        return torch.from_numpy(np.clip(out, -1.0, 1.0))

    def fixed_batches(self, n: int, batch_size: int) -> list[torch.Tensor]:
        """Evaluation batches: the same every call."""
        return [self.batch(10**9 + i, batch_size) for i in range(n)]
