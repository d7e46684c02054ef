"""One run of bulk tokenization: inputs -> plan -> the shards still missing -> index.

A re-run skips the shards whose fingerprint matches, so an interrupted run (Ctrl-C, SIGTERM,
``kill -9``, a killed machine) resumes where it stopped, and the index is always rebuilt from
the shards themselves. Ctrl-C and SIGTERM index the complete shards before the run stops.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BulkError
from .folder import check_settings, cleanup, locked, write_index, write_run
from .inputs import collect_inputs
from .layout import FORMAT_VERSION
from .plan import DEFAULT_SHARD_SIZE, ShardJob, model_digest, plan_shards
from .shards import read_shard_meta
from .workers import run_local, run_ray

if TYPE_CHECKING:
    from tqdm import tqdm


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``f3stream tokenize``, raised in the main thread so that the run stops as
    on Ctrl-C: workers ended, complete shards indexed, the rest resumable."""

    exit_status = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


@contextlib.contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (the previous handler comes back
    after it)."""
    import signal

    def raise_terminated(signum, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunSummary:
    """What a run did; ``audio_seconds``/``elapsed`` cover only the shards computed now."""
    out_dir: Path
    files: int = 0
    ok: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    shards: int = 0
    shards_computed: int = 0
    shards_skipped: int = 0
    frames: int = 0
    audio_seconds: float = 0.0
    elapsed: float = 0.0
    workers: int = 1
    complete: bool = False


def tokenize_corpus(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                    checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                    backend: str = "torch", representations: bool = True,
                    shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None,
                    engine: str = "local", overwrite: bool = False, progress: bool = True,
                    on_shard_done: Callable[[ShardJob, list[dict[str, Any]]], None] | None = None
                    ) -> RunSummary:
    """Tokenizes every file of ``source`` (folder or manifest) into shards under ``out_dir``,
    skipping shards a previous run completed. ``workers=1`` runs in this process; more use one
    process each (``engine="local"``) or Ray tasks (``engine="ray"``). ``on_shard_done`` is
    called in this process after each shard is written (tests use it to interrupt a run)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BulkError(f"--out {out} exists and is not a directory")
    if engine not in ("local", "ray"):
        raise BulkError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    files = collect_inputs(source)
    digest, facts = model_digest(checkpoint)
    settings = {"format_version": FORMAT_VERSION, "model": digest,
                "representations": bool(representations), "shard_size": int(shard_size)}
    jobs = plan_shards(files, out, shard_size, representations, digest)
    workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(out, files=len(files), shards=len(jobs))
    with locked(out):
        check_settings(out, settings, overwrite)
        write_run(out, settings, facts, {"files": len(files), "complete": False})
        cleanup(out, len(jobs))
        done = _completed_on_disk(jobs)
        todo = [job for job in jobs if job.index not in done]
        summary.shards_skipped = len(done)
        summary.workers = min(workers, len(todo)) or 1

        def finished(job: ShardJob, entries: list[dict[str, Any]]) -> None:
            done[job.index] = entries
            summary.shards_computed += 1
            ok = [e for e in entries if "error" not in e]
            summary.audio_seconds += sum(e["seconds"] for e in ok)
            summary.frames += sum(e["frames"] for e in ok)
            if on_shard_done is not None:
                on_shard_done(job, entries)

        try:
            if todo:
                bar = _progress_bar(sum(len(j.files) for j in todo), progress,
                                    sum(len(jobs[i].files) for i in done))
                with bar:
                    run = run_ray if engine == "ray" else run_local
                    run(todo, checkpoint, device, backend, summary.workers, finished, bar)
        finally:
            # Stopped (Ctrl-C, SIGTERM, an error): a worker may have written a shard whose
            # result never reached this process. The workers are gone now, so what is on
            # disk is final: index those shards too, so the index holds every complete one.
            late = _completed_on_disk([j for j in todo if j.index not in done])
            for entries in late.values():
                ok = [e for e in entries if "error" not in e]
                summary.audio_seconds += sum(e["seconds"] for e in ok)
                summary.frames += sum(e["frames"] for e in ok)
            done.update(late)
            summary.shards_computed += len(late)
            summary.elapsed = time.perf_counter() - t0
            _finish(out, jobs, done, settings, facts, summary)
    return summary


def _completed_on_disk(jobs: list[ShardJob]) -> dict[int, list[dict[str, Any]]]:
    """The jobs whose shard is on disk and was made from the same inputs and model (its
    fingerprint matches): shard index -> its file entries."""
    done = {}
    for job in jobs:
        meta = read_shard_meta(job.out_path)
        if meta is not None and meta.get("fingerprint") == job.fingerprint:
            done[job.index] = meta["files"]
    return done


def _progress_bar(total: int, enabled: bool, initial: int) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, unit="file", desc="tokenize",
                disable=not enabled, dynamic_ncols=True)


def _finish(out: Path, jobs: list[ShardJob], done: dict[int, list[dict[str, Any]]],
            settings: dict[str, Any], facts: dict[str, Any], summary: RunSummary) -> None:
    """Indexes the completed shards, counts their files into ``summary`` and writes the
    totals into run.json."""
    entries = write_index(out, jobs, done)
    for entry in entries:
        if "error" in entry:
            summary.errors.append(entry)
        else:
            summary.ok += 1
    summary.complete = len(done) == len(jobs)
    write_run(out, settings, facts, {
        "files": summary.files, "files_done": len(entries), "ok": summary.ok,
        "errors": len(summary.errors), "shards": len(jobs), "shards_done": len(done),
        "complete": summary.complete})
