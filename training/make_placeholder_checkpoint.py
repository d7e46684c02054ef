"""Writes the randomly initialised placeholder checkpoint (until a trained one replaces it).

    python training/make_placeholder_checkpoint.py f3stream/checkpoints/default
"""

import argparse

import torch

from f3stream import Tokenizer, TokenizerConfig

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument("out", help="checkpoint directory to write")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
tok = Tokenizer.from_config(TokenizerConfig(), seed=args.seed)
info = {"trained": False,
        "description": f"randomly initialised placeholder (seed {args.seed}): its decoder "
                       "outputs noise, not speech, and its latents/representations carry no "
                       "learned meaning"}
print(tok.save(args.out, info=info, weights_dtype=torch.float16))
