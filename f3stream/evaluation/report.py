"""The evaluation run: reconstruct clips, score them, probe the features, write JSON and PNGs."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import load_audio
from ..errors import AudioInputError
from ..fileio import atomic_write_bytes
from .clips import ALSA_SOURCE, EvalClip
from .errors import EvalError
from .metrics import (band_level_change_db, corpus_wer, level_change_db, log_mel, log_mel_l1,
                      pesq_wb, si_sdr, stoi, wer)
from .probes import alternate_split, chance_accuracy, fit_probe
from .tasks import CONTENT_TASKS, SPEAKER_TASK_DESCRIPTION, content_split

FEATURE_SETS = ("representations", "latents", "log_mel")
METRICS = ("pesq_wb", "stoi", "mel_l1", "si_sdr", "level_db", "highs_db")
HIGHS_HZ = (6000.0, 12000.0)  # "highs": scored only on clips recorded at >= 32 kHz
REPORT_FILE = "report.json"
ASR_NOTE = ("pocketsphinx is an English recognizer: WER against the reference text means "
            "something only for real recorded English speech (alsa-utils prompts, klettres "
            "English letters); on espeak-ng voices and non-English recordings it is near useless. "
            "'wer_reconstruction_vs_original' (the reconstruction's transcript scored against the "
            "original's) measures whether the codec changes what the recognizer hears, for any "
            "language.")


@dataclass
class EvalOptions:
    """What to evaluate. ``clips`` are scored for reconstruction; ``probe_train``/``probe_test``
    pools feed the probes (empty pools: probes are skipped)."""
    clips: list[EvalClip]
    out: Path
    probe_train: list[EvalClip] = field(default_factory=list)
    probe_test: list[EvalClip] = field(default_factory=list)
    asr: bool = True
    asr_sources: frozenset[str] | None = None  # None: every source
    plots: bool = True
    progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


def _finite(x):
    """JSON has no NaN/Inf: those become null (e.g. SI-SDR of a silent reference)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return _finite(x.item())
    return x


def _summary(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(got)) if got else None,
            "median": float(np.median(got)) if got else None,
            "std": float(np.std(got)) if got else None,
            "p05": float(np.percentile(got, 5)) if got else None,
            "p95": float(np.percentile(got, 95)) if got else None,
            "n": len(got), "skipped": len(values) - len(got)}


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="clip", file=sys.stderr)


class _Features:
    """Mean-pooled features per clip path, computed once (a clip may serve several probes)."""

    def __init__(self, tok):
        self.tok = tok
        self.cache: dict[str, dict[str, np.ndarray]] = {}
        self.failed: dict[str, str] = {}  # path -> why it could not be read (skipped)

    def add(self, clip: EvalClip, wav: np.ndarray, latents: np.ndarray, reps: np.ndarray) -> None:
        self.cache[clip.path] = {"representations": reps.mean(axis=0),
                                 "latents": latents.mean(axis=0),
                                 "log_mel": log_mel(wav, self.tok.sample_rate).mean(axis=0)}

    def ensure(self, clips: list[EvalClip], progress: bool) -> None:
        todo = [c for c in dict.fromkeys(clips) if c.path not in self.cache]
        for clip in _progress(todo, "probe features", progress and bool(todo)):
            try:
                wav, _ = load_audio(clip.path, self.tok.sample_rate)
            except AudioInputError as e:
                self.failed[clip.path] = str(e)
                continue
            frames = self.tok.tokenize(wav, representations=True)
            self.add(clip, wav, frames.latents, frames.representations)

    def matrix(self, clips: list[EvalClip], feature_set: str) -> np.ndarray:
        return np.stack([self.cache[c.path][feature_set] for c in clips])


