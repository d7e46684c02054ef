"""Validation and conversion of audio handed to the tokenizer, plus file reading/writing.

The array-level API is strict (mono, known dtype, finite, the model's sample rate) and says
exactly what is wrong; the file-level helpers are convenient (mix down, resample).

The value contract lives here once, for the Python API, the CLI and the server alike: float
audio is expected in [-1, 1]; samples slightly beyond it (up to ±``CLIP_LIMIT``, e.g. the
overshoot of resampling full-scale audio) are clipped to [-1, 1] with a warning; anything
louder is rejected, as are latents beyond ±``MAX_LATENT`` (:func:`check_latent_values`), and
:func:`finite_output` keeps non-finite numbers out of everything the model returns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .errors import AudioInputError
from .fileio import atomic_path

INT16_SCALE = 32768.0
#: float audio peaking above 1 but at most this is clipped to [-1, 1]; louder is rejected (a
#: finite peak of 3e38 passed the NaN check and made every frame NaN/Inf)
CLIP_LIMIT = 4.0
#: latents beyond this magnitude are rejected: after the model's channel normalisation they
#: are O(1-10) (bundled checkpoint: max 4.9 on speech, 2-3 on full-scale noise), while
#: latents of 3e38 decoded to non-finite audio (a wav of constant -1.0 once written)
MAX_LATENT = 100.0
CLIP_WARNING = ("{name} peaks at {peak:.3g}, beyond [-1, 1]: clipped to [-1, 1] (float audio "
                f"up to ±{CLIP_LIMIT:g} is clipped, louder rejected); scale it into [-1, 1] to "
                "avoid the distortion")


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
    ``[n, 1]`` or ``[1, n]``; float samples up to ±``CLIP_LIMIT`` are clipped to [-1, 1] (with
    a warning). Rejects multichannel, other dtypes, NaN/Inf, louder float audio, and (unless
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
        x = _clip_to_contract(np.ascontiguousarray(x, dtype=np.float32), name)
    else:
        raise AudioInputError(f"{name} has dtype {x.dtype}; expected int16 PCM or float32 in "
                              "[-1, 1] (convert e.g. int32 PCM with x / 2**31)")
    if x.size == 0 and not allow_empty:
        raise AudioInputError(f"{name} is empty")
    return x


def _clip_to_contract(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` if it is within [-1, 1], else a clipped copy (see :data:`CLIP_LIMIT`)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0  # NaN when any sample is NaN
    if peak <= 1.0:
        return x
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x))
        raise AudioInputError(f"{name} contains {bad.size} NaN/Inf samples (first at index "
                              f"{bad[0]}); clean the signal before tokenizing")
    if peak > CLIP_LIMIT:
        raise AudioInputError(f"{name} peaks at {peak:.3g}, but float audio must be in [-1, 1] "
                              f"(up to ±{CLIP_LIMIT:g} is clipped); scale it, e.g. "
                              "audio / np.abs(audio).max(), or convert PCM integers to float")
    warnings.warn(CLIP_WARNING.format(name=name, peak=peak), stacklevel=3)
    return np.clip(x, -1.0, 1.0)


def clip_to_contract(x: np.ndarray, name: str = "audio") -> np.ndarray:
    """1-D float32 samples the package made itself from valid audio (a resampler's output,
    which may overshoot [-1, 1] slightly) brought within the contract: clipped to [-1, 1]
    with the contract's warning, exactly as :func:`as_mono_float32` would."""
    return _clip_to_contract(x, name)


def check_latent_values(z: np.ndarray) -> None:
    """Raises :class:`AudioInputError` unless every latent is finite and within
    ±:data:`MAX_LATENT`."""
    peak = float(np.max(np.abs(z))) if z.size else 0.0  # NaN when any value is NaN
    if peak <= MAX_LATENT:
        return
    if not np.isfinite(z).all():
        raise AudioInputError("latents contain NaN or Inf")
    raise AudioInputError(f"latents reach {peak:.3g}, beyond ±{MAX_LATENT:g}: this model's "
                          "latents are O(1-10); are they scaled, or from another model?")


def as_latents(latents, latent_dim: int, allow_empty: bool = False) -> np.ndarray:
    """Returns contiguous float32 latents ``[frames, latent_dim]``: the latent side of the
    contract (float dtype, the model's width, values per :func:`check_latent_values`, and
    unless ``allow_empty`` at least one frame)."""
    z = to_numpy(latents, "latents")
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise AudioInputError(f"latents must have shape [frames, {latent_dim}], got "
                              f"{tuple(z.shape)}")
    if z.dtype not in (np.float32, np.float64, np.float16):
        raise AudioInputError(f"latents must be float, got dtype {z.dtype}")
    z = np.ascontiguousarray(z, dtype=np.float32)
    check_latent_values(z)
    if z.shape[0] == 0 and not allow_empty:
        raise AudioInputError("latents are empty (0 frames)")
    return z


def finite_output(x: np.ndarray) -> np.ndarray:
    """``x`` with NaN/Inf replaced by 0 (and a warning): the last guard that keeps non-finite
    numbers out of what the model returns (a bug or a broken checkpoint, given valid input)."""
    if np.isfinite(x).all():
        return x
    warnings.warn("the model produced NaN/Inf; those values were replaced by 0", stacklevel=2)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def check_sample_rate(sample_rate: int | None, expected: int) -> None:
    if sample_rate is not None and int(sample_rate) != expected:
        raise AudioInputError(
            f"audio is at {sample_rate} Hz but the model expects {expected} Hz; resample it "
            f"(f3stream.audio.resample(audio, {sample_rate}, {expected})) or use the file API "
            "(Tokenizer.encode_file), which resamples for you")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples a 1-D float signal with libsoxr (``soxr.resample``, high quality): the one
    resampler of the package, so this equals what the block-wise file reader and the
    streaming :class:`f3stream.resampling.StreamResampler` give for the same signal."""
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioInputError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), int(orig_sr),
                         int(target_sr))


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
