"""Small-scale reproduction of the F3 paper's ablations, in one command.

    python -m training.experiments.run_all --config training/experiments/small.json \\
        --out runs/experiments --results docs/results.md

1. Bottleneck ablation (paper Table 1 direction): a plain AE (no channel norm, no noise) and
   the F3 bottleneck (channel norm + noise, alpha ~ U(0, gamma)) trained with the same budget
   and data; reconstruction on held-out voices (PESQ-WB, STOI, mel L1) and latent statistics.
2. Generation-friendliness: a latent LM (flow-matching head on 2-frame patches) trained on each
   variant's latents; held-out flow loss (latents standardised by one global scale, so the
   losses are comparable) and the mel L1 of audio decoded from teacher-forced *sampled* frames.
3. Representation ablation (paper Table 2 direction): linear probes on raw latents, and on the
   representation encoder trained without RQ, without the LM, and with both: speaker identity,
   spoken content on unseen voices (the letter and first-word tasks of ``f3stream eval``) and a
   non-speech sound-class probe on synthesized sounds.
4. The bundled checkpoint's row, evaluated the same way.

Writes ``OUT/results.json`` and, with ``--results``, a markdown report with PNG plots beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f3stream.audio import load_audio
from f3stream.checkpoint import default_checkpoint_dir
from f3stream.config import TokenizerConfig
from f3stream.evaluation.clips import EvalClip
from f3stream.evaluation.metrics import log_mel_l1
from f3stream.evaluation.probes import fit_probe
from f3stream.evaluation.tasks import CONTENT_TASKS, content_split
from f3stream.evaluation.report import EvalOptions, run_evaluation
from f3stream.fileio import atomic_write_bytes
from f3stream.latent_lm import LatentLMConfig
from f3stream.tokenizer import Tokenizer

from ..config import TrainConfig
from ..data.manifest import read_manifest
from ..latent_lm_stage import clip_latents, train_latent_lm
from ..train import train_autoencoder

VARIANTS = {"plain AE": dict(normalize_latents=False, noise_gamma=0.0),
            "AE + norm + noise (F3)": dict(normalize_latents=True, noise_gamma=1.0)}
REP_VARIANTS = {"without RQ": dict(use_rq=False), "without LM": dict(use_lm=False),
                "RQ-MTP + LM (full)": dict()}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def eval_clips(manifest: str, split: str, n: int, seed: int = 0) -> list[EvalClip]:
    clips = read_manifest(manifest, split)
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(clips), size=min(n, len(clips)), replace=False))
    return [clips[i] for i in idx]


def latent_stats(latents: list[np.ndarray]) -> dict[str, float]:
    """Scale and smoothness of latents: what an autoregressive model has to cope with."""
    z = np.concatenate(latents)
    ch_std = z.std(axis=0)
    diffs = np.concatenate([np.diff(x, axis=0) for x in latents if x.shape[0] > 1])
    return {"rms": float(np.sqrt(np.mean(z ** 2))),
            "channel_std_min": float(ch_std.min()), "channel_std_max": float(ch_std.max()),
            "channel_std_ratio": float(ch_std.max() / max(ch_std.min(), 1e-12)),
            "abs_max": float(np.abs(z).max()),
            # 0 = constant over time, 2 = as rough as independent frames
            "temporal_roughness": float(np.mean(diffs ** 2) / max(np.var(z), 1e-12))}


def reconstruction_row(tok: Tokenizer, clips: list[EvalClip], out: Path) -> dict[str, Any]:
    rep = run_evaluation(tok, EvalOptions(clips=clips, out=out, asr=False, plots=False,
                                          progress=False))
    overall = {}
    for metric in ("pesq_wb", "stoi", "mel_l1", "si_sdr"):
        vals = [r[metric] for r in rep["clips"] if r[metric] is not None
                and np.isfinite(r[metric])]
        overall[metric] = float(np.mean(vals)) if vals else None
    return {"overall": overall, "per_source": {
        s: {m: r[m]["mean"] for m in ("pesq_wb", "stoi", "mel_l1", "si_sdr")}
        for s, r in rep["reconstruction"].items()}}


def generation_row(tok: Tokenizer, manifest: str, lm_cfg: LatentLMConfig, steps: int,
                   n_val: int, seed: int) -> dict[str, Any]:
    train = clip_latents(tok, read_manifest(manifest, "train"))
    val_clips = read_manifest(manifest, "val")[:n_val]
    val = clip_latents(tok, val_clips)
    lm, scale, res = train_latent_lm(train, val, replace(lm_cfg, latent_dim=tok.latent_dim),
                                     steps, seed=seed)
    # Teacher-forced sampling: each patch sampled given the true past, then decoded; compared
    # with the original audio (the codec's own reconstruction is the floor).
    tf, floor = [], []
    for clip, z in zip(val_clips, val):
        if z.shape[0] < 8:
            continue
        wav, _ = load_audio(clip.path, tok.sample_rate)
        pred = lm.predict_teacher_forced(torch.from_numpy(z / scale)[None], seed=seed)[0]
        p = lm.cfg.patch
        mixed = z.copy()
        mixed[p:p + pred.shape[0]] = pred.numpy() * scale
        ref = wav[: mixed.shape[0] * tok.hop_length]
        tf.append(log_mel_l1(ref, tok.decode(mixed)[:ref.size], tok.sample_rate))
        floor.append(log_mel_l1(ref, tok.decode(z)[:ref.size], tok.sample_rate))
    return {"val_flow_loss": res["val_flow_loss"], "latent_scale": scale,
            "teacher_forced_mel_l1": float(np.mean(tf)), "reconstruction_mel_l1": float(np.mean(floor)),
            "latent_stats": latent_stats(train)}


def synth_sounds(n_per_class: int, seed: int, sr: int = 24000) -> tuple[list[np.ndarray], list[str]]:
    """A non-speech sound-class task: 6 classes of synthetic sounds with random parameters."""
    rng = np.random.default_rng(seed)
    waves, labels = [], []
    for _ in range(n_per_class):
        n = int(rng.uniform(0.6, 1.2) * sr)
        t = np.arange(n) / sr
        f = rng.uniform(150, 2000)
        white = rng.standard_normal(n)
        brown = np.cumsum(white)
        brown -= np.linspace(brown[0], brown[-1], n)
        clicks = np.zeros(n)
        clicks[:: int(sr / rng.uniform(3, 20))] = 1.0
        sounds = {"tone": np.sin(2 * np.pi * f * t),
                  "square": np.sign(np.sin(2 * np.pi * f * t)),
                  "chirp": np.sin(2 * np.pi * (f * t + rng.uniform(500, 3000) * t ** 2)),
                  "white noise": white, "brown noise": brown, "click train": clicks}
        for name, x in sounds.items():
            x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.7)
            waves.append(x.astype(np.float32))
            labels.append(name)
    return waves, labels


def probe_rows(tok: Tokenizer, rep_models: dict[str, Any], manifest: str, n_probe: int,
               seed: int) -> dict[str, Any]:
    """Accuracy of linear probes per feature set on each task (see the module docstring)."""
    from f3stream.evaluation.metrics import log_mel

    test = read_manifest(manifest, "test")
    rng = np.random.default_rng(seed)
    test = [test[i] for i in sorted(rng.choice(len(test), min(n_probe, len(test)),
                                               replace=False))]
    # speaker identity: same voices, alternate clips
    by_spk: dict[str, list] = {}
    for c in test:
        by_spk.setdefault(c.speaker, []).append(c)
    spk_train, spk_test = [], []
    for clips in by_spk.values():
        spk_train += clips[::2]
        spk_test += clips[1::2]
    sounds, sound_labels = synth_sounds(12, seed)
    half = len(sounds) // 2

    feats: dict[str, dict[str, np.ndarray]] = {}

    def features(wav: np.ndarray) -> dict[str, np.ndarray]:
        frames = tok.tokenize(wav, representations=False)
        out = {"log-mel": log_mel(wav, tok.sample_rate).mean(0),
               "raw latents": frames.latents.mean(0)}
        for name, rep in rep_models.items():
            out[name] = tok_rep(rep, frames.latents).mean(0)
        return out

    def clip_feats(c) -> dict[str, np.ndarray]:
        if c.path not in feats:
            feats[c.path] = features(load_audio(c.path, tok.sample_rate)[0])
        return feats[c.path]

    tasks: dict[str, tuple] = {
        "speaker identity": ([clip_feats(c) for c in spk_train], [c.speaker for c in spk_train],
                             [clip_feats(c) for c in spk_test], [c.speaker for c in spk_test]),
        "sound class (non-speech)": ([features(w) for w in sounds[:half]], sound_labels[:half],
                                     [features(w) for w in sounds[half:]], sound_labels[half:]),
    }
    # Spoken content on unseen voices: the same tasks (and label rules) as `f3stream eval`.
    train_all = read_manifest(manifest, "train")
    test_all = read_manifest(manifest, "test")
    for task in CONTENT_TASKS:
        pool = [c for c in train_all if task.label(c) is not None]
        if len(pool) > 2 * n_probe:
            pool = [pool[i] for i in sorted(rng.choice(len(pool), 2 * n_probe, replace=False))]
        tr, te = content_split(task, pool, [c for c in test_all if task.label(c) is not None])
        if tr and te:
            tasks[f"{task.name} (unseen voices)"] = (
                [clip_feats(c) for c, _ in tr], [lab for _, lab in tr],
                [clip_feats(c) for c, _ in te], [lab for _, lab in te])
    out = {}
    for task, (xtr, ytr, xte, yte) in tasks.items():
        if len(set(ytr)) < 2 or not yte:
            continue  # too few labelled clips in this corpus for this task
        out[task] = {"n_train": len(ytr), "n_test": len(yte), "classes": len(set(ytr)),
                     "accuracy": {}}
        for fs in xtr[0]:
            probe = fit_probe(np.stack([f[fs] for f in xtr]), ytr)
            out[task]["accuracy"][fs] = probe.accuracy(np.stack([f[fs] for f in xte]), yte)
    return out


def tok_rep(rep_encoder, latents: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return rep_encoder(torch.from_numpy(latents)[None])[0].numpy()


def run(cfg: dict[str, Any], out: Path, manifest: str) -> dict[str, Any]:
    base = TrainConfig.load(cfg["train_config"])
    base.manifest = manifest
    seed = cfg.get("seed", 0)
    clips = eval_clips(manifest, "test", cfg["eval_clips"], seed)
    results: dict[str, Any] = {"config": cfg, "bottleneck": {}, "generation": {},
                               "representation": {}}
    lm_cfg = LatentLMConfig(**cfg["latent_lm"])
    tokenizers = {}
    for name, ae_kw in VARIANTS.items():
        slug = "plain" if "plain" in name else "f3"
        run_dir = out / f"ae_{slug}"
        tcfg = replace(base, model=TokenizerConfig(
            autoencoder=replace(base.model.autoencoder, **ae_kw),
            representation=base.model.representation))
        log(f"stage 0 ({name}): {tcfg.autoencoder.steps} steps")
        t0 = time.time()
        train_autoencoder(tcfg, run_dir, resume=True)
        tok = Tokenizer.load(run_dir / "export")
        tokenizers[slug] = (tok, tcfg, run_dir)
        log(f"evaluating reconstruction of {name}")
        results["bottleneck"][name] = {"train_seconds": time.time() - t0,
                                       **reconstruction_row(tok, clips, run_dir / "eval")}
        log(f"latent LM on {name}")
        results["generation"][name] = generation_row(tok, manifest, lm_cfg,
                                                     cfg["latent_lm_steps"],
                                                     cfg["generation_val_clips"], seed)
    # Representation ablation on the F3 autoencoder.
    from ..representation_stage import train_representation
    tok, tcfg, run_dir = tokenizers["f3"]
    reps = {}
    for name, kw in REP_VARIANTS.items():
        slug = name.split()[0].lower() + "_" + name.split()[-1].strip("()").lower()
        rdir = out / f"rep_{slug}"
        if not (rdir / "representation" / "checkpoints" / "latest").exists():
            shutil.rmtree(rdir, ignore_errors=True)
            shutil.copytree(run_dir, rdir, ignore=shutil.ignore_patterns("checkpoints"))
        log(f"stage 1 ({name})")
        rcfg = replace(tcfg, representation=replace(tcfg.representation, **kw))
        train_representation(rcfg, rdir, resume=True)
        reps[name] = Tokenizer.load(rdir / "export").model.representation.eval()
    log("probes")
    results["representation"]["F3 autoencoder (this experiment)"] = probe_rows(
        tok, reps, manifest, cfg["probe_clips"], seed)
    results["bundled"] = bundled_row(cfg, out, manifest)
    return results


def bundled_row(cfg: dict[str, Any], out: Path, manifest: str) -> dict[str, Any]:
    """The bundled checkpoint, measured exactly like the experiment's variants."""
    seed = cfg.get("seed", 0)
    bundled = Tokenizer.load(default_checkpoint_dir())
    log("bundled checkpoint")
    return {"info": bundled.info,
            "reconstruction": reconstruction_row(bundled, eval_clips(manifest, "test",
                                                                     cfg["eval_clips"], seed),
                                                 out / "bundled_eval"),
            "probes": probe_rows(bundled, {"bundled representations":
                                           bundled.model.representation.eval()},
                                 manifest, cfg["probe_clips"], seed)}


