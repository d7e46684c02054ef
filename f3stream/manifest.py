"""The corpus manifest: one JSON object per line, the one format that training, ``f3stream
eval`` and ``f3stream tokenize`` all read.

Each line: ``{"path": "...", "text": "...", "speaker": "...", "split": "train|val|test",
"source": "..."}``. ``path`` is absolute or relative to the manifest's folder; ``text`` may be
empty (no transcript); ``speaker`` identifies the voice and is what splits are made by, so an
evaluation voice is never trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import F3StreamError
from .fileio import atomic_write_bytes

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One audio file with what is known about it (``text`` may be empty: no transcript)."""

    path: str
    text: str = ""
    speaker: str = "unknown"
    split: str = "test"
    source: str = ""


class ManifestError(F3StreamError, ValueError):
    """A manifest is missing or a line is malformed."""


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[Clip]:
    """Reads a manifest, resolving relative paths against its folder; ``split`` filters."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (build a corpus with `python -m "
                            "training.data.build_corpus`, or pass a folder of audio instead)")
    clips = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(d, dict) or "path" not in d:
            raise ManifestError(f"{path}:{n}: expected an object with a 'path'")
        sp = str(d.get("split", "train"))
        if sp not in SPLITS:
            raise ManifestError(f"{path}:{n}: split must be one of {SPLITS}, got {sp!r}")
        p = Path(d["path"])
        if not p.is_absolute():
            p = path.parent / p
        clip = Clip(str(p), str(d.get("text", "")), str(d.get("speaker", "unknown")), sp,
                    str(d.get("source", "")) or "unknown")
        if split is None or clip.split == split:
            clips.append(clip)
    return clips


def write_manifest(path: str | os.PathLike, clips: list[Clip]) -> Path:
    """Writes clips atomically, paths relative to the manifest's folder where possible."""
    path = Path(path)
    lines = []
    for c in clips:
        d = asdict(c)
        try:
            d["path"] = os.path.relpath(c.path, path.parent.resolve())
        except ValueError:
            pass
        lines.append(json.dumps(d, ensure_ascii=False))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path
