"""Where evaluation clips come from: a corpus manifest, a folder of audio, or alsa-utils' prompts.

The manifest reader accepts the same JSON-lines format as ``training.data.manifest`` but lives
here because the installed package ships without ``training/``.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .errors import EvalError

SPLITS = ("train", "val", "test")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
ALSA_DIR = Path("/usr/share/sounds/alsa")
ALSA_SOURCE = "alsa-utils"


@dataclass(frozen=True)
class EvalClip:
    """One audio file with what we know about it (``text`` may be empty: no transcript)."""
    path: str
    text: str = ""
    speaker: str = "unknown"
    split: str = "test"
    source: str = ""


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[EvalClip]:
    """Reads a JSON-lines manifest (relative paths resolve against its folder); ``split`` filters."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"manifest not found: {path} (build the corpus with `python -m "
                        "training.data.build_corpus`, or evaluate a folder with --audio-dir)")
    clips = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(d, dict) or "path" not in d:
            raise EvalError(f"{path}:{n}: expected an object with a 'path'")
        sp = str(d.get("split", "train"))
        if sp not in SPLITS:
            raise EvalError(f"{path}:{n}: split must be one of {SPLITS}, got {sp!r}")
        p = Path(d["path"])
        if not p.is_absolute():
            p = path.parent / p
        clip = EvalClip(str(p), str(d.get("text", "")), str(d.get("speaker", "unknown")), sp,
                        str(d.get("source", "")) or "unknown")
        if split is None or clip.split == split:
            clips.append(clip)
    return clips


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
