"""The type every encoder path hands out: :class:`EncodedFrames` (a run of a stream's frames).

At the bottom of the package (it imports nothing of f3stream), so sessions, the tokenizer, token
files, the server's client, the microphone pipeline and the integrations all share it without
importing one another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class EncodedFrames:
    """Frames ``start_frame .. start_frame + n_frames - 1`` of a stream."""

    start_frame: int
    latents: np.ndarray                    # [n, latent_dim] float32
    representations: np.ndarray | None     # [n, representation_dim] float32, or None

    @property
    def n_frames(self) -> int:
        return int(self.latents.shape[0])


def join_frames(parts: Iterable[EncodedFrames], latent_dim: int,
                representation_dim: int | None) -> EncodedFrames:
    """The frames of a whole stream (starting at frame 0) from its consecutive pieces.
    ``representation_dim=None``: a stream of latents only (representations None)."""
    parts = list(parts)
    lat = np.concatenate([p.latents for p in parts] or
                         [np.zeros((0, latent_dim), np.float32)])
    rep = None
    if representation_dim is not None:
        rep = np.concatenate([p.representations for p in parts] or
                             [np.zeros((0, representation_dim), np.float32)])
    return EncodedFrames(0, lat, rep)


__all__ = ["EncodedFrames", "join_frames"]
