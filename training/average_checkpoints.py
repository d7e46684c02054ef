"""Averages the weights of several checkpoints of one run (checkpoint averaging, as in SWA).

    python -m training.average_checkpoints runs/fb12/export_110000 runs/fb12/export_111250 \\
        runs/fb12/export_112500 runs/fb12/export_113750 --out runs/fb12/avg4_113750

Why: late in a cosine schedule the exported EMA weights (decay 0.999, a window of ~1,000
steps) still wander around a minimum; the mean of snapshots taken every 1,250 steps averages
over a window several times longer for the cost of one evaluation. Every checkpoint must
have the same model config (same parameter names and shapes); the result is a normal
checkpoint whose info records which steps went into it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from f3stream.checkpoint import CheckpointError, config_digest, load_checkpoint, save_checkpoint
from f3stream.model import F3Model


def average_checkpoints(paths: list[str | Path], out: str | Path,
                        weights: list[float] | None = None) -> Path:
    """Writes the (weighted) mean of the checkpoints' weights to ``out``. Raises
    :class:`CheckpointError` if the configs differ."""
    if len(paths) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    weights = weights or [1.0] * len(paths)
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("one non-negative weight per checkpoint, not all zero")
    total = sum(weights)
    cfg0, mean, steps = None, {}, []
    for path, w in zip(paths, weights):
        cfg, state, info = load_checkpoint(path)
        if cfg0 is None:
            cfg0, mean = cfg, {k: torch.zeros_like(v) for k, v in state.items()}
        elif config_digest(cfg) != config_digest(cfg0) or state.keys() != mean.keys():
            raise CheckpointError(f"{path} has another model config than {paths[0]}: "
                                  "only checkpoints of one run can be averaged")
        for k, v in state.items():
            mean[k] += v * (w / total)
        steps.append(info.get("stage0_steps"))
    model = F3Model(cfg0)
    model.load_state_dict(mean, strict=True)
    info = {"trained": True, "stage0_steps": max(s or 0 for s in steps), "stage1_steps": 0,
            "averaged_stage0_steps": steps, "averaged_weights": [w / total for w in weights]}
    return save_checkpoint(model, cfg0, out, info=info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.average_checkpoints", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="exported checkpoints of one run")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per checkpoint (default: equal)")
    args = p.parse_args(argv)
    try:
        out = average_checkpoints(args.checkpoints, args.out, args.weights)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
