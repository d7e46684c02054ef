"""One shard: tokenizing its files into a safetensors file, and reading its metadata back.

The same :func:`process_shard` runs in this process, in a pool worker and in a Ray task, so
every engine writes identical shards. The file is written atomically: a shard on disk is
always complete, which is what lets a killed run resume from the shards it finds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audiofile import AudioFileReader
from ..errors import F3StreamError
from ..fileio import atomic_write_bytes
from .layout import FORMAT, FORMAT_VERSION, META_KEY
from .plan import ShardJob

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

# Per-file failures that mean "this input is bad", not "the job is broken".
FILE_ERRORS = (F3StreamError, OSError, RuntimeError, ValueError, EOFError)


def process_shard(job: ShardJob, tok: Tokenizer, on_file: Callable[[], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Tokenizes a shard's files with ``tok`` and writes the shard atomically; returns its
    entries. Bad inputs become error entries; anything else (e.g. a full disk) raises."""
    from safetensors.numpy import save

    entries: list[dict[str, Any]] = []
    lats, reps, offsets = [], [], [0]
    for row, f in enumerate(job.files):
        entry: dict[str, Any] = {"key": f.key, "path": f.path}
        try:
            with AudioFileReader(f.path) as audio:  # its header: checked, rate and length
                file_sr, seconds = audio.sample_rate, audio.frames / audio.sample_rate
            frames = tok.encode_file(f.path, representations=job.representations)
        except FILE_ERRORS as e:
            entry["error"] = " ".join((str(e) or type(e).__name__).split())
        else:
            lats.append(frames.latents)
            if job.representations:
                reps.append(frames.representations)
            entry.update(row=row, offset=offsets[-1], frames=frames.n_frames,
                         seconds=round(seconds, 6), sample_rate=file_sr)
        offsets.append(offsets[-1] + entry.get("frames", 0))
        entries.append(entry)
        if on_file is not None:
            on_file()
    tensors = {"latents": _concat(lats, tok.latent_dim),
               "offsets": np.asarray(offsets, dtype=np.int64)}
    if job.representations:
        tensors["representations"] = _concat(reps, tok.representation_dim)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": job.index,
            "fingerprint": job.fingerprint, "files": entries}
    atomic_write_bytes(job.out_path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return entries


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def read_shard_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The shard's metadata, or None if it is missing, unreadable or not ours."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "null"))
    except Exception:  # noqa: BLE001 - any unreadable shard is simply recomputed
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta
