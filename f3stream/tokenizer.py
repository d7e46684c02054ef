"""The public API: load a checkpoint, encode / represent / decode, open streaming sessions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .audio import as_mono_float32, check_sample_rate, load_audio, to_numpy
from .backends import Engine, create_engine, cuda_capable
from .checkpoint import default_checkpoint_dir, load_checkpoint, load_state_strict, save_checkpoint
from .config import TokenizerConfig
from .errors import AudioInputError
from .model import F3Model
from .session import (DecoderSession, DecoderStatePool, EncodedFrames, EncoderSession,
                      EncoderStatePool, step_decoder_sessions, step_encoder_sessions)
from .streaming import State

Backend = Literal["torch", "numba", "onnx"]

BLOCK_FRAMES = 256  # offline work is cut into blocks of this many frames (~10 s): flat memory


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
        return -(-n_samples // self.hop_length)

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
        pad = (-wav.size) % self.hop_length
        if pad:
            wav = np.concatenate([wav, np.zeros(pad, np.float32)])
        state = self.engine.init_encode_state(1, representations)
        lat, rep = self._encode_array(wav, state, 0, progress)
        return EncodedFrames(0, lat, rep)

    def represent(self, latents, progress: bool = False) -> np.ndarray:
        """Latents ``[T, latent_dim]`` -> representations ``[T, representation_dim]``."""
        z = self._check_latents(latents)
        state = self.engine.init_represent_state(1)
        out = []
        for a in _blocks(z.shape[0], progress, "represent"):
            r, state = self.engine.represent_step(z[None, a:a + BLOCK_FRAMES], state)
            out.append(r[0])
        return np.concatenate(out)

    def decode(self, latents, progress: bool = False) -> np.ndarray:
        """Latents ``[T, latent_dim]`` -> waveform ``[T * hop_length]``, aligned with the audio
        they were encoded from. The same as a :class:`DecoderSession` fed frame by frame."""
        z = self._check_latents(latents)
        session = self.decoder_session()
        parts = [session.push(z[a:a + BLOCK_FRAMES])
                 for a in _blocks(z.shape[0], progress, "decode")]
        parts.append(session.flush())
        return np.concatenate(parts)

    def encode_file(self, path: str | os.PathLike, progress: bool = False) -> EncodedFrames:
        """Reads an audio file (mixing down and resampling as needed) and tokenizes it."""
        wav, _ = load_audio(path, self.sample_rate)
        return self.tokenize(wav, progress=progress)

    # -- streaming API ----------------------------------------------------------------------
    def session(self, representations: bool = True) -> EncoderSession:
        """A new streaming encoder session (its own state)."""
        return EncoderSession(self, representations)

    def session_pool(self, capacity: int, representations: bool = True) -> EncoderStatePool:
        """Room for ``capacity`` sessions (``pool.session()``) whose states are rows of one
        batched state, so :meth:`step_sessions` batches them without copying states."""
        return EncoderStatePool(self, capacity, representations)

    def decoder_session(self) -> DecoderSession:
        return DecoderSession(self)

    def decoder_pool(self, capacity: int) -> DecoderStatePool:
        """Room for ``capacity`` decoder sessions batched in place (see :meth:`session_pool`)."""
        return DecoderStatePool(self, capacity)

    @staticmethod
    def step_decoder_sessions(sessions: Sequence[DecoderSession], latents: Sequence
                              ) -> list[np.ndarray]:
        """Pushes one latent chunk into each decoder session, batching the model work."""
        return step_decoder_sessions(sessions, latents)

    @staticmethod
    def step_sessions(sessions: Sequence[EncoderSession], chunks: Sequence
                      ) -> list[EncodedFrames]:
        """Pushes one chunk into each session, batching the model work across sessions."""
        return step_encoder_sessions(sessions, chunks)

    # -- internals shared by the offline and streaming paths -------------------------------
    def _encode_array(self, wav: np.ndarray, state: State, row: int = 0, progress: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Whole frames of samples -> (latents, representations or None), advancing the stream
        at row ``row`` of the batched ``state`` in place."""
        n = wav.size // self.hop_length
        lat, rep = [], []
        rows = np.array([row], dtype=np.int64)
        for a in _blocks(n, progress, "encode"):
            chunk = wav[a * self.hop_length:(a + BLOCK_FRAMES) * self.hop_length]
            z, r = self.engine.encode_rows(chunk[None], state, rows)
            lat.append(z[0])
            if r is not None:
                rep.append(r[0])
        with_reps = self.engine.has_representations(state)
        latents = np.concatenate(lat) if lat else np.zeros((0, self.latent_dim), np.float32)
        reps = None
        if with_reps:
            reps = (np.concatenate(rep) if rep
                    else np.zeros((0, self.representation_dim), np.float32))
        return latents, reps

    def _decode_array(self, z: np.ndarray, state: State, row: int = 0) -> np.ndarray:
        """Latent frames -> samples, advancing the stream at row ``row`` of ``state``."""
        if z.shape[0] == 0:
            return np.zeros(0, np.float32)
        return self.engine.decode_rows(z[None], state, np.array([row], dtype=np.int64))[0]

    def _check_latents(self, latents, allow_empty: bool = False) -> np.ndarray:
        z = to_numpy(latents, "latents")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise AudioInputError(f"latents must have shape [frames, {self.latent_dim}], got "
                                  f"{tuple(z.shape)}")
        if z.dtype not in (np.float32, np.float64, np.float16):
            raise AudioInputError(f"latents must be float, got dtype {z.dtype}")
        z = np.ascontiguousarray(z, dtype=np.float32)
        if not np.isfinite(z).all():
            raise AudioInputError("latents contain NaN or Inf")
        if z.shape[0] == 0 and not allow_empty:
            raise AudioInputError("latents are empty (0 frames)")
        return z


def _blocks(n_frames: int, progress: bool, what: str):
    starts = range(0, n_frames, BLOCK_FRAMES)
    if progress and n_frames > BLOCK_FRAMES:
        from tqdm import tqdm
        return tqdm(starts, desc=what, unit="block", total=len(starts))
    return starts
