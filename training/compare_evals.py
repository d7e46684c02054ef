"""Paired comparison of `f3stream eval` reports made on the same clips.

    python -m training.compare_evals BASE_DIR OTHER_DIR [OTHER_DIR ...]

For each metric: the mean over clips of (other - base) with its standard error. Two
checkpoints scored on the same clips differ far less from clip to clip than the clips differ
from each other, so the paired difference resolves changes (~0.001 STOI on 150 clips) that the
two means alone (clip-sampling noise ~0.01) cannot.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("stoi", "pesq_wb", "mel_l1", "level_db")


def clips(report_dir: str | Path) -> dict[str, dict]:
    report = json.loads((Path(report_dir) / "report.json").read_text())
    return {c["path"]: c for c in report["clips"]}


def paired(base: dict[str, dict], other: dict[str, dict], metric: str
           ) -> tuple[float, float, int] | None:
    """(mean difference, its standard error, clips) over clips both scored."""
    d = [other[p][metric] - base[p][metric] for p in base
         if p in other and base[p].get(metric) is not None
         and other[p].get(metric) is not None]
    if len(d) < 2:
        return None
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d)), len(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.compare_evals", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="eval report folder (report.json) of the reference")
    p.add_argument("others", nargs="+", help="eval report folders to compare with it")
    a = p.parse_args(argv)
    base = clips(a.base)
    for other_dir in a.others:
        other = clips(other_dir)
        parts = []
        for m in METRICS:
            r = paired(base, other, m)
            parts.append(f"{m} {r[0]:+.4f} ± {r[1]:.4f} (n={r[2]})" if r else f"{m} -")
        print(f"{other_dir} - {a.base}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
