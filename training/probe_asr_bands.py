"""Which frequency band of a reconstruction moves what the recognizer hears?

Why: the reconstruction's WER says *that* pocketsphinx hears other words, not *where* in the
spectrum the codec changed them. This splits original and reconstruction into bands (a
zero-phase FFT partition: the bands of a signal sum back to it exactly) and re-transcribes
two hybrids per band:

* ``reconstruction_band_in_original``: the original with one band taken from the
  reconstruction. Its WER against the original's transcript is what that band's error alone
  costs.
* ``original_band_in_reconstruction``: the reconstruction with one band restored from the
  original. How far its WER falls below the reconstruction's is what fixing that band would
  buy.

Edits are pooled over the clips (``corpus_wer``), against the original's transcript and,
where the report has one, against the reference text.

    python -m training.probe_asr_bands --report docs/eval-alsa/report.json --out bands.json
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

Transcribe = Callable[[np.ndarray, int], str]

DEFAULT_EDGES_HZ = (0, 500, 1000, 2000, 4000, 12000)


def band_split(x: np.ndarray, sr: int, edges_hz) -> list[np.ndarray]:
    """``x`` as one signal per band ``[edges[i], edges[i+1])`` (the last band also takes
    everything above its upper edge): an FFT over the whole clip with the other bins zeroed,
    so the bands sum back to ``x`` to rounding."""
    spec = np.fft.rfft(x.astype(np.float64))
    freq = np.fft.rfftfreq(x.size, 1.0 / sr)
    out = []
    for i, (lo, hi) in enumerate(zip(edges_hz[:-1], edges_hz[1:])):
        keep = (freq >= lo) & ((freq < hi) | (i == len(edges_hz) - 2))
        out.append(np.fft.irfft(np.where(keep, spec, 0), x.size))
    return out


def band_hybrids(wav: np.ndarray, rec: np.ndarray, sr: int, edges_hz
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Per band name: the two hybrids of the module's docstring (float32, ``wav``'s length)."""
    rec = np.pad(rec[:wav.size], (0, max(0, wav.size - rec.size)))
    bo, br = band_split(wav, sr, edges_hz), band_split(rec, sr, edges_hz)
    out = {}
    for i, (lo, hi) in enumerate(zip(edges_hz[:-1], edges_hz[1:])):
        name = f"{lo}-{hi} Hz"
        out[name] = {
            "reconstruction_band_in_original": (wav - bo[i] + br[i]).astype(np.float32),
            "original_band_in_reconstruction": (rec - br[i] + bo[i]).astype(np.float32),
        }
    return out


def probe(clips: list[dict], sr: int, transcribe: Transcribe, edges_hz=DEFAULT_EDGES_HZ,
          progress: bool = False) -> dict:
    """``clips``: dicts with ``wav``, ``rec`` (float arrays at ``sr``), ``original`` (the
    recognizer's transcript of ``wav``) and optionally ``text`` (the reference). Returns the
    pooled WERs of the reconstruction and of every hybrid, against the original's transcript
    and (``vs_text``, clips with a reference only) against the reference, plus each clip's
    transcripts."""
    from f3stream.evaluation.metrics import corpus_wer

    vs_orig: dict[str, list[tuple[str, str]]] = {}
    vs_text: dict[str, list[tuple[str, str]]] = {}
    rows = []

    def add(key: str, clip: dict, hyp: str) -> None:
        vs_orig.setdefault(key, []).append((clip["original"], hyp))
        if clip.get("text"):
            vs_text.setdefault(key, []).append((clip["text"], hyp))

    from tqdm import tqdm

    for clip in tqdm(clips, desc="transcribe", unit="clip", disable=not progress):
        row = {"path": clip.get("path"), "original": clip["original"]}
        if clip.get("text"):
            add("original", clip, clip["original"])
        heard = transcribe(clip["rec"], sr)
        add("reconstruction", clip, heard)
        row["reconstruction"] = heard
        for band, hybrids in band_hybrids(clip["wav"], clip["rec"], sr, edges_hz).items():
            for kind, y in hybrids.items():
                heard = transcribe(y, sr)
                add(f"{kind} {band}", clip, heard)
                row[f"{kind} {band}"] = heard
        rows.append(row)

    def pooled(pairs: dict[str, list[tuple[str, str]]]) -> dict:
        out = {}
        for key, p in pairs.items():
            w, used, skipped = corpus_wer(p)
            out[key] = {"wer": None if w is None else round(w, 4), "n": used,
                        "skipped_empty_reference": skipped}
        return out

    return {"bands_hz": list(edges_hz), "wer_vs_original": pooled(vs_orig),
            "wer_vs_text": pooled(vs_text), "clips": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.probe_asr_bands", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, required=True,
                   help="an `f3stream eval` report.json with transcripts (run without --no-asr)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: bundled)")
    p.add_argument("--edges", type=float, nargs="+", default=list(DEFAULT_EDGES_HZ),
                   help="band edges in Hz (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from f3stream.audio import load_audio
    from f3stream.evaluation.asr import Recognizer
    from f3stream.tokenizer import Tokenizer
    from training.asr_calibration import transcribed_rows, write_report

    rows = transcribed_rows(args.report)
    tok = Tokenizer.load(args.checkpoint)
    sr = tok.sample_rate
    recognizer = Recognizer()
    clips = []
    for r in tqdm(rows, desc="reconstruct", unit="clip"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wav, _ = load_audio(r["path"], sr)
        rec = tok.decode(tok.tokenize(wav, representations=False).latents)[:wav.size]
        # the original's transcript is taken afresh: the report may come from another
        # version of the recognizer's settings
        clips.append({"path": r["path"], "wav": wav, "rec": np.asarray(rec, np.float32),
                      "original": recognizer.transcribe(wav, sr), "text": r.get("text")})
    edges = [int(e) if float(e).is_integer() else e for e in args.edges]
    result = probe(clips, sr, recognizer.transcribe, edges, progress=True)
    result["report"] = str(args.report)
    result["checkpoint"] = args.checkpoint or "bundled"
    write_report(args.out, result)
    for name in ("wer_vs_original", "wer_vs_text"):
        print(name)
        for key, v in result[name].items():
            print(f"  {key:55s} {v['wer']}  (n={v['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
