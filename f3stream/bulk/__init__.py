"""Bulk tokenization of a corpus: ``f3stream tokenize DIR_OR_MANIFEST --out DIR``.

Inputs are a folder (searched recursively for audio) or a JSON-lines manifest (the corpus
format: one ``{"path", "text", "speaker", "split", "source"}`` object per line, relative paths
resolving against the manifest's folder). Files are sorted by key (the path relative to the
folder / manifest folder) and cut into shards of ``shard_size`` files, so the plan, and
therefore every output, depends only on the inputs and the settings, not on the worker count.
The output is safetensors shards plus ``index.jsonl`` and ``run.json`` (:mod:`.layout`).

Every file is written atomically, and a shard records a fingerprint of its model, settings and
input files (key, size, mtime). A re-run skips shards whose fingerprint matches, so an
interrupted run (Ctrl-C, SIGTERM, ``kill -9``, a killed machine) resumes where it stopped, and
the index is always rebuilt from the shards themselves. Worker processes die with the parent
however it dies (they watch a pipe only the parent writes to); Ctrl-C and SIGTERM also index
the complete shards before exiting (130, 143). A file that cannot be read or tokenized is
recorded as an error in its shard and the job goes on.

Modules, in the order a run uses them:

* :mod:`.inputs`: which files (a folder's audio or a manifest's), sorted by key;
* :mod:`.plan`: the shards, each with the fingerprint that decides whether a re-run skips it;
* :mod:`.shards`: one shard tokenized and written (the same function for every engine);
* :mod:`.workers`: where shards are computed: here, a process pool, or Ray tasks;
* :mod:`.folder`: the output folder's lock, settings check, cleanup, index and run.json;
* :mod:`.run`: :func:`tokenize_corpus`, which ties them together, and SIGTERM handling;
* :mod:`.reader`: :class:`TokenizedCorpus` / :func:`load_tokenized` read the output back;
* :mod:`.cli`: the ``f3stream tokenize`` command;
* :mod:`.layout` (file names, format version) and :mod:`.errors` (:class:`BulkError`).
"""

from .cli import cmd_tokenize, register
from .errors import BulkError
from .inputs import BASE_SUFFIXES, InputFile, audio_suffixes, collect_inputs
from .layout import (AUDIO_PIPELINE, FORMAT, FORMAT_VERSION, INDEX_FILE, LOCK_FILE, META_KEY,
                     RUN_FILE, SHARD_GLOB, shard_name)
from .plan import DEFAULT_SHARD_SIZE, ShardJob, model_digest, plan_shards
from .reader import TokenizedCorpus, load_tokenized
from .run import RunSummary, Terminated, tokenize_corpus
from .shards import FILE_ERRORS, process_shard, read_shard_meta
from .workers import _worker_init  # noqa: F401 - tests run the real worker initializer

__all__ = [
    "AUDIO_PIPELINE", "BASE_SUFFIXES", "BulkError", "DEFAULT_SHARD_SIZE", "FILE_ERRORS",
    "FORMAT", "FORMAT_VERSION", "INDEX_FILE", "InputFile", "LOCK_FILE", "META_KEY", "RUN_FILE",
    "RunSummary", "SHARD_GLOB", "ShardJob", "Terminated", "TokenizedCorpus", "audio_suffixes",
    "cmd_tokenize", "collect_inputs", "load_tokenized", "model_digest", "plan_shards",
    "process_shard", "read_shard_meta", "register", "shard_name", "tokenize_corpus",
]
