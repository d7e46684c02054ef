"""A seeded sample of a manifest: some training clips and some held-out ones.

    python -m training.data.sample --manifest data/stage1/manifest.jsonl --train 1200 \\
        --held-out 150 --out data/stage1/latent_lm_subset.jsonl

Why: the latent LM behind ``f3stream generate`` is trained on a subset of the stage-1
manifest (encoding all of it through the frozen autoencoder would take longer than the LM's
own training), with held-out clips for its validation flow loss. The sample is
``random.Random(seed).sample`` of the training clips, then of the val/test clips, so the
same arguments give the same file.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .manifest import Clip, read_manifest, write_manifest


def sample(clips: list[Clip], n_train: int, n_held_out: int, seed: int = 0) -> list[Clip]:
    """``n_train`` training clips, then ``n_held_out`` val/test clips (fewer where fewer
    exist), drawn with one seeded generator."""
    train = [c for c in clips if c.split == "train"]
    held_out = [c for c in clips if c.split != "train"]
    rng = random.Random(seed)
    return (rng.sample(train, min(n_train, len(train)))
            + rng.sample(held_out, min(n_held_out, len(held_out))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--train", type=int, default=1200, help="training clips (default: 1200)")
    p.add_argument("--held-out", type=int, default=150,
                   help="val/test clips (default: 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.train < 0 or args.held_out < 0:
        p.error("--train and --held-out must be >= 0")
    if not args.manifest.is_file():
        p.error(f"no manifest at {args.manifest}")
    clips = sample(read_manifest(args.manifest), args.train, args.held_out, args.seed)
    write_manifest(args.out, clips)
    print(f"wrote {args.out}: {len(clips)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