def _reconstruct(tok, opts: EvalOptions, feats: _Features, timing: dict
                 ) -> tuple[list[dict], dict | None]:
    recognizer = None
    if opts.asr:
        from .asr import Recognizer
        recognizer = Recognizer()
    rows, example = [], None
    sr = tok.sample_rate
    for clip in _progress(opts.clips, "reconstruct", opts.progress):
        t0 = time.perf_counter()
        try:  # one unreadable or empty file is reported, not fatal
            wav, file_sr = load_audio(clip.path, sr)
        except AudioInputError as e:
            feats.failed[clip.path] = str(e)
            continue
        frames = tok.tokenize(wav, representations=True)
        rec = tok.decode(frames.latents)[:wav.size]
        t1 = time.perf_counter()
        feats.add(clip, wav, frames.latents, frames.representations)
        row: dict[str, Any] = {
            "path": clip.path, "source": clip.source, "speaker": clip.speaker,
            "text": clip.text, "seconds": wav.size / sr, "file_sample_rate": file_sr,
            "frames": int(frames.latents.shape[0]),
            "pesq_wb": pesq_wb(wav, rec, sr), "stoi": stoi(wav, rec, sr),
            "mel_l1": log_mel_l1(wav, rec, sr), "si_sdr": si_sdr(wav, rec),
            "level_db": level_change_db(wav, rec),
            "highs_db": (band_level_change_db(wav, rec, sr, *HIGHS_HZ)
                         if file_sr >= 32000 else None),
        }
        t2 = time.perf_counter()
        if recognizer is not None and (opts.asr_sources is None
                                       or clip.source in opts.asr_sources):
            row["asr_original"] = recognizer.transcribe(wav, sr)
            row["asr_reconstruction"] = recognizer.transcribe(rec, sr)
            for key, ref, hyp in (("wer_original", clip.text, row["asr_original"]),
                                  ("wer_reconstruction", clip.text, row["asr_reconstruction"]),
                                  ("wer_reconstruction_vs_original", row["asr_original"],
                                   row["asr_reconstruction"])):
                try:
                    row[key] = wer(ref, hyp)
                except ValueError:  # empty reference
                    row[key] = None
        t3 = time.perf_counter()
        for k, dt in (("codec_s", t1 - t0), ("metrics_s", t2 - t1), ("asr_s", t3 - t2)):
            timing[k] = timing.get(k, 0.0) + dt
        rows.append(row)
        # The plotted example: the first real recording (not synthetic), else the first clip.
        if example is None or (example["source"] == "espeak-ng" and clip.source != "espeak-ng"):
            example = {"source": clip.source, "path": clip.path, "wav": wav, "rec": rec,
                       "latents": frames.latents, "reps": frames.representations}
    return rows, example


def _aggregate(rows: list[dict], asr: bool) -> dict[str, Any]:
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    groups = dict(sorted(by_source.items()))
    if len(groups) > 1:
        groups["all"] = rows
    recon = {src: {"clips": len(rs), "seconds": float(sum(r["seconds"] for r in rs)),
                   **{m: _summary([r[m] for r in rs]) for m in METRICS}}
             for src, rs in groups.items()}
    out: dict[str, Any] = {"reconstruction": recon}
    if asr:
        intel = {}
        for src, rs in groups.items():
            entry = {}
            if not any("asr_original" in r for r in rs):
                continue
            rs = [r for r in rs if "asr_original" in r]
            for key, ref_key, hyp_key in (
                    ("wer_original", "text", "asr_original"),
                    ("wer_reconstruction", "text", "asr_reconstruction"),
                    ("wer_reconstruction_vs_original", "asr_original", "asr_reconstruction")):
                value, used, skipped = corpus_wer([(r[ref_key], r[hyp_key]) for r in rs])
                entry[key] = {"wer": value, "n": used, "skipped_empty_reference": skipped}
            intel[src] = entry
        out["intelligibility"] = {"note": ASR_NOTE, "per_source": intel}
    return out


