"""The public API: load a checkpoint, encode / represent / decode, open streaming sessions.

The front of the package: a :class:`Tokenizer` owns a model and the engine that runs it, and
builds its offline paths on the streaming sessions of :mod:`f3stream.session` (which know only
the engine). Input is validated here, once, where it enters (:mod:`f3stream.audio`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import alignment
from .alignment import Regrouper
from .audio import as_latents, as_mono_float32, check_sample_rate, finite_output
from .audiofile import AudioFileReader
from .backends import Engine, create_engine, cuda_capable
from .checkpoint import default_checkpoint_dir, load_checkpoint, load_state_strict, save_checkpoint
from .config import TokenizerConfig
from .frames import EncodedFrames, join_frames
from .model import F3Model
from .session import (BLOCK_FRAMES, DecoderSession, DecoderStatePool, EncoderSession,
                      EncoderStatePool, step_decoder_sessions, step_encoder_sessions)

Backend = str  # a name of the backend registry: f3stream.backends.BACKENDS

# BLOCK_FRAMES (from the sessions): offline work is regrouped into blocks of this many frames
# (~10 s), so memory stays flat whatever the input's length


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use "
                           "device='auto' to fall back to the CPU")
    return device


class Tokenizer:
    """A loaded F3 tokenizer. All arrays in and out are numpy float32.

    >>> tok = Tokenizer.load()                     # the bundled checkpoint
    >>> latents = tok.encode(wav)                  # [T, 64] at 25 Hz
    >>> reps = tok.represent(latents)              # [T, 768]
    >>> audio = tok.decode(latents)                # [T * 960] at 24 kHz
    """

    def __init__(self, model: F3Model, info: dict[str, Any] | None = None,
                 device: str | torch.device | None = "cpu", backend: Backend = "torch",
                 **backend_options: Any):
        self.device = resolve_device(device)
        if (device in (None, "auto") and self.device.type == "cuda"
                and not cuda_capable(backend)):
            self.device = torch.device("cpu")  # e.g. numba is CPU-only: "auto" falls back
        self.model = model.to(self.device).eval()
        self.info = info or {}
        self.backend = backend
        self.engine: Engine = create_engine(backend, self.model, self.device, **backend_options)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None,
             device: str | torch.device | None = "cpu", backend: Backend = "torch",
             **backend_options: Any) -> "Tokenizer":
        """Loads a checkpoint directory (default: the one bundled with the package).

        ``backend`` picks the engine that runs the model: ``"torch"`` (reference, CPU/CUDA),
        ``"numba"`` (compiled CPU kernels, fastest at batch 1) or ``"onnx"`` (ONNX Runtime;
        ``backend_options`` such as ``cache_dir`` go to the engine). All read the same weights.
        """
        path = Path(path) if path is not None else default_checkpoint_dir()
        cfg, state, info = load_checkpoint(path)
        model = F3Model(cfg)
        load_state_strict(model, state, str(path))
        return cls(model, info, device, backend, **backend_options)

    @classmethod
    def from_config(cls, cfg: TokenizerConfig | None = None, seed: int = 0,
                    device: str | torch.device | None = "cpu", backend: Backend = "torch",
                    **backend_options: Any) -> "Tokenizer":
        """A randomly initialised (untrained) tokenizer, e.g. for tests and benchmarks."""
        torch.manual_seed(seed)
        return cls(F3Model(cfg or TokenizerConfig()), {"trained": False}, device, backend,
                   **backend_options)

    def save(self, path: str | os.PathLike, info: dict[str, Any] | None = None,
             weights_dtype: torch.dtype = torch.float32) -> Path:
        return save_checkpoint(self.model, self.config, path,
                               info if info is not None else self.info, weights_dtype)

    # -- properties -------------------------------------------------------------------------
    @property
    def config(self) -> TokenizerConfig:
        return self.model.cfg

    @property
    def sample_rate(self) -> int:
        return self.config.autoencoder.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.config.autoencoder.frame_rate

    @property
    def hop_length(self) -> int:
        return self.config.autoencoder.hop_length

    @property
    def latent_dim(self) -> int:
        return self.config.autoencoder.latent_dim

    @property
    def representation_dim(self) -> int:
        return self.config.representation.output_dim

    def n_frames(self, n_samples: int) -> int:
        """Frames that ``n_samples`` of audio give (the last partial frame is zero-padded)."""
        return alignment.n_frames(n_samples, self.hop_length)

    # -- offline API ------------------------------------------------------------------------
    def encode(self, audio, sample_rate: int | None = None, progress: bool = False) -> np.ndarray:
        """Mono waveform (int16, or float in [-1, 1]) -> latents ``[T, latent_dim]``.

        ``T = ceil(len(audio) / hop_length)``; the last partial frame is zero-padded.
        """
        return self.tokenize(audio, sample_rate, representations=False, progress=progress).latents

    def tokenize(self, audio, sample_rate: int | None = None, representations: bool = True,
                 progress: bool = False) -> EncodedFrames:
        """One pass that returns latents and (optionally) representations."""
        check_sample_rate(sample_rate, self.sample_rate)
        wav = as_mono_float32(audio)
        return self._join(self._tokenize_valid([wav], representations, progress, wav.size),
                          representations)

    def tokenize_stream(self, blocks: Iterable, representations: bool = True,
                        progress: bool = False, total_samples: int | None = None
                        ) -> Iterator[EncodedFrames]:
        """Mono audio (at the model's rate) arriving in blocks of any length -> its frames,
        ``BLOCK_FRAMES`` at a time; the last partial frame is zero-padded.

        Why: a long file is encoded with memory bounded by one block. The blocks are regrouped
        so that the session makes exactly the model calls :meth:`tokenize` of the joined
        audio makes, hence the very same numbers, however the input was cut.
        """
        return self._tokenize_valid(
            (as_mono_float32(block, name="audio block", allow_empty=True) for block in blocks),
            representations, progress, total_samples)

    def _tokenize_valid(self, blocks: Iterable[np.ndarray], representations: bool,
                        progress: bool, total_samples: int | None) -> Iterator[EncodedFrames]:
        """:meth:`tokenize_stream` of blocks already validated (``as_mono_float32``)."""
        session = self.session(representations)
        unit = BLOCK_FRAMES * self.hop_length
        bar = _progress_bar(-(-total_samples // unit) if total_samples else None, progress,
                            "encode")
        units = Regrouper(unit, np.zeros(0, np.float32))
        with bar:
            for x in blocks:
                for u in units.units(x):
                    yield session.push(u, validated=True)
                    bar.update(1)
            rest = units.take_pending()
            if rest.size:  # the last partial block, padded to whole frames as tokenize pads
                yield session.push(alignment.pad_to_frames(rest, self.hop_length),
                                   validated=True)
                bar.update(1)
        session.flush()  # nothing is pending: it only closes the stream

    def represent(self, latents, progress: bool = False) -> np.ndarray:
        """Latents ``[T, latent_dim]`` -> representations ``[T, representation_dim]``."""
        z = as_latents(latents, self.latent_dim)
        state = self.engine.init_represent_state(1)
        out = []
        with _progress_bar(-(-z.shape[0] // BLOCK_FRAMES), progress, "represent") as bar:
            for a in range(0, z.shape[0], BLOCK_FRAMES):
                r, state = self.engine.represent_step(z[None, a:a + BLOCK_FRAMES], state)
                out.append(finite_output(r[0]))
                bar.update(1)
        return np.concatenate(out)

    def decode(self, latents, progress: bool = False) -> np.ndarray:
        """Latents ``[T, latent_dim]`` -> waveform ``[T * hop_length]``, aligned with the audio
        they were encoded from. The same as a :class:`DecoderSession` fed frame by frame."""
        z = as_latents(latents, self.latent_dim)
        return np.concatenate(list(self._decode_valid([z], progress, z.shape[0])))

    def decode_stream(self, latents: Iterable, progress: bool = False,
                      total_frames: int | None = None) -> Iterator[np.ndarray]:
        """Latents arriving in blocks of any number of frames -> the waveform, in pieces.

        Why: a long file is decoded with memory bounded by one block. As in
        :meth:`tokenize_stream`, blocks are regrouped into ``BLOCK_FRAMES`` frames, so the
        pieces joined equal :meth:`decode` of the joined latents exactly.
        """
        return self._decode_valid(
            (as_latents(block, self.latent_dim, allow_empty=True) for block in latents),
            progress, total_frames)

    def _decode_valid(self, latents: Iterable[np.ndarray], progress: bool,
                      total_frames: int | None) -> Iterator[np.ndarray]:
        """:meth:`decode_stream` of blocks already validated (``as_latents``)."""
        session = self.decoder_session()
        bar = _progress_bar(-(-total_frames // BLOCK_FRAMES) if total_frames else None, progress,
                            "decode")
        units = Regrouper(BLOCK_FRAMES, np.zeros((0, self.latent_dim), np.float32))
        with bar:
            for z in latents:
                for u in units.units(z):
                    yield session.push(u, validated=True)
                    bar.update(1)
            rest = units.take_pending()
            if rest.shape[0]:
                yield session.push(rest, validated=True)
                bar.update(1)
        yield session.flush()

    def encode_file(self, path: str | os.PathLike, progress: bool = False,
                    representations: bool = True) -> EncodedFrames:
        """Reads an audio file (mixing down and resampling as needed) and tokenizes it, block
        by block (:class:`~f3stream.audiofile.AudioFileReader`)."""
        with AudioFileReader(path) as f:
            return self._join(self.tokenize_stream(f.blocks(self.sample_rate), representations,
                                                   progress, f.n_samples(self.sample_rate)),
                              representations)

    # -- streaming API ----------------------------------------------------------------------
    def session(self, representations: bool = True) -> EncoderSession:
        """A new streaming encoder session (its own state)."""
        return EncoderSession(self.engine, representations)

    def session_pool(self, capacity: int, representations: bool = True) -> EncoderStatePool:
        """Room for ``capacity`` sessions (``pool.session()``) whose states are rows of one
        batched state, so :meth:`step_sessions` batches them without copying states."""
        return EncoderStatePool(self.engine, capacity, representations)

    def decoder_session(self) -> DecoderSession:
        return DecoderSession(self.engine)

    def decoder_pool(self, capacity: int) -> DecoderStatePool:
        """Room for ``capacity`` decoder sessions batched in place (see :meth:`session_pool`)."""
        return DecoderStatePool(self.engine, capacity)

    #: Pushes one chunk into each session, batching the model work across sessions
    #: (:func:`f3stream.session.step_encoder_sessions`, here for the front's users).
    step_sessions = staticmethod(step_encoder_sessions)
    #: Pushes one latent chunk into each decoder session, batching the model work
    #: (:func:`f3stream.session.step_decoder_sessions`).
    step_decoder_sessions = staticmethod(step_decoder_sessions)

    # -- internals ------------------------------------------------------------------------
    def _join(self, parts: Iterable[EncodedFrames], representations: bool) -> EncodedFrames:
        """The frames of a whole stream, from its consecutive pieces."""
        return join_frames(parts, self.latent_dim,
                           self.representation_dim if representations else None)


def _progress_bar(total: int | None, enabled: bool, what: str):
    """A tqdm bar over blocks, shown only for work of more than one block."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="block",
                disable=not enabled or (total is not None and total <= 1))
