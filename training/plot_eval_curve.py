"""Held-out quality against training steps, from `f3stream eval` reports of one run's snapshots,
with a log-linear extrapolation to a target.

    python -m training.plot_eval_curve 1000=runs/eval/long-1000 3000=runs/eval/long-3000 \\
        --target-stoi 0.85 --out docs/results/real-curve.png

Each argument is ``[LABEL@]STEP=EVAL_DIR`` (a folder holding report.json); points with the
same label form one series (one line and one fit each; no label: "measured"). The fit is STOI
(and PESQ-WB) linear in log(steps) over a series' points; the printed line says how many steps
the fit needs to reach the target. It is an extrapolation of a short curve, not a prediction.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def load_series(args: list[str]) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``[LABEL@]STEP=EVAL_DIR`` arguments -> ``{label: (steps, metrics)}``, in order of first
    appearance."""
    groups: dict[str, list[str]] = {}
    for a in args:
        label, at, rest = a.partition("@")
        if not at:
            label, rest = "measured", a
        groups.setdefault(label, []).append(rest)
    return {label: load_points(points) for label, points in groups.items()}


def load_points(args: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    steps, metrics = [], {"stoi": [], "pesq_wb": [], "level_db": []}
    for a in args:
        step, _, folder = a.partition("=")
        if not folder or not step.isdigit():
            raise SystemExit(f"expected [LABEL@]STEP=EVAL_DIR, got {a!r}")
        rec = json.loads((Path(folder) / "report.json").read_text())["reconstruction"]["all"]
        steps.append(int(step))
        metrics["stoi"].append(rec["stoi"]["mean"])
        metrics["pesq_wb"].append(rec["pesq_wb"]["mean"])
        metrics["level_db"].append(rec["level_db"]["median"])
    order = np.argsort(steps)
    return np.array(steps)[order], {k: np.array(v)[order] for k, v in metrics.items()}


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float:
    """Log-linear fit; inf when the fitted slope does not rise."""
    slope, intercept = np.polyfit(np.log(steps), values, 1)
    if slope <= 0:
        return math.inf
    return float(math.exp((target - intercept) / slope))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.plot_eval_curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", help="[LABEL@]STEP=EVAL_DIR")
    p.add_argument("--target-stoi", type=float, default=0.85)
    p.add_argument("--target-pesq", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=Path("eval-curve.png"))
    args = p.parse_args(argv)
    series = load_series(args.points)
    for label, (steps, m) in series.items():
        if steps.size < 2:
            print(f"{label}: one point, no fit")
            continue
        need_stoi = steps_to_reach(steps, m["stoi"], args.target_stoi)
        need_pesq = steps_to_reach(steps, m["pesq_wb"], args.target_pesq)
        print(f"{label}: log-linear fit over {steps.min()}-{steps.max()}: STOI "
              f"{args.target_stoi} at ~{need_stoi:,.0f} steps; PESQ-WB {args.target_pesq} at "
              f"~{need_pesq:,.0f} steps")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, target in zip(axes, ("stoi", "pesq_wb", "level_db"),
                               (args.target_stoi, args.target_pesq, 0.0)):
        for i, (label, (steps, m)) in enumerate(series.items()):
            color = f"C{i}"
            # the level is not extrapolated: a linear axis reads better over one decade
            plot = ax.plot if key == "level_db" else ax.semilogx
            plot(steps, m[key], "o-", color=color, label=label)
            if key != "level_db" and steps.size >= 2:
                grid = np.geomspace(steps.min(), steps.max() * 20, 100)
                slope, intercept = np.polyfit(np.log(steps), m[key], 1)
                ax.semilogx(grid, intercept + slope * np.log(grid), "--", color=color,
                            alpha=0.6, label=f"{label}: log-linear fit")
        ax.axhline(target, color="k", lw=0.8, ls=":", label="target")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("stage-0 step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
