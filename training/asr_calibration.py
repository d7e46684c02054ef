"""How much does a near-transparent change alone move what the recognizer hears?

Why: `f3stream eval` scores a reconstruction by the words pocketsphinx hears in it against the
words it hears in the original (``wer_reconstruction_vs_original``). That figure means little
without a floor: on noisy, band-limited recordings the recognizer may change its mind for
any small change of the audio. This re-transcribes the clips of an eval report after
changes far smaller than the codec's (Opus through libsndfile, white noise at a high SNR) and
pools the edits the same way (``corpus_wer``), so a codec's figure can be read against them.

    python -m training.asr_calibration --report runs/evals/X/report.json --out calib.json
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

Transcribe = Callable[[np.ndarray, int], str]


def opus_roundtrip(wav: np.ndarray, sr: int) -> np.ndarray:
    """``wav`` through libsndfile's Opus encoder at its default settings and back."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="OGG", subtype="OPUS")
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32")
    out = out[:wav.size]
    return np.pad(out, (0, wav.size - out.size))


def add_noise(wav: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """White noise at ``snr_db`` below the clip's RMS level."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    noise = np.random.default_rng(seed).standard_normal(wav.size) * rms * 10 ** (-snr_db / 20)
    return (wav + noise).astype(np.float32)


def calibrate(clips: list[tuple[np.ndarray, str]], sr: int, transcribe: Transcribe,
              snr_db: float = 40.0) -> dict:
    """``clips``: (audio, the recognizer's transcript of it as the eval report holds it).
    Returns, per change, the pooled WER of the changed audio's transcript against the
    original's, and a re-transcription of the unchanged audio (0 when the recognizer is
    deterministic)."""
    from f3stream.evaluation.metrics import corpus_wer

    pairs: dict[str, list[tuple[str, str]]] = {"unchanged": [], "opus": [],
                                               f"noise_{snr_db:g}db": []}
    for i, (wav, reported) in enumerate(clips):
        pairs["unchanged"].append((reported, transcribe(wav, sr)))
        pairs["opus"].append((reported, transcribe(opus_roundtrip(wav, sr), sr)))
        pairs[f"noise_{snr_db:g}db"].append((reported, transcribe(add_noise(wav, snr_db, i), sr)))
    out = {}
    for name, p in pairs.items():
        w, used, skipped = corpus_wer(p)
        out[name] = {"wer_vs_original": w, "n": used, "skipped_empty_reference": skipped}
    return out


def transcribed_rows(report_path: Path) -> list[dict]:
    """The clips of an `f3stream eval` report that carry the original's transcript."""
    report = json.loads(Path(report_path).read_text())
    rows = [r for r in report.get("clips", []) if "asr_original" in r]
    if not rows:
        raise SystemExit(f"{report_path}: no clip has a transcript (was it made with --no-asr?)")
    return rows


def write_report(path: Path, result: dict) -> None:
    """``result`` as indented JSON at ``path``, written atomically."""
    from f3stream.fileio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.asr_calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, required=True,
                   help="an `f3stream eval` report.json with transcripts (run without --no-asr)")
    p.add_argument("--snr-db", type=float, default=40.0)
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = p.parse_args(argv)

    from f3stream.audio import load_audio
    from f3stream.evaluation.asr import Recognizer

    report = json.loads(args.report.read_text())
    rows = transcribed_rows(args.report)
    sr = 24000
    clips = [(load_audio(r["path"], sr)[0], r["asr_original"]) for r in rows]
    result = calibrate(clips, sr, Recognizer().transcribe, args.snr_db)
    result["report"] = str(args.report)
    result["reconstruction"] = report.get("intelligibility", {}).get("per_source", {})
    write_report(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
