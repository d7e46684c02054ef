"""Bulk tokenization of a corpus: ``f3stream tokenize DIR_OR_MANIFEST --out DIR``.

Inputs are a folder (searched recursively for audio) or a JSON-lines manifest (the corpus
format: one ``{"path", "text", "speaker", "split", "source"}`` object per line, relative paths
resolving against the manifest's folder). Files are sorted by key (the path relative to the
folder / manifest folder) and cut into shards of ``shard_size`` files, so the plan, and
therefore every output, depends only on the inputs and the settings, not on the worker count.

Output folder layout::

    shard-00000.safetensors   one per shard; tensors
                                latents          float32 [sum of frames, latent_dim]
                                representations  float32 [sum of frames, repr_dim] (unless
                                                 --no-representations)
                                offsets          int64   [files + 1]: file i is rows
                                                 offsets[i]:offsets[i+1] (0 rows on error)
                              and, in the safetensors metadata, ``f3stream_bulk``: JSON with
                              the shard's fingerprint and one entry per file (as in the index)
    index.jsonl               one line per input file, in order: {"key", "path", "shard",
                              "row", "offset", "frames", "seconds", "sample_rate"} or
                              {"key", "path", "shard", "error"}; ``sample_rate`` is the
                              file's own rate, ``seconds`` its duration (frames / rate)
    run.json                  the settings (model digest, rates, dims, shard size) + totals

Concatenating a shard's files (rather than one tensor per file) keeps headers small and lets a
training loader read a whole shard in one go; :func:`load_tokenized` slices one file out.

Every file is written atomically, and a shard records a fingerprint of its model, settings and
input files (key, size, mtime). A re-run skips shards whose fingerprint matches, so an
interrupted run (Ctrl-C, SIGTERM, ``kill -9``, a killed machine) resumes where it stopped, and
the index is always rebuilt from the shards themselves. Worker processes die with the parent
however it dies (they watch a pipe only the parent writes to); Ctrl-C and SIGTERM also index
the complete shards before exiting (130, 143). A file that cannot be read or tokenized is
recorded as an error in its shard and the job goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .audiofile import AudioFileReader
from .commandline import add_command, add_model_options, model_spec
from .errors import F3StreamError
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from .tokenizer import Tokenizer
    from .tokens_io import Tokens

FORMAT = "f3stream-bulk"
FORMAT_VERSION = 1
# How audio becomes model input; part of every shard's fingerprint, because a change here
# changes the tokens (files were resampled with scipy's resample_poly before soxr).
AUDIO_PIPELINE = "audiofile-blocks-soxr-hq"
INDEX_FILE = "index.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
META_KEY = "f3stream_bulk"
SHARD_GLOB = "shard-*.safetensors"
BASE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
DEFAULT_SHARD_SIZE = 256
# Per-file failures that mean "this input is bad", not "the job is broken".
FILE_ERRORS = (F3StreamError, OSError, RuntimeError, ValueError, EOFError)


class BulkError(F3StreamError):
    """A bulk tokenization cannot start or finish, or its output cannot be read."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``f3stream tokenize``, raised in the main thread so that the run stops as
    on Ctrl-C: workers ended, complete shards indexed, the rest resumable."""

    exit_status = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    import signal

    def raise_terminated(signum, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def audio_suffixes() -> tuple[str, ...]:
    """The suffixes a folder search picks up: mp3 only where this libsndfile can decode it."""
    import soundfile as sf

    return BASE_SUFFIXES + ((".mp3",) if "MP3" in sf.available_formats() else ())


# -- inputs and plan ---------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFile:
    key: str    # stable name in the index: path relative to the input folder / manifest folder
    path: str   # absolute path read


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to produce one shard (picklable, for processes and Ray)."""
    index: int
    files: tuple[InputFile, ...]
    out_path: str
    fingerprint: str
    representations: bool


