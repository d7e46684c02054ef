"""Reading and writing token files (``.npz``): the one on-disk format of ``f3stream encode``.

A token file is a plain numpy ``.npz`` archive (no pickled objects) holding

* ``latents``          float32 ``[frames, latent_dim]``  (always)
* ``representations``  float32 ``[frames, representation_dim]``  (optional)
* ``sample_rate``      int scalar: the model's audio rate (e.g. 24000)
* ``frame_rate``       int scalar: latent frames per second (e.g. 25)

Writes are atomic; reads validate everything and raise :class:`TokensFileError` (an
:class:`~f3stream.errors.AudioInputError`) with a message that names the file and the problem.
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AudioInputError
from .fileio import atomic_path
from .session import EncodedFrames


class TokensFileError(AudioInputError):
    """A token file is missing, unreadable, or does not hold valid latents."""


@dataclass
class Tokens:
    """The content of a token file."""

    latents: np.ndarray                    # [frames, latent_dim] float32
    representations: np.ndarray | None     # [frames, representation_dim] float32, or None
    sample_rate: int | None                # None only for files written by other tools
    frame_rate: int | None

    @property
    def n_frames(self) -> int:
        return int(self.latents.shape[0])


def save_tokens(path: str | os.PathLike, frames: EncodedFrames, sample_rate: int,
                frame_rate: int) -> Path:
    """Writes ``frames`` (latents, and representations unless they are None) atomically."""
    path = Path(path)
    arrays = {"latents": np.ascontiguousarray(frames.latents, dtype=np.float32),
              "sample_rate": np.asarray(int(sample_rate), dtype=np.int64),
              "frame_rate": np.asarray(int(frame_rate), dtype=np.int64)}
    if frames.representations is not None:
        arrays["representations"] = np.ascontiguousarray(frames.representations,
                                                         dtype=np.float32)
    # np.savez appends ".npz" to a *filename* that lacks it; through a handle it writes exactly
    # the temp file that atomic_path renames into place.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_tokens(path: str | os.PathLike) -> Tokens:
    """Reads and validates a token file. Raises :class:`TokensFileError`."""
    path = Path(path)
    if not path.exists():
        raise TokensFileError(f"tokens file not found: {path}")
    if not path.is_file():
        raise TokensFileError(f"{path} is not a file (expected a .npz written by "
                              "`f3stream encode`)")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise TokensFileError(f"{path} holds a single .npy array, not an .npz archive; "
                              "expected a file written by `f3stream encode`")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise TokensFileError(f"{path} is not an .npz archive (no zip signature); expected a "
                              "file written by `f3stream encode`")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except TokensFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            pickle.UnpicklingError) as e:
        raise TokensFileError(f"cannot read tokens file {path}: not a valid .npz archive "
                              f"({type(e).__name__}: {e})") from None

    if "latents" not in arrays:
        raise TokensFileError(f"{path} has no 'latents' array (it holds "
                              f"{sorted(arrays) or 'nothing'}); expected a file written by "
                              "`f3stream encode`")
    latents = _float_matrix(arrays["latents"], "latents", path)
    reps = None
    if "representations" in arrays:
        reps = _float_matrix(arrays["representations"], "representations", path)
        if reps.shape[0] != latents.shape[0]:
            raise TokensFileError(f"{path}: 'representations' has {reps.shape[0]} frames but "
                                  f"'latents' has {latents.shape[0]}")
    return Tokens(latents, reps, _rate(arrays, "sample_rate", path),
                  _rate(arrays, "frame_rate", path))


def _float_matrix(x: np.ndarray, name: str, path: Path) -> np.ndarray:
    if x.ndim != 2:
        raise TokensFileError(f"{path}: '{name}' must have shape [frames, dim], got "
                              f"{tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise TokensFileError(f"{path}: '{name}' must be a float array, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise TokensFileError(f"{path}: '{name}' contains NaN or Inf")
    return x


def _rate(arrays: dict[str, np.ndarray], name: str, path: Path) -> int | None:
    if name not in arrays:
        return None
    x = arrays[name]
    if x.shape != () or x.dtype.kind not in "iu" or int(x) <= 0:
        raise TokensFileError(f"{path}: '{name}' must be a positive integer scalar, got "
                              f"{x.dtype} array of shape {tuple(x.shape)}")
    return int(x)
