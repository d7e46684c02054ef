"""Ingesters for real recorded human speech shipped in Debian packages (no network at run time
beyond the package mirror).

Each ingester walks the files of one package under ``root`` (``/`` when the package is
installed, or a folder the ``.deb`` was unpacked into with ``dpkg-deb -x``, see
:func:`fetch_packages`) and returns :class:`Clip` records whose ``speaker`` is the voice the
files allow us to tell apart (a game character, a prompt voice, a language's narrator). The
``text`` is what the file name says, and only where that is what is spoken: English file
names are transcripts of English recordings only (a Spanish narrator saying "gato" in
``cat_desc_es.ogg`` gets no text), so the frozen-LM loss of stage 1 never learns a wrong one.

Held-out voices are pinned in :data:`HELD_OUT` so an evaluation voice is never trained on, no
matter which other sources a corpus mixes in. The alsa-utils prompts are never read.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from .manifest import Clip

# Debian package -> the ingester that reads it.
PACKAGES = {
    "fillets": ("fillets-ng-data-cs", "fillets-ng-data-nl"),
    "tuxpaint": ("tuxpaint-stamps-default",),
    "asterisk": ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-es-wav",
                 "asterisk-core-sounds-fr-wav", "asterisk-core-sounds-it-wav",
                 "asterisk-core-sounds-ru-wav"),
    "ktuberling": ("ktuberling-data",),
    "hedgewars": ("hedgewars-data",),
    "drascula": ("drascula",),
}

# Whole voices kept out of training, per source (speaker name -> split). Chosen so every test
# set has an unseen male and female adult voice of a language the training set also holds.
HELD_OUT = {
    "fillets-nl-v": "test",        # Dutch big fish (main character, ~800 clips)
    "fillets-cs-hs": "val",        # a Czech minor character
    "tuxpaint-es": "test",         # Spanish stamp narrator
    "tuxpaint-da": "val",
    "asterisk-ru": "test",         # Russian prompt voice (8 kHz)
    "ktuberling-de": "test",
    "ktuberling-uk": "val",
    "hedgewars-Pirate": "test",
    "hedgewars-Mobster": "val",
    "drascula-E": "val",           # English actors; no test voice, so the test set stays as it was
}


def fetch_packages(names: list[str], root: Path, cache: Path) -> None:
    """``apt-get download`` each package into ``cache`` and unpack it under ``root``."""
    cache.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not list(cache.glob(f"{n}_*.deb"))]
    if missing:
        r = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True,
                           text=True)
        if r.returncode:
            raise SystemExit(f"apt-get download failed ({' '.join(missing)}): "
                             f"{r.stderr.strip()[-500:]}\n(try `apt-get update` first)")
    for n in names:
        for deb in cache.glob(f"{n}_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def _words(stem: str) -> str:
    return " ".join(w for w in re.split(r"[-_]+", stem) if w and not w.isdigit())


def fillets(root: Path) -> list[Clip]:
    """Fish Fillets NG dialogue (cs, nl): file ``<level>-<character>-<line>.ogg``; speaker =
    language + character (``m`` small fish, ``v`` big fish, others minor characters)."""
    base = root / "usr/share/games/fillets-ng/sound"
    clips = []
    for f in sorted(base.glob("*/*/*.ogg")):
        lang = f.parent.name
        if lang not in ("cs", "nl"):
            continue
        parts = f.stem.split("-")
        who = parts[1] if len(parts) > 2 else "misc"
        clips.append(Clip(str(f), "", f"fillets-{lang}-{who}", "train", "fillets-ng"))
    return clips


def tuxpaint(root: Path) -> list[Clip]:
    """Tux Paint stamp descriptions: ``<name>_desc_<lang>.ogg``, one narrator per language.
    Plain ``<name>_desc.ogg`` (English, ~1 min in all) is kept as its own speaker."""
    base = root / "usr/share/tuxpaint/stamps"
    clips = []
    for f in sorted(base.rglob("*_desc*.ogg")):
        m = re.fullmatch(r"(.+)_desc(?:_([a-z]{2,3}))?(?:\.ogg)?", f.stem)
        if not m:
            continue
        lang = m.group(2) or "en"
        text = _words(m.group(1)) if lang == "en" else ""
        clips.append(Clip(str(f), text, f"tuxpaint-{lang}", "train", "tuxpaint"))
    return clips


def asterisk(root: Path) -> list[Clip]:
    """Asterisk telephone prompts (8 kHz): speaker = voice (the en and es Allison folders are
    one person)."""
    base = root / "usr/share/asterisk/sounds"
    clips = []
    for voice_dir in sorted(p for p in base.glob("*") if p.is_dir()):
        lang, _, _, name = (voice_dir.name.split("_") + ["", "", "", ""])[:4]
        speaker = "asterisk-allison" if name == "Allison" else f"asterisk-{lang}"
        for f in sorted(voice_dir.rglob("*.wav")):
            if "silence" in f.parts:
                continue
            text = _words(f.stem) if lang == "en" and f.parent == voice_dir else ""
            clips.append(Clip(str(f), text, speaker, "train", "asterisk"))
    return clips


def ktuberling(root: Path) -> list[Clip]:
    """KTuberling object names, one voice per locale folder."""
    base = root / "usr/share/ktuberling/sounds"
    return [Clip(str(f), _words(f.stem) if f.parent.name == "en" else "",
                 f"ktuberling-{f.parent.name}", "train", "ktuberling")
            for f in sorted(base.glob("*/*.ogg"))]


def hedgewars(root: Path) -> list[Clip]:
    """Hedgewars voice packs (cartoon voices): speaker = pack folder. File names are English
    exclamations; the Russian, Polish, Spanish and Ukrainian packs get no text."""
    base = root / "usr/share/games/hedgewars/Data/Sounds/voices"
    foreign = ("_ru", "_pl", "_es", "_uk", "Russian")
    return [Clip(str(f), "" if any(t in f.parent.name for t in foreign) else _words(f.stem),
                 f"hedgewars-{f.parent.name}", "train", "hedgewars")
            for f in sorted(base.glob("*/*.ogg"))]


DRASCULA_RATE = 11025
DRASCULA_HEADER = 32


def drascula_to_wav(als: Path, wav: Path) -> None:
    """One Drascula ``.ALS`` voice file (a 32-byte header, then unsigned 8-bit PCM at 11025 Hz)
    as a 16-bit wav; written to a temporary name and renamed, so a kill leaves no half file."""
    import soundfile as sf

    raw = np.fromfile(als, dtype=np.uint8)[DRASCULA_HEADER:]
    pcm = ((raw.astype(np.int16) - 128) * 256).astype(np.int16)
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav.with_name(wav.name + ".tmp")
    sf.write(tmp, pcm, DRASCULA_RATE, subtype="PCM_16", format="WAV")
    tmp.replace(wav)


def drascula(root: Path) -> list[Clip]:
    """Drascula: The Vampire Strikes Back, English voice files ``<character><n>.ALS`` (raw
    8-bit PCM at 11 kHz, so they carry nothing above 5.5 kHz). Speaker = the file name's letter
    prefix (``D``, ``VB``, ``I``, ...; 12 of them; no prefix, 463 of the 783 files, is taken to
    be the player character, ``drascula-hero``). The files
    are converted once to wav under ``root/drascula-wav`` (the packer reads wav)."""
    base = root / "usr/share/scummvm/drascula/en"
    out = root / "drascula-wav"
    clips = []
    for f in sorted(base.glob("*.ALS")):
        m = re.fullmatch(r"([A-Z]*)(\d+)", f.stem)
        if not m:
            continue
        wav = out / (f.stem + ".wav")
        if not wav.exists():
            drascula_to_wav(f, wav)
        clips.append(Clip(str(wav), "", f"drascula-{m.group(1) or 'hero'}", "train", "drascula"))
    return clips


INGESTERS = {"fillets": fillets, "tuxpaint": tuxpaint, "asterisk": asterisk,
             "ktuberling": ktuberling, "hedgewars": hedgewars, "drascula": drascula}


def ingest(sources: list[str], root: Path) -> list[Clip]:
    clips: list[Clip] = []
    for name in sources:
        found = INGESTERS[name](root)
        if not found:
            print(f"warning: no {name} files under {root} (fetch with --fetch-packages)",
                  file=sys.stderr)
        clips += found
    return clips
