"""Which files a run tokenizes: a folder's audio or a JSON-lines manifest's, sorted by key.

Sorting by key (the path relative to the folder / manifest folder) makes the plan, and with
it every output, depend only on the inputs, not on the file system's listing order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BulkError

BASE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")


@dataclass(frozen=True)
class InputFile:
    key: str    # stable name in the index: path relative to the input folder / manifest folder
    path: str   # absolute path read


def audio_suffixes() -> tuple[str, ...]:
    """The suffixes a folder search picks up: mp3 only where this libsndfile can decode it."""
    import soundfile as sf

    return BASE_SUFFIXES + ((".mp3",) if "MP3" in sf.available_formats() else ())


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
        from ..manifest import read_manifest

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
