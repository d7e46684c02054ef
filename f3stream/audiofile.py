"""Audio files read and written block by block, so memory does not grow with a file's length.

:class:`AudioFileReader` reads soundfile blocks, mixes each to mono and resamples it with a
streaming resampler (``soxr.ResampleStream``): its blocks, joined, are exactly what the same
resampler gives over the whole file (libsoxr's output does not depend on how its input is
cut). :class:`AudioFileWriter` writes 16-bit PCM blocks atomically; the file is byte for byte
the one a single write of the joined blocks gives.

A file whose header announces more audio than it holds (a partial copy or download, e.g. a wav
cut at 1000 bytes) is an :class:`~f3stream.errors.AudioInputError`, not a silently shorter
result: libsndfile clamps the length to what is there and only notes the disagreement in its
parse log, which is where :func:`_header_overrun` finds it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from .audio import as_mono_float32
from .errors import AudioInputError
from .fileio import atomic_path

READ_BLOCK_FRAMES = 1 << 17   # file frames per read (2.7 s at 48 kHz; 5.5 MiB at 192 kHz x 8 ch)
UNKNOWN_SIZE = 0xFFFFFFFF     # what streaming writers put in a RIFF size field they cannot seek to
# libsndfile's parse log: "data : 96000 (should be 956)" (wav, aiff's SSND, au's Data Size, ...)
_SHOULD_BE = re.compile(r"^\s*(?P<what>[^:\n]*?)\s*:\s*(?P<said>\d+)\s*\(should be (?P<is>\d+)\)",
                        re.MULTILINE)
# rf64: "*** Calculated frame count 143989 does not match value from 'ds64' chunk of 240000."
_FRAME_COUNT = re.compile(r"Calculated frame count (?P<is>\d+) does not match value from "
                          r"'ds64' chunk of (?P<said>\d+)")


def _header_overrun(log: str) -> str | None:
    """What a header announces beyond the end of the file, in words, or None. Of several
    overrunning chunks the last is named: the innermost (wav: RIFF, then data)."""
    m = _FRAME_COUNT.search(log)
    if m and int(m["said"]) > int(m["is"]):
        return f"its header announces {m['said']} frames but the file holds {m['is']}"
    overruns = [m for m in _SHOULD_BE.finditer(log)
                if int(m["said"]) > int(m["is"]) and int(m["said"]) != UNKNOWN_SIZE]
    if not overruns:
        return None
    m = overruns[-1]
    return f"its header announces {m['said']} bytes of '{m['what']}' but the file holds {m['is']}"


class AudioFileReader:
    """An open audio file (any format libsndfile reads) whose :meth:`blocks` are mono float32
    at a chosen rate. Opening checks the header, so a bad file fails before any model work.

    >>> with AudioFileReader("speech.flac") as f:
    ...     for block in f.blocks(24000):
    ...         session.push(block)
    """

    def __init__(self, path: str | os.PathLike, block_frames: int | None = None):
        import soundfile as sf

        self.path = Path(path)
        self.block_frames = int(block_frames or READ_BLOCK_FRAMES)
        if not self.path.is_file():
            raise AudioInputError(f"audio file not found: {self.path}")
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise AudioInputError(f"cannot read audio file {self.path}: {e}") from None
        try:
            self._check_header()
        except BaseException:
            self._file.close()
            raise

    def _check_header(self) -> None:
        overrun = _header_overrun(self._file.extra_info)
        if overrun:
            raise AudioInputError(f"{self.path} is truncated: {overrun}, so the end of the audio "
                                  "is missing (a partial copy or download?). Copy it again; to "
                                  "use what is there, rewrite it first (e.g. sox in.wav out.wav)")
        if self.frames == 0:
            raise AudioInputError(f"{self.path} is empty")

    @property
    def sample_rate(self) -> int:
        """The file's own rate."""
        return int(self._file.samplerate)

    @property
    def channels(self) -> int:
        return int(self._file.channels)

    @property
    def frames(self) -> int:
        """Frames (samples per channel) in the file."""
        return int(self._file.frames)

    def n_samples(self, sample_rate: int) -> int:
        """About how many samples :meth:`blocks` gives at ``sample_rate`` (for progress bars)."""
        return round(self.frames * sample_rate / self.sample_rate)

    def blocks(self, sample_rate: int) -> Iterator[np.ndarray]:
        """The whole file from its start as 1-D float32 blocks at ``sample_rate``: channels
        averaged, then resampled by one ``soxr.ResampleStream`` (none if the rates agree)."""
        import soundfile as sf

        if sample_rate <= 0:
            raise AudioInputError(f"sample rates must be positive, got {sample_rate}")
        stream = None
        if sample_rate != self.sample_rate:
            import soxr

            stream = soxr.ResampleStream(self.sample_rate, sample_rate, 1, dtype="float32")
        self._file.seek(0)
        done = 0
        while True:
            try:
                data = self._file.read(self.block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioInputError(f"cannot read audio file {self.path} after frame {done}: "
                                      f"{e}") from None
            if data.shape[0] == 0:
                break
            mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy()
            done, n = done + data.shape[0], data.shape[0]
            del data  # not held while the consumer works on the block
            try:
                mono = as_mono_float32(mono, name=str(self.path))
            except AudioInputError as e:
                raise AudioInputError(f"{e} (in the block that starts at frame {done - n})"
                                      ) from None
            yield stream.resample_chunk(mono) if stream is not None else mono
        if done < self.frames:
            raise AudioInputError(f"{self.path} is truncated: it ended after {done} of the "
                                  f"{self.frames} frames its header announces")
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioFileReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AudioFileWriter:
    """Writes mono 16-bit PCM (format from the suffix: .wav, .flac, ...) block by block,
    clipping to [-1, 1]. Atomic: the file appears complete when the ``with`` block ends, or not
    at all if it raises."""

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        import soundfile as sf

        self.path = Path(path)
        self.samples = 0
        fmt = self.path.suffix.lstrip(".").upper() or "WAV"
        self._stack = contextlib.ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(self.path))
            self._file = self._stack.enter_context(
                sf.SoundFile(str(tmp), "w", sample_rate, 1, "PCM_16", format=fmt))
        except BaseException:
            self._stack.close()
            raise

    def write(self, block: np.ndarray) -> None:
        if block.size:
            self._file.write(np.clip(block, -1.0, 1.0))
            self.samples += block.size

    def __enter__(self) -> AudioFileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.__exit__(exc_type, exc, tb)  # closes the file, then renames or removes it
