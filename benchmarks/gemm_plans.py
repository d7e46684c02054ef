"""What a batched server step costs under each of the numba engine's matrix-product plans.

One process, the bundled checkpoint, numba, one thread: for N pooled sessions (latents only,
what the server's rounds run) it steps one frame per session under each plan
(``f3stream.backends.numba.gemm_plan``: (block_limit, own_rows); (0, 0) is plain BLAS), the
plans interleaved round by round so a busy machine disturbs them alike, and reports min and median
milliseconds per round. The BLAS kernels are the process's: run it again with
``OPENBLAS_CORETYPE=Haswell`` to compare OpenBLAS's AVX2 kernels with its default choice.

    python benchmarks/gemm_plans.py --json plans.json
    OPENBLAS_CORETYPE=Haswell python benchmarks/gemm_plans.py --json plans-haswell.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PLANS = [(0, 0), (1_000_000, 0), (0, 8), (1_000_000, 8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,4,10,27,50,100")
    p.add_argument("--rounds", type=int, default=25, help="rounds per plan (3 warm-up)")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args()

    from f3stream import Tokenizer
    from f3stream.bench import _speech, machine_info
    from f3stream.threads import engine_info, limit_threads

    tok = Tokenizer.load(None, "cpu", "numba")
    limit_threads(1)
    audio = _speech(tok, 12.0)
    hop = tok.hop_length
    report = {"command": "python benchmarks/gemm_plans.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(1),
              "engine": engine_info(tok), "load_average_before": list(os.getloadavg()),
              "plan_chosen_by_this_process": list(tok.engine.gemm_plan), "round_ms": {}}
    for n in (int(s) for s in args.streams.split(",")):
        pool = tok.session_pool(n, representations=False)
        sessions = [pool.session() for _ in range(n)]
        times: dict[tuple, list[float]] = {pl: [] for pl in PLANS}
        k = 0
        for r in range(args.rounds):
            for pl in PLANS:
                tok.engine.gemm_plan = pl
                chunks = [audio[((37 * i + k) % 250) * hop:((37 * i + k) % 250 + 1) * hop]
                          for i in range(n)]
                k += 1
                t0 = time.perf_counter()
                Tokenizer.step_sessions(sessions, chunks)
                if r >= 3:
                    times[pl].append((time.perf_counter() - t0) * 1e3)
        report["round_ms"][n] = {f"{a},{b}": {"min": round(min(v), 3),
                                              "median": round(float(np.median(v)), 3)}
                                 for (a, b), v in times.items()}
    report["load_average_after"] = list(os.getloadavg())
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
