"""Builds a speech corpus with no network access, and its manifest.

Sources (each optional):

* ``espeak``: sentences from Debian's ``fortune-mod`` files (or ``--texts FILE``) spoken by
  ``espeak-ng`` voices x variants at random rate and pitch; the transcript is kept. A "speaker"
  is one voice+variant, so held-out voices are never trained on.
* ``klettres``: real recorded human voices from Debian's ``klettres-data`` (letters and
  syllables, one speaker per language folder). The transcript is the sound's name.
* ``--real fillets,tuxpaint,asterisk,ktuberling,hedgewars,drascula``: real recorded voices
  from Debian packages (see :mod:`training.data.real_speech`); ``--fetch-packages`` downloads
  and unpacks them under ``--pkg-root`` (no need to install games). Their held-out voices are pinned; every
  other voice of these sources is trained on.
* ``--extra DIR``: any folder of wav/flac/ogg files (speaker = sub-folder name, text from a
  same-named ``.txt`` beside each file), or ``--extra-manifest FILE`` (JSONL, see manifest.py).

Never used: the voice prompts of ``alsa-utils`` (/usr/share/sounds/alsa), reserved for
independent evaluation; any path under it is refused.

    python -m training.data.build_corpus --out data/corpus --espeak-clips 1500 --klettres
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from f3stream.audio import load_audio, write_audio

from . import real_speech
from .manifest import Clip, read_manifest, split_by_speaker, write_manifest

SAMPLE_RATE = 24000
RESERVED = Path("/usr/share/sounds/alsa")
FORTUNE_DIRS = (Path("/usr/share/games/fortunes"), Path("/usr/share/fortune"))
KLETTRES_DIR = Path("/usr/share/klettres")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga"}

# English voices of espeak-ng x voice-quality variants: 6 x 11 = 66 synthetic "speakers".
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
# Pinned held-out voices: the eval sets always contain unseen female, male and accent voices.
ESPEAK_HELD_OUT = {"en-us+f2": "test", "en-gb-x-rp+m3": "test", "en-029+f4": "test",
                   "en-gb+m7": "val", "en-gb-scotland+f1": "val"}
KLETTRES_HELD_OUT = {"klettres-en_GB": "test", "klettres-nl": "test", "klettres-it": "val"}


def is_reserved(path: str | Path) -> bool:
    try:
        Path(path).resolve().relative_to(RESERVED.resolve())
        return True
    except ValueError:
        return False


def fortune_sentences(paths: list[Path] | None = None, min_words: int = 4,
                      max_words: int = 22) -> list[str]:
    """Plain sentences from fortune files: ASCII, no quotes-of-code, 4-22 words."""
    if not paths:
        paths = [p for d in FORTUNE_DIRS if d.is_dir() for p in sorted(d.iterdir())
                 if p.is_file() and p.suffix == "" and not p.name.endswith(".dat")]
    out: list[str] = []
    for p in paths:
        text = p.read_text(encoding="utf-8", errors="ignore")
        for entry in text.split("\n%\n"):
            entry = " ".join(entry.split())
            for sent in re.split(r"(?<=[.!?])\s+", entry):
                sent = sent.strip(" -\t")
                words = sent.split()
                if not (min_words <= len(words) <= max_words):
                    continue
                if not re.fullmatch(r"[A-Za-z0-9 ,.;:'!?\-]+", sent):
                    continue
                out.append(sent)
    return sorted(set(out))


def _espeak_one(text: str, voice: str, speed: int, pitch: int, out: Path) -> bool:
    raw = out.with_suffix(".raw.wav")
    r = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                        str(raw), text], capture_output=True)
    if r.returncode or not raw.exists():
        return False
    wav, _ = load_audio(raw, SAMPLE_RATE)
    raw.unlink()
    if wav.size < SAMPLE_RATE // 4:
        return False
    peak = float(np.abs(wav).max()) or 1.0
    write_audio(out, wav * (0.7 / peak), SAMPLE_RATE)
    return True


def build_espeak(out_dir: Path, n_clips: int, seed: int, texts: list[str],
                 jobs: int = 2) -> list[Clip]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng")
    if not texts:
        raise SystemExit("no sentences: apt-get install fortune-mod fortunes-min, or --texts")
    rng = random.Random(seed)
    speakers = [f"{v}+{var}" for v in ESPEAK_VOICES for var in ESPEAK_VARIANTS]
    jobs_list = []
    for i in range(n_clips):
        spk = speakers[i % len(speakers)]
        jobs_list.append((rng.choice(texts), spk, rng.randint(120, 210), rng.randint(25, 75),
                          out_dir / "espeak" / spk / f"{i:05d}.wav"))
    for j in jobs_list:
        j[4].parent.mkdir(parents=True, exist_ok=True)
    clips: list[Clip] = []
    with ThreadPoolExecutor(jobs) as pool:
        results = list(tqdm(pool.map(lambda j: _espeak_one(*j[:4], j[4]), jobs_list),
                            total=len(jobs_list), desc="espeak-ng", unit="clip"))
    for ok, (text, spk, _, _, path) in zip(results, jobs_list):
        if ok:
            clips.append(Clip(str(path), text, spk, "train", "espeak-ng"))
    return clips


def build_klettres(out_dir: Path, root: Path = KLETTRES_DIR) -> list[Clip]:
    """Converts klettres-data recordings to 24 kHz wav; text from each language's sounds.xml."""
    if not root.is_dir():
        raise SystemExit(f"{root} not found: apt-get install klettres-data")
    names: dict[str, str] = {}
    for xml in root.glob("*/sounds.xml"):
        try:
            tree = ET.parse(xml)
        except ET.ParseError:
            continue
        for snd in tree.iter("sound"):
            if snd.get("file"):
                names[snd.get("file")] = snd.get("name", "")
    clips = []
    files = sorted(root.glob("*/*/*.ogg"))
    for f in tqdm(files, desc="klettres", unit="clip"):
        lang = f.parent.parent.name
        rel = f.relative_to(root).as_posix()
        dst = out_dir / "klettres" / lang / f"{f.parent.name}-{f.stem}.wav"
        if not dst.exists():
            try:
                wav, _ = load_audio(f, SAMPLE_RATE)
            except Exception as e:  # a broken file in a package must not stop the build
                print(f"skipping {f}: {e}", file=sys.stderr)
                continue
            write_audio(dst, wav, SAMPLE_RATE)
        clips.append(Clip(str(dst), names.get(rel, f.stem), f"klettres-{lang}", "train",
                          "klettres-data"))
    return clips


