"""One knob for the CPU threads a model step may use: torch's intra-op pool and the BLAS
that the numba engine's ``np.dot`` calls.

Why both: the numba engine's matrix products go to OpenBLAS, whose own thread pool ignores
``torch.set_num_threads`` and by default takes every core. On a 2-core server that pool's
second thread fights the event loop for the other core: measured with 100 real-time streams,
frame latency p99 went from ~5 ms (one thread) to ~26 ms (docs/server.md).
"""

from __future__ import annotations


def limit_threads(threads: int) -> None:
    """At most ``threads`` CPU threads for torch, OpenMP and BLAS in this process (call it
    after the engine is loaded: numba's BLAS is only loaded when a kernel first compiles)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def blas_info() -> list[dict]:
    """The BLAS and OpenMP libraries this process has loaded, as threadpoolctl sees them:
    library, version, the kernel set it runs (OpenBLAS's ``architecture``: e.g. ``SkylakeX``
    for its AVX-512 kernels, ``Haswell`` for AVX2, which ``OPENBLAS_CORETYPE`` forces) and
    its thread count. Load reports record it: the server's model step, and so its latency
    under load, depends on which kernels a product of a few rows runs on."""
    from threadpoolctl import threadpool_info

    keys = ("prefix", "user_api", "internal_api", "version", "architecture", "num_threads",
            "threading_layer")
    return [{k: lib.get(k) for k in keys if lib.get(k) is not None} for lib in threadpool_info()]


def engine_info(tok) -> dict:
    """What a model step's speed depends on besides the machine: the engine, the numba
    engine's matrix-product plan (``f3stream.backends.numba.gemm_plan``: (block_limit,
    own_rows), (0, 0) is plain BLAS), the BLAS kernels and threads, and the environment
    variables that pick them."""
    import os

    plan = getattr(tok.engine, "gemm_plan", None)
    return {"backend": tok.backend,
            "gemm_plan": list(plan) if plan is not None else None,
            "blas": blas_info(),
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                               "OMP_NUM_THREADS", "F3STREAM_GEMM_PLAN")
                    if k in os.environ}}
