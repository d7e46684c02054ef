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
