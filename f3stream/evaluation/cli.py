"""``f3stream eval``: argument parsing for the evaluation tool (registered by f3stream.cli)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..commandline import add_command, add_model_options, load_tokenizer
from .errors import EvalError

DESCRIPTION = (
    "Evaluates a checkpoint on held-out voices: reconstruction quality (wideband PESQ, STOI, "
    "log-mel L1, SI-SDR) per clip and per source, pocketsphinx word error rate on the original "
    "vs the reconstruction, and linear probes (spoken content on unseen voices, voice identity) "
    "on the representations, the latents and a log-mel baseline. Writes report.json and PNG "
    "plots into --out. --alsa instead scores the recorded prompts of Debian's alsa-utils "
    "(/usr/share/sounds/alsa), which no training data includes.")
EXAMPLE = ("  f3stream eval --manifest data/corpus/manifest.jsonl --split test --out eval-report\n"
           "  f3stream eval --alsa --out eval-alsa\n"
           "  f3stream eval --audio-dir my_recordings --out eval-mine --no-asr\n")


def register(subs) -> argparse.ArgumentParser:
    """Registers ``f3stream eval``."""
    p = add_command(subs, "eval", "evaluate a checkpoint (quality, WER, probes) -> report",
                    DESCRIPTION, EXAMPLE, cmd_eval)
    add_model_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--manifest", metavar="FILE.jsonl", default=None,
                     help="corpus manifest (JSON lines: path, text, speaker, split, source); "
                          "default: data/corpus/manifest.jsonl")
    src.add_argument("--audio-dir", metavar="DIR", default=None,
                     help="evaluate every audio file under DIR instead (NAME.txt beside a file "
                          "is its transcript); no probes")
    src.add_argument("--alsa", action="store_true",
                     help="independent evaluation on alsa-utils' recorded prompts "
                          "(apt-get install alsa-utils); no probes")
    p.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="manifest split whose voices are evaluated (default: test)")
    p.add_argument("--out", metavar="DIR", default="eval-report",
                   help="output directory for report.json and the plots (default: ./eval-report)")
    p.add_argument("--max-clips", metavar="N", type=int, default=None,
                   help="reconstruct at most N clips (spread over sources and speakers)")
    p.add_argument("--probe-clips", metavar="N", type=int, default=600,
                   help="at most N clips per probe pool (probe-train from the train split, "
                        "probe-test from --split; default: 600)")
    p.add_argument("--no-probes", action="store_true", help="skip the linear probes")
    p.add_argument("--no-asr", action="store_true", help="skip pocketsphinx (WER)")
    p.add_argument("--asr-sources", metavar="SRC,...", default=None,
                   help="run pocketsphinx only on clips of these sources, e.g. "
                        "klettres-data (it is the slow part; default: all)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--seed", type=int, default=0, help="clip sub-sampling seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _probe_pools(manifest: Path, split: str, n: int, seed: int):
    """probe-train: train-split clips relevant to some task, bounded per task; probe-test: the
    evaluation split, bounded."""
    from .clips import read_manifest, subsample
    from .tasks import CONTENT_TASKS

    train_all = read_manifest(manifest, "train")
    train: list = []
    for task in CONTENT_TASKS:
        relevant = [c for c in train_all if task.label(c) is not None]
        train += subsample(relevant, n // len(CONTENT_TASKS), seed)
    test = subsample(read_manifest(manifest, split), n, seed)
    return list(dict.fromkeys(train)), test


def cmd_eval(args: argparse.Namespace) -> int:
    from .clips import alsa_clips, folder_clips, read_manifest, subsample
    from .report import EvalOptions, format_summary, run_evaluation

    if args.max_clips is not None and args.max_clips < 1:
        raise EvalError("--max-clips must be at least 1")
    if args.probe_clips < 2:
        raise EvalError("--probe-clips must be at least 2")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a directory")
    meta: dict = {"mode": "manifest", "split": args.split}
    probe_train, probe_test = [], []
    if args.alsa:
        clips = alsa_clips()
        meta = {"mode": "alsa", "audio_dir": str(Path(clips[0].path).parent)}
    elif args.audio_dir:
        clips = folder_clips(args.audio_dir)
        meta = {"mode": "folder", "audio_dir": args.audio_dir}
    else:
        manifest = Path(args.manifest or "data/corpus/manifest.jsonl")
        clips = read_manifest(manifest, args.split)
        if not clips:
            raise EvalError(f"{manifest} has no clips in split {args.split!r}")
        meta["manifest"] = str(manifest)
        if not args.no_probes:
            probe_train, probe_test = _probe_pools(manifest, args.split, args.probe_clips,
                                                   args.seed)
    meta["clips_available"] = len(clips)
    clips = subsample(clips, args.max_clips, args.seed)

    try:
        tok = load_tokenizer(args)
    except RuntimeError as e:  # e.g. a device torch cannot use
        raise EvalError(str(e)) from None
    import f3stream
    meta.update({"checkpoint": str(args.checkpoint or "bundled"),
                 "checkpoint_trained": tok.info.get("trained"),
                 "checkpoint_description": tok.info.get("description"),
                 "f3stream_version": f3stream.__version__,
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "clips_evaluated": len(clips)})
    report = run_evaluation(tok, EvalOptions(
        clips=clips, out=out, probe_train=probe_train, probe_test=probe_test,
        asr_sources=(frozenset(s.strip() for s in args.asr_sources.split(",") if s.strip())
                     if args.asr_sources else None),
        asr=not args.no_asr, plots=not args.no_plots, progress=not args.quiet, meta=meta))
    if tok.info.get("trained") is False:
        print("note: the checkpoint is UNTRAINED; these numbers are a floor, not a result")
    print(format_summary(report))
    return 0