def scan_folder(folder: Path) -> list[Clip]:
    """A user folder: speaker = first sub-folder (or the folder name), text from FILE.txt."""
    clips = []
    for f in sorted(folder.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES or is_reserved(f):
            continue
        rel = f.relative_to(folder).parts
        spk = rel[0] if len(rel) > 1 else folder.name
        txt = f.with_suffix(".txt")
        text = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        clips.append(Clip(str(f.resolve()), text, spk, "train", f"folder:{folder.name}"))
    return clips


REAL_SOURCE_NAMES = {"fillets-ng", "tuxpaint", "asterisk", "ktuberling", "hedgewars",
                     "drascula"}


def assign_splits(clips: list[Clip], val: float, test: float, seed: int) -> list[Clip]:
    """Speaker-disjoint splits. Pinned voices first; other voices of the real-speech sources
    are trained on (they are few and precious); the rest are split at random."""
    fixed = {**ESPEAK_HELD_OUT, **KLETTRES_HELD_OUT, **real_speech.HELD_OUT}
    real = {c.speaker for c in clips if c.source in REAL_SOURCE_NAMES}
    speakers = sorted({c.speaker for c in clips})
    fixed = {k: v for k, v in fixed.items() if k in speakers}
    fixed.update({s: "train" for s in real if s not in fixed})
    table = split_by_speaker(speakers, val, test, seed, fixed)
    return [Clip(c.path, c.text, c.speaker, table[c.speaker], c.source) for c in clips]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data.build_corpus",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/corpus", help="corpus folder (manifest.jsonl inside)")
    p.add_argument("--espeak-clips", type=int, default=1500,
                   help="number of espeak-ng sentences to synthesize (0: none)")
    p.add_argument("--klettres", action="store_true",
                   help="include the real recorded voices of Debian's klettres-data")
    p.add_argument("--real", default="",
                   help="comma-separated real-speech sources: " + ",".join(real_speech.INGESTERS))
    p.add_argument("--pkg-root", type=Path, default=Path("/"),
                   help="where the real-speech packages' files are (/ when installed)")
    p.add_argument("--fetch-packages", action="store_true",
                   help="apt-get download the --real packages and unpack them under --pkg-root")
    p.add_argument("--texts", type=Path, help="a text file, one sentence per line, instead of "
                                              "fortune-mod")
    p.add_argument("--extra", type=Path, action="append", default=[],
                   help="a folder of audio files to add (repeatable)")
    p.add_argument("--extra-manifest", type=Path, action="append", default=[],
                   help="a JSONL manifest to add (repeatable)")
    p.add_argument("--val-fraction", type=float, default=0.08)
    p.add_argument("--test-fraction", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    args = p.parse_args(argv)
    out = Path(args.out)
    clips: list[Clip] = []
    if args.espeak_clips > 0:
        texts = ([t.strip() for t in args.texts.read_text().splitlines() if t.strip()]
                 if args.texts else fortune_sentences())
        clips += build_espeak(out, args.espeak_clips, args.seed, texts, args.jobs)
    if args.klettres:
        clips += build_klettres(out)
    real = [s for s in args.real.split(",") if s]
    bad = set(real) - set(real_speech.INGESTERS)
    if bad:
        raise SystemExit(f"unknown --real sources {sorted(bad)}; known: "
                         f"{sorted(real_speech.INGESTERS)}")
    if args.fetch_packages and real:
        if args.pkg_root == Path("/"):
            raise SystemExit("--fetch-packages needs --pkg-root (a folder to unpack into)")
        names = [n for s in real for n in real_speech.PACKAGES[s]]
        real_speech.fetch_packages(names, args.pkg_root, args.pkg_root / "debs")
    clips += real_speech.ingest(real, args.pkg_root)
    for folder in args.extra:
        if is_reserved(folder):
            raise SystemExit(f"{folder} holds the alsa-utils prompts reserved for evaluation")
        clips += scan_folder(folder)
    for m in args.extra_manifest:
        extra = [c for c in read_manifest(m) if not is_reserved(c.path)]
        clips += extra
    if not clips:
        raise SystemExit("no clips: enable at least one source")
    clips = assign_splits(clips, args.val_fraction, args.test_fraction, args.seed)
    path = write_manifest(out / "manifest.jsonl", clips)
    counts = {s: sum(c.split == s for c in clips) for s in ("train", "val", "test")}
    spk = {s: len({c.speaker for c in clips if c.split == s}) for s in counts}
    print(f"wrote {path}: {len(clips)} clips; " +
          ", ".join(f"{s} {counts[s]} clips / {spk[s]} speakers" for s in counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