def _probe(tok, opts: EvalOptions, feats: _Features, timing: dict) -> dict[str, Any]:
    """Content probes (unseen voices) and the speaker probe (same voices, other clips)."""
    splits: dict[str, tuple[list, list, list, list, str]] = {}
    for task in CONTENT_TASKS:
        train, test = content_split(task, opts.probe_train, opts.probe_test)
        splits[task.name] = ([c for c, _ in train], [lab for _, lab in train],
                             [c for c, _ in test], [lab for _, lab in test], task.description)
    pool = list(dict.fromkeys(opts.probe_test))
    idx_train, idx_test = alternate_split([c.path for c in pool], [c.speaker for c in pool])
    splits["speaker_identity"] = ([pool[i] for i in idx_train],
                                  [pool[i].speaker for i in idx_train],
                                  [pool[i] for i in idx_test],
                                  [pool[i].speaker for i in idx_test], SPEAKER_TASK_DESCRIPTION)
    t0 = time.perf_counter()
    needed = [c for s in splits.values() for c in s[0] + s[2]]
    feats.ensure(needed, opts.progress)
    t1 = time.perf_counter()
    tasks, skipped = {}, {}
    for name, (tr_c, tr_y, te_c, te_y, desc) in splits.items():
        tr_y = [y for c, y in zip(tr_c, tr_y) if c.path in feats.cache]
        tr_c = [c for c in tr_c if c.path in feats.cache]
        te_y = [y for c, y in zip(te_c, te_y) if c.path in feats.cache]
        te_c = [c for c in te_c if c.path in feats.cache]
        n_classes = len(set(tr_y))
        if n_classes < 2 or not te_c:
            skipped[name] = (f"not enough labelled clips ({len(tr_c)} probe-train in "
                             f"{n_classes} classes, {len(te_c)} probe-test)")
            continue
        acc = {}
        for fs in FEATURE_SETS:
            probe = fit_probe(feats.matrix(tr_c, fs), tr_y)
            acc[fs] = probe.accuracy(feats.matrix(te_c, fs), te_y)
        tasks[name] = {"description": desc, "n_classes": n_classes, "n_train": len(tr_c),
                       "n_test": len(te_c), "chance": chance_accuracy(tr_y, te_y),
                       "uniform_chance": 1.0 / n_classes, "accuracy": acc,
                       "train_speakers": len({c.speaker for c in tr_c}),
                       "test_speakers": len({c.speaker for c in te_c})}
    timing["probe_features_s"] = t1 - t0
    timing["probe_fit_s"] = time.perf_counter() - t1
    return {"method": "multinomial logistic regression on standardised, mean-pooled features; "
                      "L2 1e-2, L-BFGS 200 iterations, no tuning",
            "feature_sets": {"representations": f"{tok.representation_dim}-dim representation "
                                                "encoder output",
                             "latents": f"{tok.latent_dim}-dim autoencoder latents",
                             "log_mel": "100-band log-mel spectrogram of the input (baseline)"},
            "tasks": tasks, "skipped": skipped}


def _plots(tok, out: Path, example: dict | None, probes: dict | None) -> list[str]:
    from . import plots

    written = []
    if example is not None:
        name = Path(example["path"]).name
        written.append(plots.plot_reconstruction(
            out / "reconstruction.png", example["wav"], example["rec"], tok.sample_rate,
            f"{example['source']}: {name}"))
        written.append(plots.plot_heatmap(out / "latents.png", example["latents"],
                                          tok.frame_rate, f"latents ({name})"))
        if example["reps"] is not None:
            written.append(plots.plot_heatmap(out / "representations.png", example["reps"],
                                              tok.frame_rate, f"representations ({name})"))
    if probes and probes["tasks"]:
        written.append(plots.plot_probe_accuracies(out / "probes.png", probes["tasks"]))
    return [str(p) for p in written]