def collect_inputs(source: str | os.PathLike) -> list[InputFile]:
    """The input files of a folder or a JSONL manifest, sorted by key, without duplicates."""
    source = Path(source)
    if source.is_dir():
        suffixes = audio_suffixes()
        root = Path(os.path.abspath(source))
        files = [InputFile(p.relative_to(root).as_posix(), str(p))
                 for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()]
        if not files:
            raise BulkError(f"no audio files ({', '.join(suffixes)}) under {source}")
    elif source.is_file():
        if source.suffix.lower() in audio_suffixes():
            raise BulkError(f"{source} is an audio file; `f3stream tokenize` takes a folder or a "
                            "JSONL manifest (use `f3stream encode` for one file)")
        from .manifest import read_manifest

        base = Path(os.path.abspath(source)).parent
        files = []
        for clip in read_manifest(source):  # its paths are already joined to the manifest's
            p = Path(os.path.abspath(clip.path))
            key = p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)
            files.append(InputFile(key, str(p)))
        if not files:
            raise BulkError(f"manifest {source} lists no files")
    else:
        raise BulkError(f"input not found: {source} (expected a folder of audio or a JSONL "
                        "manifest)")
    unique = {f.key: f for f in reversed(files)}  # reversed: the first occurrence wins
    return [unique[k] for k in sorted(unique)]


def model_digest(checkpoint: str | os.PathLike | None) -> tuple[str, dict[str, Any]]:
    """(digest of config + weights, model facts) of a checkpoint that passed
    :func:`~f3stream.checkpoint.verify_checkpoint` (which reads no tensor and builds no model),
    so a broken checkpoint is one error here instead of a worker dying at start-up."""
    from .checkpoint import WEIGHTS_FILE, _sha256, default_checkpoint_dir, verify_checkpoint

    path, cfg, meta = verify_checkpoint(checkpoint if checkpoint is not None
                                        else default_checkpoint_dir())
    weights = meta.get("weights_sha256") or _sha256(path / WEIGHTS_FILE)
    digest = hashlib.sha256(json.dumps([meta.get("config"), weights],
                                       sort_keys=True).encode()).hexdigest()
    ae = cfg.autoencoder
    return digest, {"sample_rate": ae.sample_rate, "frame_rate": ae.frame_rate,
                    "latent_dim": ae.latent_dim,
                    "representation_dim": cfg.representation.output_dim}


def _file_stamp(f: InputFile) -> list[Any]:
    try:
        st = os.stat(f.path)
        return [f.key, st.st_size, st.st_mtime_ns]
    except OSError:
        return [f.key, -1, -1]


def plan_shards(files: Sequence[InputFile], out_dir: str | os.PathLike, shard_size: int,
                representations: bool, digest: str) -> list[ShardJob]:
    """Cuts ``files`` into shards; a shard's fingerprint changes whenever its output would."""
    if shard_size < 1:
        raise BulkError(f"--shard-size must be at least 1, got {shard_size}")
    jobs = []
    for i, a in enumerate(range(0, len(files), shard_size)):
        chunk = tuple(files[a:a + shard_size])
        fp = hashlib.sha256(json.dumps(
            [FORMAT_VERSION, AUDIO_PIPELINE, digest, representations,
             [_file_stamp(f) for f in chunk]]
        ).encode()).hexdigest()
        jobs.append(ShardJob(i, chunk, str(Path(out_dir) / shard_name(i)), fp, representations))
    return jobs


