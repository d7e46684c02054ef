"""The stage-1 manifest: a transcribed corpus plus a sample of real voices.

    python -m training.data.mix --base data/corpus/manifest.jsonl \\
        --real data/real/manifest.jsonl --untranscribed 1200 --out data/stage1/manifest.jsonl

Stage 1 encodes every clip of its manifest through the frozen autoencoder before it starts,
so it takes the whole base corpus (espeak-ng sentences and klettres, all with text, their own
splits), the real training clips that have a transcript (the frozen-LM loss needs one) and a
seeded sample of ``--untranscribed`` real training clips without (RQ-MTP only). Real val/test
clips stay out: their voices are held out for evaluation.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .manifest import Clip, read_manifest, write_manifest


def mix(base: list[Clip], real: list[Clip], untranscribed: int, seed: int = 0) -> list[Clip]:
    train = [c for c in real if c.split == "train"]
    with_text = [c for c in train if c.text.strip()]
    without = [c for c in train if not c.text.strip()]
    picked = random.Random(seed).sample(without, min(untranscribed, len(without)))
    return base + with_text + picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data.mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--real", type=Path, required=True)
    p.add_argument("--untranscribed", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    clips = mix(read_manifest(args.base), read_manifest(args.real), args.untranscribed,
                args.seed)
    write_manifest(args.out, clips)
    print(f"wrote {args.out}: {len(clips)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
