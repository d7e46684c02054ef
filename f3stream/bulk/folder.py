"""The output folder around the shards: one writer at a time, whose run it holds, the
leftovers of killed runs, and its ``run.json`` and ``index.jsonl``.

The index is always rebuilt from the shards a run found or computed, never appended to, so it
is true after any interruption.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from .errors import BulkError
from .layout import FORMAT, INDEX_FILE, LOCK_FILE, RUN_FILE, SHARD_GLOB, shard_name
from .plan import ShardJob


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
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


def check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuses (unless ``overwrite``) a folder that holds other files or another run's
    settings, so a run never mixes its shards with foreign ones."""
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


def cleanup(out: Path, n_shards: int) -> None:
    """Removes temp files of killed runs and shards past the plan (the input set shrank)."""
    for p in out.glob(".*.tmp*"):
        if p.name.startswith((".shard-", f".{INDEX_FILE}.", f".{RUN_FILE}.")):
            p.unlink(missing_ok=True)
    for p in out.glob(SHARD_GLOB):
        stem = p.name[len("shard-"):-len(".safetensors")]
        if stem.isdigit() and int(stem) >= n_shards:
            p.unlink()


def write_index(out: Path, jobs: Sequence[ShardJob], done: dict[int, list[dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """Writes ``index.jsonl``, which lists exactly the files of completed shards, in input
    order; returns its entries."""
    entries = []
    for job in jobs:
        for e in done.get(job.index, ()):
            entry = {"key": e["key"], "path": e["path"], "shard": shard_name(job.index)}
            entry.update((k, v) for k, v in e.items() if k not in entry)
            entries.append(entry)
    lines = [json.dumps(entry, ensure_ascii=False) for entry in entries]
    atomic_write_bytes(out / INDEX_FILE, "".join(line + "\n" for line in lines).encode())
    return entries


def write_run(out: Path, settings: dict[str, Any], facts: dict[str, Any],
              totals: dict[str, Any]) -> None:
    """run.json: written first (so a killed run is recognised as ours and resumed), then
    again with the totals at the end."""
    run = {"format": FORMAT, "settings": settings, **facts, **totals}
    atomic_write_bytes(out / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())
