"""The ``f3stream tokenize`` subcommand, registered into the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import sys

from ..commandline import add_command, add_model_options, model_spec
from .errors import BulkError
from .layout import INDEX_FILE, RUN_FILE
from .plan import DEFAULT_SHARD_SIZE
from .run import Terminated, sigterm_stops_the_run, tokenize_corpus


def cmd_tokenize(args: argparse.Namespace) -> int:
    model = model_spec(args)  # the workers load it; a missing GPU fails here, once
    if args.workers is not None and args.workers < 1:
        raise BulkError(f"--workers must be at least 1, got {args.workers}")
    try:
        with sigterm_stops_the_run():
            s = tokenize_corpus(args.input, args.out, checkpoint=model.checkpoint,
                                device=model.device, backend=model.backend,
                                representations=not args.no_representations,
                                shard_size=args.shard_size, workers=args.workers,
                                engine=args.engine, overwrite=args.overwrite,
                                progress=not args.quiet)
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"f3stream: {why}; complete shards are kept and indexed: run the same "
              "command again to resume", file=sys.stderr)
        raise
    skipped = f", {s.shards_skipped} already complete" if s.shards_skipped else ""
    print(f"tokenized {args.input} -> {s.out_dir}: {s.files} files in {s.shards} shards "
          f"({s.shards_computed} computed{skipped})")
    print(f"  ok {s.ok}, errors {len(s.errors)}")
    if s.shards_computed:
        speed = s.audio_seconds / s.elapsed if s.elapsed > 0 else 0.0
        print(f"  {s.audio_seconds:.1f} s of audio -> {s.frames} frames in {s.elapsed:.1f} s "
              f"({speed:.1f}x real time, {s.workers} worker{'s' * (s.workers != 1)}, "
              f"{args.engine})")
    for e in s.errors[:5]:
        print(f"  error: {e['key']}: {e['error']}")
    if len(s.errors) > 5:
        print(f"  ... {len(s.errors) - 5} more errors in {s.out_dir / INDEX_FILE}")
    print(f"  wrote {s.out_dir / INDEX_FILE} and {s.out_dir / RUN_FILE}")
    return 0


def register(subs) -> None:
    """Registers ``f3stream tokenize``."""
    p = add_command(
        subs, "tokenize", "a folder or manifest of audio -> token shards",
        "Tokenizes every audio file of a folder (recursively) or a JSONL manifest into "
        "safetensors shards plus index.jsonl, with several worker processes. Re-running the "
        "same command resumes: complete shards are skipped. Unreadable files are listed in the "
        "index as errors.",
        "  f3stream tokenize corpus/ --out corpus-tokens --workers 2\n"
        "  f3stream tokenize corpus/manifest.jsonl --out tokens --no-representations\n",
        cmd_tokenize)
    add_model_options(p)
    p.add_argument("input", metavar="DIR_OR_MANIFEST",
                   help="folder of audio files or a JSONL manifest")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"files per shard (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes, one model and one thread each (default: "
                        "min(2, CPU cores))")
    p.add_argument("--no-representations", action="store_true",
                   help="store only the latents (skips the representation encoder)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local processes, or Ray tasks (needs `pip install 'ray[data]'`)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds other files or another run's settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
