"""Corpus manifests for training: the format lives in :mod:`f3stream.manifest` (the installed
package reads it too); this adds the speaker-disjoint split assignment."""

from __future__ import annotations

from f3stream.manifest import SPLITS, Clip, ManifestError, read_manifest, write_manifest

__all__ = ["SPLITS", "Clip", "ManifestError", "read_manifest", "split_by_speaker",
           "write_manifest"]


def split_by_speaker(speakers: list[str], val_fraction: float, test_fraction: float,
                     seed: int = 0, fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Assigns each speaker to one split (deterministic); ``fixed`` pins chosen speakers."""
    import random

    fixed = dict(fixed or {})
    rest = sorted(set(speakers) - set(fixed))
    random.Random(seed).shuffle(rest)
    n_val = round(len(rest) * val_fraction)
    n_test = round(len(rest) * test_fraction)
    out = dict(fixed)
    for i, s in enumerate(rest):
        out[s] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out
