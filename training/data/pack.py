"""Decodes a corpus manifest once into one memory-mapped int16 array, so training never decodes
or resamples audio per batch.

    python -m training.data.pack --manifest data/corpus/manifest.jsonl --out data/packed

Writes ``OUT/audio.int16`` (all clips back to back at the model's rate) and ``OUT/index.npz``
(per clip: offset, length, band limit in Hz, split, speaker, source, text). The band limit is
half the file's own sample rate (capped at the model's Nyquist): an 8 kHz telephone prompt
carries nothing above 4 kHz, and training must not teach the decoder to cut the highs of
full-band input from it. Empty, silent or unreadable files are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from f3stream.audio import load_audio
from f3stream.fileio import atomic_path

from .manifest import SPLITS, read_manifest

MIN_SECONDS = 0.25
SILENT_PEAK = 1e-3


@dataclass
class PackedCorpus:
    """A packed corpus opened read-only (the audio stays on disk, paged in on demand)."""

    audio: np.ndarray       # int16 [total_samples], memory-mapped
    offsets: np.ndarray     # int64 [clips]
    lengths: np.ndarray     # int64 [clips]
    band_hz: np.ndarray     # float32 [clips]
    splits: np.ndarray      # str [clips]
    speakers: np.ndarray    # str [clips]
    sources: np.ndarray     # str [clips]
    texts: np.ndarray       # str [clips]
    sample_rate: int

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "PackedCorpus":
        folder = Path(folder)
        index = folder / "index.npz"
        if not index.is_file():
            raise FileNotFoundError(f"{index} not found: pack a corpus first with "
                                    "`python -m training.data.pack`")
        meta = np.load(index, allow_pickle=False)
        audio = np.memmap(folder / "audio.int16", dtype=np.int16, mode="r")
        lengths = meta["lengths"]
        if int(meta["offsets"][-1] + lengths[-1]) != audio.size:
            raise ValueError(f"{folder}: audio.int16 does not match index.npz (re-pack it)")
        return cls(audio, meta["offsets"], lengths, meta["band_hz"], meta["splits"],
                   meta["speakers"], meta["sources"], meta["texts"], int(meta["sample_rate"]))

    def select(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def hours(self, clips: np.ndarray) -> float:
        return float(self.lengths[clips].sum()) / self.sample_rate / 3600

    def report(self) -> str:
        """Hours per source and split (a table for the docs)."""
        rows = ["| source | " + " | ".join(SPLITS) + " | speakers (train/val/test) |",
                "|---|" + "---|" * len(SPLITS) + "---|"]
        for src in sorted(set(self.sources.tolist())):
            hrs, spk = [], []
            for sp in SPLITS:
                m = (self.sources == src) & (self.splits == sp)
                hrs.append(f"{self.hours(np.flatnonzero(m)):.2f} h")
                spk.append(str(len(set(self.speakers[m].tolist()))))
            rows.append(f"| {src} | " + " | ".join(hrs) + f" | {'/'.join(spk)} |")
        return "\n".join(rows)


def _decode(args: tuple[str, int]) -> tuple[np.ndarray | None, float, str]:
    path, sr = args
    try:
        wav, orig_sr = load_audio(path, sr)
    except Exception as e:  # a broken file in a package must not stop the build
        return None, 0.0, f"unreadable ({e})"
    if wav.size < MIN_SECONDS * sr:
        return None, 0.0, "too short or empty"
    peak = float(np.abs(wav).max())
    if peak < SILENT_PEAK:
        return None, 0.0, "silent"
    if peak > 1.0:
        wav = wav / peak
    return (np.clip(wav, -1, 1) * 32767).astype(np.int16), min(orig_sr, sr) / 2.0, ""


def pack(manifest: Path, out: Path, sample_rate: int = 24000, jobs: int = 2) -> dict[str, int]:
    clips = read_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    keep, skipped = [], {}
    offsets, lengths, bands = [], [], []
    total = 0
    with atomic_path(out / "audio.int16") as tmp, open(tmp, "wb") as f, \
            ProcessPoolExecutor(jobs) as pool:
        work = [(c.path, sample_rate) for c in clips]
        for clip, (pcm, band, why) in tqdm(zip(clips, pool.map(_decode, work, chunksize=16)),
                                           total=len(clips), desc="pack", unit="clip"):
            if pcm is None:
                skipped[why.split(" (")[0]] = skipped.get(why.split(" (")[0], 0) + 1
                print(f"skipped {clip.path}: {why}", file=sys.stderr)
                continue
            f.write(pcm.tobytes())
            keep.append(clip)
            offsets.append(total)
            lengths.append(pcm.size)
            bands.append(band)
            total += pcm.size
    if not keep:
        raise SystemExit("no usable clips in the manifest")
    with atomic_path(out / "index.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=np.array(offsets, np.int64), lengths=np.array(lengths, np.int64),
                     band_hz=np.array(bands, np.float32),
                     splits=np.array([c.split for c in keep]),
                     speakers=np.array([c.speaker for c in keep]),
                     sources=np.array([c.source for c in keep]),
                     texts=np.array([c.text for c in keep]), sample_rate=sample_rate)
    return {"clips": len(keep), "skipped": sum(skipped.values()), **skipped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data.pack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("data/corpus/manifest.jsonl"))
    p.add_argument("--out", type=Path, default=Path("data/packed"))
    p.add_argument("--sample-rate", type=int, default=24000)
    p.add_argument("--jobs", type=int, default=2, help="decoding processes")
    args = p.parse_args(argv)
    counts = pack(args.manifest, args.out, args.sample_rate, args.jobs)
    corpus = PackedCorpus.open(args.out)
    print(json.dumps(counts))
    print(corpus.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
