"""The plan of a run: which files go into which shard, and each shard's fingerprint.

Files are cut into shards of ``shard_size`` in key order, so the plan depends only on the
inputs and the settings, not on the worker count. A shard's fingerprint covers the model, the
settings and its input files (key, size, mtime); a re-run skips shards whose fingerprint
matches, which is what makes an interrupted run resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BulkError
from .inputs import InputFile
from .layout import AUDIO_PIPELINE, FORMAT_VERSION, shard_name

DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to produce one shard (picklable, for processes and Ray)."""
    index: int
    files: tuple[InputFile, ...]
    out_path: str
    fingerprint: str
    representations: bool


def model_digest(checkpoint: str | os.PathLike | None) -> tuple[str, dict[str, Any]]:
    """(digest of config + weights, model facts) of a checkpoint that passed
    :func:`~f3stream.checkpoint.verify_checkpoint` (which reads no tensor and builds no model),
    so a broken checkpoint is one error here instead of a worker dying at start-up."""
    from ..checkpoint import WEIGHTS_FILE, default_checkpoint_dir, sha256_file, verify_checkpoint

    path, cfg, meta = verify_checkpoint(checkpoint if checkpoint is not None
                                        else default_checkpoint_dir())
    weights = meta.get("weights_sha256") or sha256_file(path / WEIGHTS_FILE)
    digest = hashlib.sha256(json.dumps([meta.get("config"), weights],
                                       sort_keys=True).encode()).hexdigest()
    ae = cfg.autoencoder
    return digest, {"sample_rate": ae.sample_rate, "frame_rate": ae.frame_rate,
                    "latent_dim": ae.latent_dim,
                    "representation_dim": cfg.representation.output_dim}


def _file_stamp(f: InputFile) -> list[Any]:
    try:
        st = os.stat(f.path)
        return [f.key, st.st_size, st.st_mtime_ns]
    except OSError:
        return [f.key, -1, -1]


def plan_shards(files: Sequence[InputFile], out_dir: str | os.PathLike, shard_size: int,
                representations: bool, digest: str) -> list[ShardJob]:
    """Cuts ``files`` into shards; a shard's fingerprint changes whenever its output would."""
    if shard_size < 1:
        raise BulkError(f"--shard-size must be at least 1, got {shard_size}")
    jobs = []
    for i, a in enumerate(range(0, len(files), shard_size)):
        chunk = tuple(files[a:a + shard_size])
        fp = hashlib.sha256(json.dumps(
            [FORMAT_VERSION, AUDIO_PIPELINE, digest, representations,
             [_file_stamp(f) for f in chunk]]
        ).encode()).hexdigest()
        jobs.append(ShardJob(i, chunk, str(Path(out_dir) / shard_name(i)), fp, representations))
    return jobs
