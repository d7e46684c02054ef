"""Copies a training run's exported checkpoint into a checkpoint directory (e.g. the bundled one),
optionally as float16 to halve its size, with a description of how it was trained.

    python -m training.install_checkpoint runs/bundled/export f3stream/checkpoints/default \\
        --float16 --description "trained on CPU with training/configs/bundled_cpu.json ..."
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import f3stream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.install_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="exported checkpoint (OUT/export of a training run)")
    p.add_argument("dest", help="checkpoint directory to write")
    p.add_argument("--float16", action="store_true", help="store the weights as float16")
    p.add_argument("--description", default=None, help="recorded in the checkpoint's info")
    p.add_argument("--info", action="append", default=[], metavar="KEY=JSON",
                   help="set one info field (repeatable), e.g. stage0_steps=6250")
    args = p.parse_args(argv)
    tok = f3stream.load(args.source)
    info = dict(tok.info)
    for item in args.info:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--info needs KEY=JSON, got {item!r}")
        try:
            info[key] = json.loads(value)
        except json.JSONDecodeError:
            p.error(f"--info {key}: {value!r} is not JSON (quote strings: {key}='\"text\"')")
    if args.description:
        info["description"] = args.description
    info["weights_dtype"] = "float16" if args.float16 else "float32"
    tok.save(args.dest, info=info,
             weights_dtype=torch.float16 if args.float16 else torch.float32)
    print(f"wrote {args.dest} ({info['weights_dtype']}): {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
