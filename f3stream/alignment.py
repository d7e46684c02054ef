"""Where a stream's samples and frames line up: the one owner of end-of-stream alignment.

Two facts of the model decide it, and every path (offline, streaming sessions, the server, the
microphone, the ONNX graph, training) applies them through this module:

* **Whole frames.** The encoder turns every ``hop_length`` samples into one frame. Input that
  arrives in pieces of any length is cut into whole frames (:class:`Regrouper`; the rest waits
  for the next piece), and at the end of a stream the last partial frame is zero-padded
  (:func:`pad_to_frames`), so ``n`` samples give :func:`n_frames` ``= ceil(n / hop_length)``
  frames.
* **The decoder's delay.** The decoder's overlap-add holds back ``decoder_delay`` samples (its
  look-ahead). Output aligned with the encoder's input drops the first ``decoder_delay``
  samples of a stream and appends the held-back tail at its end: :func:`align_decoded` for a
  whole clip (torch, also traced into the ONNX full graph), :class:`DelayTrim` for a stream
  decoded piece by piece.
"""

from __future__ import annotations

import numpy as np


def n_frames(n_samples: int, hop: int) -> int:
    """Frames that ``n_samples`` samples give (the last partial frame is zero-padded)."""
    return -(-n_samples // hop)


def pad_to_frames(x: np.ndarray, hop: int) -> np.ndarray:
    """``x`` (1-D float32) zero-padded at its end to a whole number of ``hop``-sample frames:
    how the last partial frame of a stream is completed."""
    pad = (-x.size) % hop
    return np.concatenate([x, np.zeros(pad, np.float32)])


class Regrouper:
    """Pieces of any length along axis 0 in, whole units of ``unit`` rows out; the remainder
    waits for the next piece (:attr:`pending`). Cuts audio into frames (``unit`` =
    ``hop_length``) and long inputs into model blocks, whatever sizes they arrived in."""

    def __init__(self, unit: int, empty: np.ndarray):
        """``empty``: a 0-row array of the pieces' dtype and trailing shape."""
        self.unit = int(unit)
        self._empty = empty
        self.pending = empty

    def push(self, x: np.ndarray) -> np.ndarray:
        """Appends ``x``; returns every whole unit now complete, as one array whose length is a
        multiple of ``unit`` (possibly 0)."""
        buf = np.concatenate([self.pending, x]) if self.pending.shape[0] else x
        n = (buf.shape[0] // self.unit) * self.unit
        self.pending = buf[n:].copy()
        return buf[:n]

    def units(self, x: np.ndarray) -> list[np.ndarray]:
        """:meth:`push`, the complete units one by one."""
        ready = self.push(x)
        return [ready[i:i + self.unit] for i in range(0, ready.shape[0], self.unit)]

    def take_pending(self) -> np.ndarray:
        """The incomplete remainder (fewer than ``unit`` rows), which is forgotten."""
        rest, self.pending = self.pending, self._empty
        return rest


class DelayTrim:
    """Drops the first ``delay`` samples of a stream that arrives in pieces (the decoder's
    look-ahead), so what remains is aligned with the encoder's input; :meth:`reset` starts a
    new stream."""

    def __init__(self, delay: int):
        self.delay = int(delay)
        self.to_skip = self.delay

    def reset(self) -> None:
        self.to_skip = self.delay

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        if self.to_skip:
            n = min(self.to_skip, wav.size)
            self.to_skip -= n
            wav = wav[n:]
        return wav


def align_decoded(y, tail, delay: int):
    """A whole clip's decoder output ``[B, n]`` plus its held-back ``tail`` ``[B, delay]``
    (torch tensors) -> the clip aligned with the encoder's input, ``[B, n]``."""
    import torch

    return torch.cat([y, tail], dim=-1)[:, delay:]


__all__ = ["DelayTrim", "Regrouper", "align_decoded", "n_frames", "pad_to_frames"]
