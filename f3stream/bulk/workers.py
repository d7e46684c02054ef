"""Where shards are computed: in this process, in a pool of worker processes, or as Ray tasks.

Pool workers are started by a forkserver (or spawn), so everything they run is a module-level
function of this module, importable by name. A worker holds one model and one thread, and dies
with the parent however the parent dies (it watches a pipe only the parent writes to).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BulkError
from .plan import ShardJob
from .shards import process_shard

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.queues import Queue

    from tqdm import tqdm

    from ..tokenizer import Tokenizer

#: Called in the parent after each shard is written, with the shard's entries.
Finished = Callable[[ShardJob, list[dict[str, Any]]], None]

# This process's model when it is a pool worker or a Ray worker (and the pool's progress queue).
_WORKER: dict[str, Any] = {}


# -- pool worker processes ----------------------------------------------------------------------
def _worker_init(checkpoint, device, backend, queue, parent) -> None:
    """Runs once per worker process: one model per process, one thread each (N processes on
    N cores beat N threads fighting over them), Ctrl-C left to the parent, and death with the
    parent (``parent``: the read end of a pipe whose only writer is the parent)."""
    import signal
    import threading

    import torch

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="f3stream-parent-watch").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    from ..tokenizer import Tokenizer

    _WORKER["tok"] = Tokenizer.load(checkpoint, device, backend)
    _WORKER["queue"] = queue


def _exit_with_parent(parent: Connection) -> None:
    """Blocks until the parent's end of the pipe closes, then ends this worker at once.

    Why: workers are children of the forkserver, not of the parent, and hold the pool's queues
    and the forkserver's liveness pipe themselves, so after a ``kill -9`` of the parent they
    (and with them the forkserver and the resource tracker) lived on and kept writing shards.
    The kernel closes the parent's pipe end however the parent dies; no shard is left half
    written (writes are atomic; the next run removes the temp files and resumes)."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            parent.recv_bytes()
    os._exit(1)


def _worker_shard(job: ShardJob) -> list[dict[str, Any]]:
    queue: Queue = _WORKER["queue"]
    return process_shard(job, _WORKER["tok"], on_file=lambda: queue.put(1))


def run_local(todo: list[ShardJob], checkpoint: str | os.PathLike | None, device: str,
              backend: str, workers: int, finished: Finished, bar: tqdm) -> None:
    """Computes ``todo`` here (``workers == 1``) or in a pool of ``workers`` processes; on
    Ctrl-C, SIGTERM or an error the workers are ended at once."""
    if workers == 1:
        from ..tokenizer import Tokenizer

        tok = Tokenizer.load(checkpoint, device, backend)
        for job in todo:
            finished(job, process_shard(job, tok, on_file=lambda: bar.update(1)))
        return

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: a fresh single-threaded server imports torch once and forks the workers
    # (cheaper than spawn's import per worker; unlike fork, safe after the caller has started
    # torch/OpenMP threads or CUDA). Where it does not exist (Windows, macOS <3.8), spawn.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__, "torch"])
    ticks = ctx.Queue()
    watch, alive = ctx.Pipe(duplex=False)  # we hold the only writer; workers watch the reader
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(checkpoint, device, backend, ticks, watch))

    def drain() -> None:
        with contextlib.suppress(queue_mod.Empty):
            while True:
                ticks.get_nowait()
                bar.update(1)

    clean = False
    try:
        pending = {pool.submit(_worker_shard, job): job for job in todo}
        while pending:
            ready, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in ready:
                job = pending.pop(fut)
                try:
                    entries = fut.result()
                except BrokenProcessPool:
                    raise BulkError("a worker process died (out of memory?); completed shards "
                                    "are kept: re-run the same command to resume") from None
                finished(job, entries)
        clean = True
    finally:
        if clean:
            pool.shutdown(wait=True)
        else:  # Ctrl-C, SIGTERM or an error: stop now; atomic writes leave no half shard
            procs = list((getattr(pool, "_processes", None) or {}).values())  # no API < 3.14
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(5)
        ticks.close()
        watch.close()
        alive.close()


# -- Ray tasks ----------------------------------------------------------------------------------
def _cached_tokenizer(checkpoint, device, backend) -> Tokenizer:
    """One model per Ray worker process, reused across its tasks."""
    key = (str(checkpoint), device, backend)
    if _WORKER.get("key") != key:
        import torch

        from ..tokenizer import Tokenizer

        torch.set_num_threads(1)
        _WORKER["tok"], _WORKER["key"] = Tokenizer.load(checkpoint, device, backend), key
    return _WORKER["tok"]


def _ray_shard(job: ShardJob, checkpoint, device, backend) -> list[dict[str, Any]]:
    return process_shard(job, _cached_tokenizer(checkpoint, device, backend))


def run_ray(todo: list[ShardJob], checkpoint: str | os.PathLike | None, device: str,
            backend: str, workers: int, finished: Finished, bar: tqdm) -> None:
    """The same per-shard function as Ray tasks: one task per shard, one CPU each. Joins a
    running Ray instance (e.g. a cluster after ``ray.init(address=...)``) or starts a local one."""
    try:
        import ray
    except ImportError:
        raise BulkError("--engine ray needs Ray: pip install 'ray[data]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0)(_ray_shard)
        ckpt = str(Path(checkpoint).resolve()) if checkpoint is not None else None
        pending = {remote.remote(job, ckpt, device, backend): job for job in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                finished(job, ray.get(ref))
                bar.update(len(job.files))
    finally:
        if started:
            ray.shutdown()
