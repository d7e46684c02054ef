"""Where evaluation clips come from: a corpus manifest, a folder of audio, or alsa-utils' prompts.

Manifests are read by :func:`f3stream.manifest.read_manifest` (re-exported here).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

from ..manifest import Clip, read_manifest
from .errors import EvalError

__all__ = ["ALSA_DIR", "ALSA_SOURCE", "AUDIO_SUFFIXES", "EvalClip", "alsa_clips",
           "folder_clips", "read_manifest", "subsample"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
ALSA_DIR = Path("/usr/share/sounds/alsa")
ALSA_SOURCE = "alsa-utils"

EvalClip = Clip  # one audio file with what we know about it (the manifest's record)


def folder_clips(folder: str | os.PathLike, source: str = "folder") -> list[EvalClip]:
    """Every audio file under ``folder`` (sorted); a sidecar ``NAME.txt`` gives the transcript."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"audio folder not found: {folder}")
    clips = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file():
            txt = p.with_suffix(".txt")
            text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
            clips.append(EvalClip(str(p), text, p.parent.name, "test", source))
    if not clips:
        raise EvalError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    return clips


def alsa_clips(folder: Path = ALSA_DIR) -> list[EvalClip]:
    """alsa-utils' recorded channel prompts; the transcript is the file name ("Front_Left" ->
    "front left"). ``Noise.wav`` is pink noise, kept for the signal metrics with no transcript.

    These recordings are reserved for independent evaluation: nothing in training reads them.
    """
    if not folder.is_dir() or not any(folder.glob("*.wav")):
        raise EvalError(f"{folder} has no prompts; install them with `apt-get install -y "
                        "alsa-utils` (Debian/Ubuntu)")
    clips = []
    for p in sorted(folder.glob("*.wav")):
        text = "" if p.stem.lower() == "noise" else p.stem.replace("_", " ").lower()
        clips.append(EvalClip(str(p), text, "alsa", "test", ALSA_SOURCE))
    return clips


def subsample(clips: list[EvalClip], n: int | None, seed: int = 0) -> list[EvalClip]:
    """At most ``n`` clips, drawn round-robin over sources (then speakers) so that a small
    ``--max-clips`` still covers synthetic and real voices; deterministic for a seed."""
    if n is None or n >= len(clips):
        return list(clips)
    rng = random.Random(seed)
    by_source: dict[str, dict[str, list[EvalClip]]] = defaultdict(lambda: defaultdict(list))
    for c in clips:
        by_source[c.source][c.speaker].append(c)
    queues = []
    for src in sorted(by_source):
        speakers = by_source[src]
        for lst in speakers.values():
            rng.shuffle(lst)
        order = []  # round-robin over this source's speakers
        names = sorted(speakers)
        while any(speakers[s] for s in names):
            for s in names:
                if speakers[s]:
                    order.append(speakers[s].pop())
        queues.append(order)
    out: list[EvalClip] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out
