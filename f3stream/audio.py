"""Validation and conversion of audio handed to the tokenizer, plus file reading/writing.

The array-level API is strict (mono, known dtype, finite, the model's sample rate) and says
exactly what is wrong; the file-level helpers are convenient (mix down, resample).
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np

from .errors import AudioInputError
from .fileio import atomic_path

INT16_SCALE = 32768.0


def to_numpy(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = _to_numpy_foreign(x, name)
    if not x.dtype.isnative:  # e.g. big-endian '>f4' read from a file: same data, native order
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def _to_numpy_foreign(x, name: str) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            if x.dtype == torch.bfloat16:  # numpy has no bfloat16
                raise AudioInputError(f"{name} is a bfloat16 tensor; convert it with .float() "
                                      "first")
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x, dtype=np.float32)
        except (ValueError, TypeError) as e:
            raise AudioInputError(f"{name}: cannot convert the {type(x).__name__} to a float32 "
                                  f"array ({e}); pass a numpy array of numbers") from None
    raise AudioInputError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def as_mono_float32(audio, name: str = "audio", allow_empty: bool = False) -> np.ndarray:
    """Returns a contiguous 1-D float32 copy-or-view of ``audio``.

    Accepts int16 PCM (scaled by 1/32768) or float32/float64 in [-1, 1], shaped ``[n]``,
    ``[n, 1]`` or ``[1, n]``. Rejects multichannel, other dtypes, NaN/Inf, and (unless
    ``allow_empty``) empty input.
    """
    x = to_numpy(audio, name)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        hint = (" Multichannel audio is not supported: mix it down to mono first, e.g. "
                "audio.mean(axis=1) for a [samples, channels] array.") if x.ndim == 2 else ""
        raise AudioInputError(f"{name} must be mono (1-D), got shape {tuple(x.shape)}.{hint}")
    if x.dtype == np.int16:
        x = x.astype(np.float32) / INT16_SCALE
    elif x.dtype in (np.float32, np.float64):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x))
            raise AudioInputError(f"{name} contains {bad.size} NaN/Inf samples (first at index "
                                  f"{bad[0]}); clean the signal before tokenizing")
    else:
        raise AudioInputError(f"{name} has dtype {x.dtype}; expected int16 PCM or float32 in "
                              "[-1, 1] (convert e.g. int32 PCM with x / 2**31)")
    if x.size == 0 and not allow_empty:
        raise AudioInputError(f"{name} is empty")
    return x


def check_sample_rate(sample_rate: int | None, expected: int) -> None:
    if sample_rate is not None and int(sample_rate) != expected:
        raise AudioInputError(
            f"audio is at {sample_rate} Hz but the model expects {expected} Hz; resample it "
            f"(f3stream.audio.resample(audio, {sample_rate}, {expected})) or use the file API "
            "(Tokenizer.encode_file), which resamples for you")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy) of a 1-D float signal."""
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioInputError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, target_sr // g, orig_sr // g).astype(np.float32)


def load_audio(path: str | os.PathLike, target_sr: int) -> tuple[np.ndarray, int]:
    """Reads any file libsndfile knows (wav, flac, ogg, ...), mixes to mono, resamples to
    ``target_sr``. Returns (float32 samples, the file's original sample rate)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioInputError(f"cannot read audio file {path}: {e}") from None
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = as_mono_float32(wav, name=str(path))
    return resample(wav, sr, target_sr), sr


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Writes 16-bit PCM (format from the suffix, e.g. .wav/.flac) atomically, clipping to
    [-1, 1]."""
    import soundfile as sf

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format=fmt)
    return path