# -- the per-shard work (shared by the local pool and Ray) --------------------------------------
def process_shard(job: ShardJob, tok: Tokenizer, on_file: Callable[[], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Tokenizes a shard's files with ``tok`` and writes the shard atomically; returns its
    entries. Bad inputs become error entries; anything else (e.g. a full disk) raises."""
    from safetensors.numpy import save

    entries: list[dict[str, Any]] = []
    lats, reps, offsets = [], [], [0]
    for row, f in enumerate(job.files):
        entry: dict[str, Any] = {"key": f.key, "path": f.path}
        try:
            with AudioFileReader(f.path) as audio:  # its header: checked, rate and length
                file_sr, seconds = audio.sample_rate, audio.frames / audio.sample_rate
            frames = tok.encode_file(f.path, representations=job.representations)
        except FILE_ERRORS as e:
            entry["error"] = " ".join((str(e) or type(e).__name__).split())
        else:
            lats.append(frames.latents)
            if job.representations:
                reps.append(frames.representations)
            entry.update(row=row, offset=offsets[-1], frames=frames.n_frames,
                         seconds=round(seconds, 6), sample_rate=file_sr)
        offsets.append(offsets[-1] + entry.get("frames", 0))
        entries.append(entry)
        if on_file is not None:
            on_file()
    tensors = {"latents": _concat(lats, tok.latent_dim),
               "offsets": np.asarray(offsets, dtype=np.int64)}
    if job.representations:
        tensors["representations"] = _concat(reps, tok.representation_dim)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": job.index,
            "fingerprint": job.fingerprint, "files": entries}
    atomic_write_bytes(job.out_path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return entries


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def read_shard_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The shard's metadata, or None if it is missing, unreadable or not ours."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "null"))
    except Exception:  # noqa: BLE001 - any unreadable shard is simply recomputed
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta


# -- running -----------------------------------------------------------------------------------
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


_WORKER: dict[str, Any] = {}


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
    from .tokenizer import Tokenizer

    _WORKER["tok"] = Tokenizer.load(checkpoint, device, backend)
    _WORKER["queue"] = queue


def _exit_with_parent(parent) -> None:
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
    queue = _WORKER["queue"]
    return process_shard(job, _WORKER["tok"], on_file=lambda: queue.put(1))


def _cached_tokenizer(checkpoint, device, backend):
    """One model per Ray worker process, reused across its tasks."""
    key = (str(checkpoint), device, backend)
    if _WORKER.get("key") != key:
        import torch

        from .tokenizer import Tokenizer

        torch.set_num_threads(1)
        _WORKER["tok"], _WORKER["key"] = Tokenizer.load(checkpoint, device, backend), key
    return _WORKER["tok"]


def _ray_shard(job: ShardJob, checkpoint, device, backend) -> list[dict[str, Any]]:
    return process_shard(job, _cached_tokenizer(checkpoint, device, backend))


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One writer per output folder: two runs into it would recompute the same shards."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    with open(out_dir / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BulkError(f"another `f3stream tokenize` is writing to {out_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    run_file = out_dir / RUN_FILE
    if not run_file.is_file():
        if not overwrite and any(p for p in out_dir.iterdir()
                                 if p.name != LOCK_FILE and not p.name.startswith(".")):
            raise BulkError(f"{out_dir} is not empty and holds no {RUN_FILE}; choose a new "
                            "--out (or pass --overwrite to write into it anyway)")
        return
    try:
        old = json.loads(run_file.read_text()).get("settings", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old = {}
    changed = sorted(k for k in settings if old.get(k) != settings[k])
    if changed and not overwrite:
        raise BulkError(f"{out_dir} holds a run with other settings (changed: {', '.join(changed)}"
                        "); choose a new --out, or pass --overwrite to replace it")


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
    with _locked(out):
        _check_settings(out, settings, overwrite)
        _write_run(out, settings, facts, {"files": len(files), "complete": False})
        _cleanup(out, len(jobs))
        done: dict[int, list[dict[str, Any]]] = {}
        todo = []
        for job in jobs:
            meta = read_shard_meta(job.out_path)
            if meta is not None and meta.get("fingerprint") == job.fingerprint:
                done[job.index] = meta["files"]
            else:
                todo.append(job)
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
                    run = _run_ray if engine == "ray" else _run_local
                    run(todo, checkpoint, device, backend, summary.workers, finished, bar)
        finally:
            summary.elapsed = time.perf_counter() - t0
            _write_index(out, jobs, done, settings, facts, summary)
    return summary


def _progress_bar(total: int, enabled: bool, initial: int):
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, unit="file", desc="tokenize",
                disable=not enabled, dynamic_ncols=True)


def _run_local(todo: list[ShardJob], checkpoint, device, backend, workers: int,
               finished, bar) -> None:
    if workers == 1:
        from .tokenizer import Tokenizer

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
        ctx.set_forkserver_preload(["f3stream.bulk", "torch"])
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


def _run_ray(todo: list[ShardJob], checkpoint, device, backend, workers: int,
             finished, bar) -> None:
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


def _cleanup(out: Path, n_shards: int) -> None:
    """Removes temp files of killed runs and shards past the plan (the input set shrank)."""
    for p in out.glob(".*.tmp*"):
        if p.name.startswith((".shard-", f".{INDEX_FILE}.", f".{RUN_FILE}.")):
            p.unlink(missing_ok=True)
    for p in out.glob(SHARD_GLOB):
        stem = p.name[len("shard-"):-len(".safetensors")]
        if stem.isdigit() and int(stem) >= n_shards:
            p.unlink()


def _write_index(out: Path, jobs: list[ShardJob], done: dict[int, list[dict[str, Any]]],
                 settings: dict[str, Any], facts: dict[str, Any], summary: RunSummary) -> None:
    """The index lists exactly the files of completed shards, in input order."""
    lines = []
    for job in jobs:
        for e in done.get(job.index, ()):
            entry = {"key": e["key"], "path": e["path"], "shard": shard_name(job.index)}
            entry.update((k, v) for k, v in e.items() if k not in entry)
            lines.append(json.dumps(entry, ensure_ascii=False))
            if "error" in e:
                summary.errors.append(entry)
            else:
                summary.ok += 1
    summary.complete = len(done) == len(jobs)
    atomic_write_bytes(out / INDEX_FILE, "".join(line + "\n" for line in lines).encode())
    _write_run(out, settings, facts, {
        "files": summary.files, "files_done": len(lines), "ok": summary.ok,
        "errors": len(summary.errors), "shards": len(jobs), "shards_done": len(done),
        "complete": summary.complete})


def _write_run(out: Path, settings: dict[str, Any], facts: dict[str, Any],
               totals: dict[str, Any]) -> None:
    """run.json: written first (so a killed run is recognised as ours and resumed), then
    again with the totals at the end."""
    run = {"format": FORMAT, "settings": settings, **facts, **totals}
    atomic_write_bytes(out / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())


# -- reading results back ----------------------------------------------------------------------
class TokenizedCorpus:
    """Read access to a ``f3stream tokenize`` output folder.

    >>> corpus = TokenizedCorpus("tokens/")
    >>> tokens = corpus.load("speaker1/utt1.wav")    # key, or the audio file's path
    >>> tokens.latents.shape                         # [frames, 64]
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        run_file, index_file = self.out_dir / RUN_FILE, self.out_dir / INDEX_FILE
        try:
            self.run = json.loads(run_file.read_text())
            lines = index_file.read_text(encoding="utf-8").splitlines()
            self.entries = [json.loads(line) for line in lines if line.strip()]
        except FileNotFoundError as e:
            raise BulkError(f"{self.out_dir} is not a `f3stream tokenize` output ({e.filename} "
                            "is missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BulkError(f"{self.out_dir}: corrupt {RUN_FILE} or {INDEX_FILE} ({e}); re-run "
                            "`f3stream tokenize` to rebuild them") from None
        self._by_key = {e["key"]: e for e in self.entries}
        self._by_path = {e["path"]: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        """Keys of the files tokenized without error."""
        return [e["key"] for e in self.entries if "error" not in e]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if "error" in e]

    def entry(self, path_or_key: str | os.PathLike) -> dict[str, Any]:
        e = self._by_key.get(str(path_or_key)) if not isinstance(path_or_key, Path) else None
        for p in (os.path.abspath(path_or_key), os.path.realpath(path_or_key)):
            e = e or self._by_path.get(p)
        if e is None:
            raise BulkError(f"{path_or_key} is not in {self.out_dir / INDEX_FILE} (neither a "
                            "key nor an input path of that run)")
        return e

    def load(self, path_or_key: str | os.PathLike) -> Tokens:
        """A file's :class:`~f3stream.tokens_io.Tokens`, read from its shard by slicing."""
        from safetensors import safe_open

        from .tokens_io import Tokens

        e = self.entry(path_or_key)
        if "error" in e:
            raise BulkError(f"{e['key']} was not tokenized: {e['error']}")
        a, n = e["offset"], e["frames"]
        shard = self.out_dir / e["shard"]
        try:
            with safe_open(str(shard), framework="np") as f:
                names = set(f.keys())
                lat = f.get_slice("latents")[a:a + n]
                rep = f.get_slice("representations")[a:a + n] \
                    if "representations" in names else None
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types
            raise BulkError(f"cannot read {shard}: {err}") from None
        return Tokens(np.asarray(lat, np.float32),
                      None if rep is None else np.asarray(rep, np.float32),
                      self.run.get("sample_rate"), self.run.get("frame_rate"))


def load_tokenized(out_dir: str | os.PathLike, path_or_key: str | os.PathLike) -> Tokens:
    """One file's tokens from a ``f3stream tokenize`` output folder (by key or input path).
    For many files, make one :class:`TokenizedCorpus` and call ``load`` on it."""
    return TokenizedCorpus(out_dir).load(path_or_key)


# -- command line ------------------------------------------------------------------------------
def cmd_tokenize(args: argparse.Namespace) -> int:
    model = model_spec(args)  # the workers load it; a missing GPU fails here, once
    if args.workers is not None and args.workers < 1:
        raise BulkError(f"--workers must be at least 1, got {args.workers}")
    try:
        with _sigterm_stops_the_run():
            s = tokenize_corpus(args.input, args.out, checkpoint=model.checkpoint,
                                device=model.device, backend=model.backend,
                                representations=not args.no_representations,
                                shard_size=args.shard_size, workers=args.workers,
                                engine=args.engine, overwrite=args.overwrite,
                                progress=not args.quiet)
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"f3stream: {why}; complete shards are kept and indexed: run the same "
              "command again to resume", file=sys.stderr)
        raise
    skipped = f", {s.shards_skipped} already complete" if s.shards_skipped else ""
    print(f"tokenized {args.input} -> {s.out_dir}: {s.files} files in {s.shards} shards "
          f"({s.shards_computed} computed{skipped})")
    print(f"  ok {s.ok}, errors {len(s.errors)}")
    if s.shards_computed:
        speed = s.audio_seconds / s.elapsed if s.elapsed > 0 else 0.0
        print(f"  {s.audio_seconds:.1f} s of audio -> {s.frames} frames in {s.elapsed:.1f} s "
              f"({speed:.1f}x real time, {s.workers} worker{'s' * (s.workers != 1)}, "
              f"{args.engine})")
    for e in s.errors[:5]:
        print(f"  error: {e['key']}: {e['error']}")
    if len(s.errors) > 5:
        print(f"  ... {len(s.errors) - 5} more errors in {s.out_dir / INDEX_FILE}")
    print(f"  wrote {s.out_dir / INDEX_FILE} and {s.out_dir / RUN_FILE}")
    return 0


def register(subs) -> None:
    """Registers ``f3stream tokenize``."""
    p = add_command(
        subs, "tokenize", "a folder or manifest of audio -> token shards",
        "Tokenizes every audio file of a folder (recursively) or a JSONL manifest into "
        "safetensors shards plus index.jsonl, with several worker processes. Re-running the "
        "same command resumes: complete shards are skipped. Unreadable files are listed in the "
        "index as errors.",
        "  f3stream tokenize corpus/ --out corpus-tokens --workers 2\n"
        "  f3stream tokenize corpus/manifest.jsonl --out tokens --no-representations\n",
        cmd_tokenize)
    add_model_options(p)
    p.add_argument("input", metavar="DIR_OR_MANIFEST",
                   help="folder of audio files or a JSONL manifest")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"files per shard (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes, one model and one thread each (default: "
                        "min(2, CPU cores))")
    p.add_argument("--no-representations", action="store_true",
                   help="store only the latents (skips the representation encoder)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local processes, or Ray tasks (needs `pip install 'ray[data]'`)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds other files or another run's settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
