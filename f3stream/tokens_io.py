"""Reading and writing token files (``.npz``): the one on-disk format of ``f3stream encode``.

A token file is a plain numpy ``.npz`` archive (no pickled objects) holding

* ``latents``          float32 ``[frames, latent_dim]``  (always)
* ``representations``  float32 ``[frames, representation_dim]``  (optional)
* ``sample_rate``      int scalar: the model's audio rate (e.g. 24000)
* ``frame_rate``       int scalar: latent frames per second (e.g. 25)

Writes are atomic and go through :class:`TokensWriter`, which takes the frames piece by piece
(memory does not grow with the file); reads validate everything and raise
:class:`TokensFileError` (an :class:`~f3stream.errors.AudioInputError`) with a message that
names the file and the problem.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from .errors import AudioInputError
from .fileio import atomic_path
from .frames import EncodedFrames


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
    reps = frames.representations
    with TokensWriter(path, sample_rate, frame_rate, frames.latents.shape[-1],
                      None if reps is None else reps.shape[-1]) as writer:
        writer.write(frames)
    return Path(path)


class TokensWriter:
    """Writes a token file from consecutive :class:`EncodedFrames` pieces.

    Why: the representations of an hour of audio are 276 MB. Pieces are appended to unnamed
    temporary files beside the output (gone even if the process is killed) and copied into
    the ``.npz`` when the ``with`` block ends, so memory stays at one piece. The archive is
    what ``np.savez`` writes (stored ``.npy`` members); it appears atomically, or not at all
    if the block raises.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, frame_rate: int,
                 latent_dim: int, representation_dim: int | None = None):
        """``representation_dim=None``: a file of latents only."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample_rate, self.frame_rate = int(sample_rate), int(frame_rate)
        self._dims = {"latents": int(latent_dim)}
        if representation_dim is not None:
            self._dims["representations"] = int(representation_dim)
        self._parts = {n: tempfile.TemporaryFile(dir=self.path.parent) for n in self._dims}
        self.n_frames = 0

    def write(self, frames: EncodedFrames) -> None:
        """Appends the next piece of the stream."""
        if (frames.representations is not None) != ("representations" in self._dims):
            raise ValueError("every piece must agree with the writer on representations")
        for name, f in self._parts.items():
            x = np.ascontiguousarray(getattr(frames, name), dtype="<f4")
            if x.shape != (frames.n_frames, self._dims[name]):
                raise ValueError(f"{name} piece of shape {x.shape} does not continue the "
                                 f"[frames, {self._dims[name]}] array")
            f.write(x.data)
        self.n_frames += frames.n_frames

    def _finish(self) -> None:
        with atomic_path(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                            allowZip64=True) as zf:
            for name, f in self._parts.items():
                shape = (self.n_frames, self._dims[name])
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array_header_1_0(
                        out, {"descr": "<f4", "fortran_order": False, "shape": shape})
                    f.seek(0)
                    shutil.copyfileobj(f, out, 1 << 18)
            for name, value in (("sample_rate", self.sample_rate),
                                ("frame_rate", self.frame_rate)):
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(value, dtype=np.int64))

    def __enter__(self) -> TokensWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            for f in self._parts.values():
                f.close()


def load_tokens(path: str | os.PathLike, representations: bool = True) -> Tokens:
    """Reads and validates a token file. Raises :class:`TokensFileError`.
    ``representations=False`` leaves them unread (None): decoding needs only the latents,
    and the representations are 12x their size."""
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
            arrays = {k: data[k] for k in data.files
                      if representations or k != "representations"}
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
