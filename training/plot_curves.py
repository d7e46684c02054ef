"""Learning curves of one or more stage-0 runs, against steps and against wall-clock time.

    python -m training.plot_curves runs/ab/A_control runs/ab/B_complex --out docs/results/curves.png

Each run's ``autoencoder/log.csv`` is read; the training mel loss is smoothed (moving average
over 8 log rows) and the validation mel loss is drawn where it was measured. The wall-clock
axis is ``step * sec_per_step`` as the run logged it, so runs that shared the CPU with each
other compare at equal time.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def read_log(run: Path) -> dict[str, np.ndarray]:
    path = run / "autoencoder" / "log.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path} is empty")
    step = np.array([int(r["step"]) for r in rows])
    mel = np.array([float(r["mel"]) for r in rows])
    sec = np.array([float(r["sec_per_step"]) for r in rows])
    val = np.array([float(r["val_mel"]) if r.get("val_mel") else np.nan for r in rows])
    return {"step": step, "mel": mel, "minutes": step * sec / 60.0, "val_mel": val}


def smooth(x: np.ndarray, n: int = 8) -> np.ndarray:
    if x.size < n:
        return x
    return np.convolve(x, np.ones(n) / n, mode="valid")


def plot(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        log = read_log(run)
        name = labels[i] if labels else run.name
        n = 8 if log["mel"].size >= 8 else 1
        for ax, x in zip(axes, (log["step"], log["minutes"])):
            line, = ax.plot(x[n - 1:], smooth(log["mel"], n), alpha=0.6, label=f"{name} train")
            ok = np.isfinite(log["val_mel"])
            ax.plot(x[ok], log["val_mel"][ok], "o-", color=line.get_color(),
                    label=f"{name} val")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall-clock minutes (as logged)")
    for ax in axes:
        ax.set_ylabel("log-mel L1")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.plot_curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (OUT of training.train)")
    p.add_argument("--out", type=Path, default=Path("curves.png"))
    p.add_argument("--labels", help="comma-separated names, one per run")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.runs):
        raise SystemExit("--labels needs one name per run")
    print(plot(args.runs, args.out, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
