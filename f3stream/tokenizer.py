"""The public API: load a checkpoint, encode / represent / decode, open streaming sessions."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .audio import (as_mono_float32, check_latent_values, check_sample_rate, finite_output,
                    to_numpy)
from .audiofile import AudioFileReader
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
        return self._join(self.tokenize_stream([wav], representations, progress, wav.size),
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
        session = self.session(representations)
        unit = BLOCK_FRAMES * self.hop_length
        bar = _progress_bar(-(-total_samples // unit) if total_samples else None, progress,
                            "encode")
        buf = np.zeros(0, np.float32)
        with bar:
            for block in blocks:
                x = as_mono_float32(block, name="audio block", allow_empty=True)
                buf = np.concatenate([buf, x]) if buf.size else x
                n_units = buf.size // unit
                for i in range(n_units):
                    yield session.push(buf[i * unit:(i + 1) * unit])
                    bar.update(1)
                buf = buf[n_units * unit:]
            if buf.size:  # the last partial block, padded to whole frames as tokenize pads
                pad = (-buf.size) % self.hop_length
                yield session.push(np.concatenate([buf, np.zeros(pad, np.float32)]))
                bar.update(1)
        session.flush()  # nothing is pending: it only closes the stream

    def represent(self, latents, progress: bool = False) -> np.ndarray:
        """Latents ``[T, latent_dim]`` -> representations ``[T, representation_dim]``."""
        z = self._check_latents(latents)
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
        z = self._check_latents(latents)
        return np.concatenate(list(self.decode_stream([z], progress, z.shape[0])))

    def decode_stream(self, latents: Iterable, progress: bool = False,
                      total_frames: int | None = None) -> Iterator[np.ndarray]:
        """Latents arriving in blocks of any number of frames -> the waveform, in pieces.

        Why: a long file is decoded with memory bounded by one block. As in
        :meth:`tokenize_stream`, blocks are regrouped into ``BLOCK_FRAMES`` frames, so the
        pieces joined equal :meth:`decode` of the joined latents exactly.
        """
        session = self.decoder_session()
        bar = _progress_bar(-(-total_frames // BLOCK_FRAMES) if total_frames else None, progress,
                            "decode")
        buf = np.zeros((0, self.latent_dim), np.float32)
        with bar:
            for block in latents:
                z = self._check_latents(block, allow_empty=True)
                buf = np.concatenate([buf, z]) if buf.shape[0] else z
                n_units = buf.shape[0] // BLOCK_FRAMES
                for i in range(n_units):
                    yield session.push(buf[i * BLOCK_FRAMES:(i + 1) * BLOCK_FRAMES])
                    bar.update(1)
                buf = buf[n_units * BLOCK_FRAMES:]
            if buf.shape[0]:
                yield session.push(buf)
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
    def _join(self, parts: Iterable[EncodedFrames], representations: bool) -> EncodedFrames:
        """The frames of a whole stream, from its consecutive pieces."""
        parts = list(parts)
        lat = [p.latents for p in parts] or [np.zeros((0, self.latent_dim), np.float32)]
        rep = None
        if representations:
            rep = np.concatenate([p.representations for p in parts] or
                                 [np.zeros((0, self.representation_dim), np.float32)])
        return EncodedFrames(0, np.concatenate(lat), rep)

    def _encode_array(self, wav: np.ndarray, state: State, row: int = 0
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Whole frames of samples -> (latents, representations or None), advancing the stream
        at row ``row`` of the batched ``state`` in place."""
        n = wav.size // self.hop_length
        lat, rep = [], []
        rows = np.array([row], dtype=np.int64)
        for a in range(0, n, BLOCK_FRAMES):
            chunk = wav[a * self.hop_length:(a + BLOCK_FRAMES) * self.hop_length]
            z, r = self.engine.encode_rows(chunk[None], state, rows)
            lat.append(finite_output(z[0]))
            if r is not None:
                rep.append(finite_output(r[0]))
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
        return finite_output(
            self.engine.decode_rows(z[None], state, np.array([row], dtype=np.int64))[0])

    def _check_latents(self, latents, allow_empty: bool = False) -> np.ndarray:
        z = to_numpy(latents, "latents")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise AudioInputError(f"latents must have shape [frames, {self.latent_dim}], got "
                                  f"{tuple(z.shape)}")
        if z.dtype not in (np.float32, np.float64, np.float16):
            raise AudioInputError(f"latents must be float, got dtype {z.dtype}")
        z = np.ascontiguousarray(z, dtype=np.float32)
        check_latent_values(z)
        if z.shape[0] == 0 and not allow_empty:
            raise AudioInputError("latents are empty (0 frames)")
        return z


def _progress_bar(total: int | None, enabled: bool, what: str):
    """A tqdm bar over blocks, shown only for work of more than one block."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="block",
                disable=not enabled or (total is not None and total <= 1))
