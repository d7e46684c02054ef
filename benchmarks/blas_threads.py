"""One matrix product of the numba engine (``[M, 256] @ [256, 768]``, plain BLAS) with the
BLAS on one thread and on all cores: on a machine whose cores are busy, OpenBLAS's second
thread waits for a time slice and a packed product (M >= 8 here) takes milliseconds.

    nice -n 19 python benchmarks/blas_threads.py --json blas-threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    from f3stream.backends.numba import nn as nb
    from f3stream.threads import blas_info

    rng = np.random.default_rng(0)
    wt = rng.standard_normal((256, 768), dtype=np.float32)
    w = nb.Linear(wt, np.zeros(768, np.float32))
    xs = {m: rng.standard_normal((m, 256), dtype=np.float32) for m in (4, 8, 12, 16, 20, 32, 64)}
    nb._repeat_linear(xs[4], w, (0, 0), 1)  # compile: loads the BLAS numba calls
    cores = os.cpu_count()
    best = {t: {m: float("inf") for m in xs} for t in (1, cores)}
    load_before = list(os.getloadavg())
    for _ in range(5):
        for t in best:
            with threadpool_limits(t):
                for m, x in xs.items():
                    t0 = time.perf_counter()
                    nb._repeat_linear(x, w, (0, 0), 10)
                    best[t][m] = min(best[t][m], (time.perf_counter() - t0) / 10)
    report = {"command": "python benchmarks/blas_threads.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "blas": blas_info(),
              "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
              "best_us_per_product": {f"{t} thread(s)": {m: round(v * 1e6, 1)
                                                        for m, v in r.items()}
                                      for t, r in best.items()}}
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
