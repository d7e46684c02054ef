"""The output folder's on-disk format: its file names, format version and shard metadata key.

Output folder layout::

    shard-00000.safetensors   one per shard; tensors
                                latents          float32 [sum of frames, latent_dim]
                                representations  float32 [sum of frames, repr_dim] (unless
                                                 --no-representations)
                                offsets          int64   [files + 1]: file i is rows
                                                 offsets[i]:offsets[i+1] (0 rows on error)
                              and, in the safetensors metadata, ``f3stream_bulk``: JSON with
                              the shard's fingerprint and one entry per file (as in the index)
    index.jsonl               one line per input file, in order: {"key", "path", "shard",
                              "row", "offset", "frames", "seconds", "sample_rate"} or
                              {"key", "path", "shard", "error"}; ``sample_rate`` is the
                              file's own rate, ``seconds`` its duration (frames / rate)
    run.json                  the settings (model digest, rates, dims, shard size) + totals

Concatenating a shard's files (rather than one tensor per file) keeps headers small and lets a
training loader read a whole shard in one go; :func:`~f3stream.bulk.load_tokenized` slices one
file out. The writer (:mod:`.shards`, :mod:`.folder`) and the reader (:mod:`.reader`) share
these names so that they cannot drift apart.
"""

from __future__ import annotations

FORMAT = "f3stream-bulk"
FORMAT_VERSION = 1
# How audio becomes model input; part of every shard's fingerprint, because a change here
# changes the tokens (files were resampled with scipy's resample_poly before soxr).
AUDIO_PIPELINE = "audiofile-blocks-soxr-hq"
INDEX_FILE = "index.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
META_KEY = "f3stream_bulk"
SHARD_GLOB = "shard-*.safetensors"


def shard_name(index: int) -> str:
    """The file name of shard ``index`` (zero-padded, so names sort in shard order)."""
    return f"shard-{index:05d}.safetensors"
