"""Held-out quality against training steps, from `f3stream eval` reports of one run's snapshots,
with a log-linear extrapolation to a target.

    python -m training.plot_eval_curve 1000=runs/eval/long-1000 3000=runs/eval/long-3000 \\
        --target-stoi 0.85 --out docs/results/real-curve.png

Each argument is ``[LABEL@]STEP=EVAL_DIR`` (a folder holding report.json); points with the
same label form one series (one line and one fit each; no label: "measured"). The fit is STOI
(and PESQ-WB) linear in log(steps) over a series' points (``--fit log-linear``), or a curve that
levels off, ``a - b * (steps / 10,000) ** -c`` (``--fit saturating``: its plateau ``a`` says
whether more steps of the same recipe can reach the target at all); ``--fit-from`` leaves the
points before a step out of the fit. The printed line says how many steps the fit needs to reach
the target. It is an extrapolation of a short curve, not a prediction.
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


SATURATING_UNIT = 10_000.0


def fit_saturating(steps: np.ndarray, values: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``(a, b, c)`` of ``a - b * (steps / 10,000) ** -c`` with ``b, c > 0``: a
    curve that rises ever more slowly towards its plateau ``a``. Needs 3 or more points."""
    from scipy.optimize import curve_fit

    if steps.size < 3:
        raise ValueError(f"a saturating fit needs 3 or more points, got {steps.size}")
    s = steps / SATURATING_UNIT
    spread = float(values.max() - values.min()) or 1e-3
    (a, b, c), _ = curve_fit(lambda x, a, b, c: a - b * x ** -c, s, values,
                             p0=(float(values.max()) + spread, spread, 1.0),
                             bounds=([-np.inf, 0.0, 1e-3], [np.inf, np.inf, 10.0]),
                             maxfev=20000)
    return float(a), float(b), float(c)


def saturating_steps_to_reach(params: tuple[float, float, float], target: float) -> float:
    """Steps at which ``a - b * (steps / 10,000) ** -c`` reaches ``target``; inf when the
    plateau ``a`` lies at or below it."""
    a, b, c = params
    if a <= target:
        return math.inf
    if b == 0:
        return 0.0
    return float(SATURATING_UNIT * (b / (a - target)) ** (1.0 / c))


def fitted(kind: str, steps: np.ndarray, values: np.ndarray, target: float):
    """``(curve(grid) -> values, steps to reach target, text)`` for one series and metric."""
    if kind == "saturating":
        a, b, c = fit_saturating(steps, values)
        need = saturating_steps_to_reach((a, b, c), target)
        return (lambda g: a - b * (g / SATURATING_UNIT) ** -c), need, f"plateau {a:.3f}"
    slope, intercept = np.polyfit(np.log(steps), values, 1)
    return ((lambda g: intercept + slope * np.log(g)), steps_to_reach(steps, values, target),
            f"{slope * math.log(2):+.4f} per doubling")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.plot_eval_curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", help="[LABEL@]STEP=EVAL_DIR")
    p.add_argument("--target-stoi", type=float, default=0.85)
    p.add_argument("--target-pesq", type=float, default=2.0)
    p.add_argument("--fit", choices=("log-linear", "saturating"), default="log-linear",
                   help="log-linear: linear in log(steps); saturating: a - b*(steps/1e4)^-c, "
                        "whose plateau a bounds what more steps can give (default: log-linear)")
    p.add_argument("--fit-from", type=int, default=0, metavar="STEP",
                   help="fit only the points at or after this step (all points are drawn)")
    p.add_argument("--fit-series", nargs="+", metavar="LABEL",
                   help="fit only these series (default: every one); a short branch drawn "
                        "beside a long run is compared, not extrapolated")
    p.add_argument("--out", type=Path, default=Path("eval-curve.png"))
    args = p.parse_args(argv)
    series = load_series(args.points)
    unknown = set(args.fit_series or ()) - set(series)
    if unknown:
        p.error(f"--fit-series: no series labelled {', '.join(sorted(unknown))}")
    need_points = 3 if args.fit == "saturating" else 2
    fits: dict[tuple[str, str], object] = {}
    for label, (steps, m) in series.items():
        if args.fit_series is not None and label not in args.fit_series:
            continue
        keep = steps >= args.fit_from
        if keep.sum() < need_points:
            print(f"{label}: {int(keep.sum())} point(s) from step {args.fit_from}, no "
                  f"{args.fit} fit")
            continue
        parts = []
        for key, name, target in (("stoi", "STOI", args.target_stoi),
                                  ("pesq_wb", "PESQ-WB", args.target_pesq)):
            curve, need, text = fitted(args.fit, steps[keep], m[key][keep], target)
            fits[label, key] = curve
            parts.append(f"{name} {target} at ~{need:,.0f} steps ({text})")
        print(f"{label}: {args.fit} fit over {steps[keep].min()}-{steps[keep].max()}: "
              + "; ".join(parts))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, target in zip(axes, ("stoi", "pesq_wb", "level_db"),
                               (args.target_stoi, args.target_pesq, 0.0)):
        for i, (label, (steps, m)) in enumerate(series.items()):
            color = f"C{i}"
            # the level is not extrapolated: a linear axis reads better over one decade
            plot = ax.plot if key == "level_db" else ax.semilogx
            plot(steps, m[key], "o-", color=color, label=label)
            if (label, key) in fits:
                grid = np.geomspace(max(steps.min(), args.fit_from), steps.max() * 20, 100)
                ax.semilogx(grid, fits[label, key](grid), "--", color=color,
                            alpha=0.6, label=f"{label}: {args.fit} fit")
        ax.axhline(target, color="k", lw=0.8, ls=":", label="target")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if key == "level_db":
            ax.xaxis.set_major_locator(MaxNLocator(4))
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