def fmt(x, d=3):
    return "–" if x is None else f"{x:.{d}f}"


def write_markdown(results: dict[str, Any], path: Path, command: str) -> None:
    from f3stream.evaluation.plots import _pyplot

    plt = _pyplot()
    img_dir = path.parent / "results"
    img_dir.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    L = ["# Results: small-scale reproduction of the F3 ablations", "",
         f"Produced by `{command}` (seed {cfg.get('seed', 0)}; budgets in "
         f"`{cfg['_path']}`), on a 2-core CPU. Held-out voices only (test split of the corpus "
         "manifest: espeak-ng voices and real klettres recordings never trained on). "
         "These are tiny budgets: read directions, not absolute quality.", "",
         "## 1. Bottleneck ablation (paper Table 1 direction)", "",
         "| variant | PESQ-WB | STOI | mel L1 | SI-SDR (dB) | latent RMS | channel-std max/min |"
         " temporal roughness |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["bottleneck"].items():
        s = results["generation"][name]["latent_stats"]
        o = r["overall"]
        L.append(f"| {name} | {fmt(o['pesq_wb'], 2)} | {fmt(o['stoi'])} | {fmt(o['mel_l1'])} | "
                 f"{fmt(o['si_sdr'], 1)} | {fmt(s['rms'], 2)} | {fmt(s['channel_std_ratio'], 1)} "
                 f"| {fmt(s['temporal_roughness'])} |")
    b = results["bundled"]["reconstruction"]["overall"]
    L.append(f"| bundled checkpoint (F3, longer training) | {fmt(b['pesq_wb'], 2)} | "
             f"{fmt(b['stoi'])} | {fmt(b['mel_l1'])} | {fmt(b['si_sdr'], 1)} | | | |")
    L += ["", "Temporal roughness = mean squared frame-to-frame change / latent variance (0: "
          "constant, 2: independent frames).", "",
          "## 2. Generation-friendliness (latent LM, flow-matching head, 2-frame patches)", "",
          "| latents of | held-out flow loss (standardised) | mel L1, teacher-forced sampled "
          "frames | mel L1, codec reconstruction (floor) |", "|---|---|---|---|"]
    for name, g in results["generation"].items():
        L.append(f"| {name} | {fmt(g['val_flow_loss'])} | {fmt(g['teacher_forced_mel_l1'])} | "
                 f"{fmt(g['reconstruction_mel_l1'])} |")
    L += ["", "Lower is better everywhere. The paper's claim is that normalised + noised "
          "latents are easier to generate: a lower flow loss and a smaller gap between "
          "teacher-forced samples and the reconstruction floor.", "",
          "## 3. Representation ablation (paper Table 2 direction): linear-probe accuracy", ""]
    for section, tasks in [("this experiment's F3 autoencoder",
                            results["representation"]["F3 autoencoder (this experiment)"]),
                           ("the bundled checkpoint", results["bundled"]["probes"])]:
        if not tasks:
            continue
        feats = list(next(iter(tasks.values()))["accuracy"])
        L += [f"Features from {section}:", "",
              "| task (classes, train/test) | " + " | ".join(feats) + " |",
              "|---|" + "---|" * len(feats)]
        for task, t in tasks.items():
            L.append(f"| {task} ({t['classes']}, {t['n_train']}/{t['n_test']}) | " +
                     " | ".join(fmt(t["accuracy"][f], 2) for f in feats) + " |")
        L.append("")
    # plots
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = list(results["generation"])
    axes[0].bar(names, [results["generation"][n]["val_flow_loss"] for n in names],
                color=["#999", "#2a7"])
    axes[0].set_title("held-out latent-LM flow loss (lower = easier)")
    axes[1].bar(names, [results["bottleneck"][n]["overall"]["mel_l1"] or 0 for n in names],
                color=["#999", "#2a7"])
    axes[1].set_title("reconstruction mel L1 (lower = better)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(img_dir / "ablation.png", dpi=110)
    plt.close(fig)
    tasks = results["representation"]["F3 autoencoder (this experiment)"] or {
        "(no probe task had enough clips)": {"accuracy": {"-": 0.0}}}
    fig, ax = plt.subplots(figsize=(10, 3.8))
    feats = list(next(iter(tasks.values()))["accuracy"])
    width = 0.8 / len(feats)
    for i, f in enumerate(feats):
        ax.bar(np.arange(len(tasks)) + i * width, [t["accuracy"][f] for t in tasks.values()],
               width, label=f)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, list(tasks), fontsize=8)
    ax.set_ylabel("probe accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img_dir / "probes.png", dpi=110)
    plt.close(fig)
    L += ["![bottleneck and generation ablation](results/ablation.png)", "",
          "![representation probes](results/probes.png)", ""]
    atomic_write_bytes(path, "\n".join(L).encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.experiments.run_all",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="training/experiments/small.json")
    p.add_argument("--out", default="runs/experiments")
    p.add_argument("--manifest", default="data/corpus/manifest.jsonl")
    p.add_argument("--results", default=None, help="markdown report to write (e.g. "
                                                   "docs/results.md)")
    p.add_argument("--bundled-only", action="store_true",
                   help="re-measure only the bundled checkpoint's row of an earlier run's "
                        "OUT/results.json (e.g. after the bundled checkpoint changed)")
    args = p.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    cfg["_path"] = args.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.bundled_only:
        results = json.loads((out / "results.json").read_text())
        results["bundled"] = bundled_row(results["config"], out, args.manifest)
    else:
        results = run(cfg, out, args.manifest)
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=str).encode())
    if args.results:
        write_markdown(results, Path(args.results),
                       "python -m training.experiments.run_all " + " ".join(argv or sys.argv[1:]))
        log(f"wrote {args.results}")
    log(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