def run_evaluation(tok, opts: EvalOptions) -> dict[str, Any]:
    """Runs the whole evaluation with a loaded :class:`~f3stream.Tokenizer`; writes
    ``report.json`` (and PNGs) into ``opts.out`` and returns the report."""
    if not opts.clips:
        raise EvalError("no clips to evaluate (check --split / --max-clips / the manifest)")
    missing = [c.path for c in opts.clips if not Path(c.path).is_file()]
    if missing:
        raise EvalError(f"{len(missing)} audio file(s) listed but missing, e.g. {missing[0]}")
    # Fail on missing optional packages before any model work.
    from .errors import require
    require("pesq", "PESQ")
    require("pystoi", "STOI")
    if opts.asr:
        require("pocketsphinx", "Speech recognition (WER)")
    if opts.plots:
        require("matplotlib", "Plots")

    timing: dict[str, float] = {}
    start = time.perf_counter()
    feats = _Features(tok)
    rows, example = _reconstruct(tok, opts, feats, timing)
    timing["reconstruction_loop_s"] = time.perf_counter() - start
    if not rows:
        raise EvalError(f"none of the {len(opts.clips)} clips could be read, e.g. "
                        f"{next(iter(feats.failed.items()))}")
    report: dict[str, Any] = dict(opts.meta)
    report.update(_aggregate(rows, opts.asr))
    probes = None
    if opts.probe_train or opts.probe_test:
        probes = _probe(tok, opts, feats, timing)
        report["probes"] = probes
    if opts.plots:
        t0 = time.perf_counter()
        report["plots"] = _plots(tok, opts.out, example, probes)
        timing["plots_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - start
    report["unreadable_clips"] = feats.failed
    timing["per_clip_s"] = timing["reconstruction_loop_s"] / len(rows)
    report["timing"] = timing
    available = report.get("clips_available")
    if available:  # what the same run would take without --max-clips
        report["estimated_full_run_s"] = (timing["total_s"] - timing["reconstruction_loop_s"]
                                          + timing["per_clip_s"] * available)
    report["clips"] = rows
    path = opts.out / REPORT_FILE
    atomic_write_bytes(path, json.dumps(_finite(report), indent=1, ensure_ascii=False,
                                        allow_nan=False).encode("utf-8"))
    report["report_path"] = str(path)
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A few readable lines for the terminal (the JSON has everything)."""
    def f(x, d=2):
        return "-" if x is None else f"{x:.{d}f}"

    lines = ["reconstruction (mean; skipped = too short to score):",
             f"  {'source':<16}{'clips':>6}{'PESQ-WB':>9}{'STOI':>7}{'mel L1':>8}{'SI-SDR':>8}"
             f"{'skip':>6}   level dB: median [5%, 95%]   6-12 kHz dB"]
    for src, r in report["reconstruction"].items():
        lines.append(f"  {src:<16}{r['clips']:>6}{f(r['pesq_wb']['mean']):>9}"
                     f"{f(r['stoi']['mean']):>7}{f(r['mel_l1']['mean']):>8}"
                     f"{f(r['si_sdr']['mean'], 1):>8}{r['pesq_wb']['skipped']:>6}"
                     f"   {f(r['level_db']['median'], 1)} [{f(r['level_db']['p05'], 1)}, "
                     f"{f(r['level_db']['p95'], 1)}]   {f(r['highs_db']['median'], 1)}")
    if "intelligibility" in report:
        lines.append("pocketsphinx WER (original -> reconstruction; recon vs original "
                     "transcript):")
        for src, r in report["intelligibility"]["per_source"].items():
            lines.append(f"  {src:<16}{f(r['wer_original']['wer']):>6} -> "
                         f"{f(r['wer_reconstruction']['wer']):<6}"
                         f"{f(r['wer_reconstruction_vs_original']['wer']):>8}"
                         f"   (n={r['wer_original']['n']})")
        if any(s != ALSA_SOURCE for s in report["intelligibility"]["per_source"]):
            lines.append("  (WER vs the text is meaningful only on real English speech)")
    if report.get("probes"):
        lines.append("linear probes, test accuracy (representations / latents / log-mel; "
                     "chance):")
        for name, t in report["probes"]["tasks"].items():
            a = t["accuracy"]
            lines.append(f"  {name:<20}{f(a['representations']):>6}{f(a['latents']):>6}"
                         f"{f(a['log_mel']):>6}  chance {f(t['chance'])}  ({t['n_classes']} "
                         f"classes, {t['n_train']}/{t['n_test']} clips)")
        for name, why in report["probes"]["skipped"].items():
            lines.append(f"  {name}: skipped, {why}")
    tm = report["timing"]
    lines.append(f"time: {tm['total_s']:.1f} s total, {tm['per_clip_s']:.2f} s per "
                 "reconstructed clip")
    if report.get("clips_available", 0) > len(report["clips"]):
        lines.append(f"  (estimated for all {report['clips_available']} clips of the split: "
                     f"{report['estimated_full_run_s'] / 60:.1f} min)")
    lines.append(f"wrote {report.get('report_path')}"
                 + (f" and {len(report.get('plots', []))} plots" if report.get("plots") else ""))
    return "\n".join(lines)
