"""A stage-0 training burst on a lent GPU, prepared here and brought back.

Why a kit: a lent GPU (the `device` tool) gives minutes, not hours, and takes at most 64 MiB
of working tree and carried files, of which the tracked tree is already most; the packed
corpus is 1.5 GB. So the burst starts from the bundled checkpoint (in the tree already) and
carries a subset of the training voices compressed with Opus (~31 kbps at the default
``--compression``: PESQ-WB 4.0 and STOI 0.99 against the original on a 20 s sample, far
above what the model reaches, so the codec's artefacts are not what it learns; the bundle
measures and records them, docs/gpu-burst/bundle.json), plus the
soundfile wheels that decode it there. Three steps:

    # 1. here: ~18 MiB of Opus audio from every training voice + the burst's config
    python -m training.gpu_burst bundle --config training/configs/CONFIG.json --out runs/burst
    # 2. on the GPU (device `run`, carry runs/burst): time a few steps, plan the cosine to
    #    end on time, train, and write the EMA weights (float16 shards) + log to $OUT
    python3 -m training.gpu_burst run --bundle runs/burst --minutes 8 --out $OUT
    # 3. here: the shards back into an export directory (f3stream checkpoint format)
    python -m training.gpu_burst unbundle --shards DIR --out runs/burst-result

The burst is its own short schedule: seeded at step 0 from the checkpoint (model and EMA
both set to its weights, a fresh AdamW), warm-up, then a cosine that ends when the minutes
do; the noise is at the model's gamma from the first step. Its result is a candidate like
any other: evaluate it on the held-out voices before installing it (stage 1 and the latent
LM are retrained on the new latents by the usual install).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MEGABYTES = 18.0
DEFAULT_COMPRESSION = 0.9     # libsndfile's Opus compression level: ~31 kbps for speech
AUDIO_FILE = "audio.opus"
WHEELS = ("soundfile==0.13.1", "cffi==2.0.0", "pycparser==2.23")
SHARD_BYTES = 12 * 2 ** 20    # the device returns files of at most 16 MiB each
AUTOENCODER_PREFIXES = ("encoder.", "bottleneck.", "decoder.")
PROBE_STEPS = 60
START_DIR = "start"           # the bundle's copy of the starting checkpoint (float16)
DEVICE_TREE_LIMIT = 64 * 2 ** 20


def choose_clips(speakers: np.ndarray, lengths: np.ndarray, candidates: np.ndarray,
                 budget_samples: int, seed: int = 0) -> np.ndarray:
    """Clips of ``candidates`` taken round-robin over the speakers (each speaker's clips in a
    seeded random order) until ``budget_samples`` are reached: every voice is in the subset,
    none dominates it."""
    rng = np.random.default_rng(seed)
    queues = {}
    for i in rng.permutation(candidates):
        queues.setdefault(str(speakers[i]), []).append(int(i))
    chosen, total = [], 0
    while queues and total < budget_samples:
        for spk in list(queues):
            i = queues[spk].pop()
            if not queues[spk]:
                del queues[spk]
            if total + int(lengths[i]) > budget_samples:
                continue
            chosen.append(i)
            total += int(lengths[i])
    return np.array(sorted(chosen), dtype=np.int64)


def clip_audio(corpus, clips: np.ndarray) -> np.ndarray:
    """The int16 samples of ``clips`` of a packed corpus, back to back."""
    return np.concatenate([corpus.audio[corpus.offsets[i]:corpus.offsets[i] + corpus.lengths[i]]
                           for i in clips])


def tracked_tree_bytes(repo: Path, leave_out: tuple[str, ...] = ()) -> int:
    """Bytes of the files git tracks (what every device call sends besides the carried ones),
    less those under the folders of ``leave_out`` (taken out of the index for the call)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True)
    prefixes = tuple(p.rstrip("/") + "/" for p in leave_out)
    return sum((repo / f).stat().st_size for f in out.stdout.decode().split("\0")
               if f and not f.startswith(prefixes) and (repo / f).is_file())


def leave_out_commands(leave_out: tuple[str, ...]) -> tuple[str, str]:
    """The shell commands that take the folders ``leave_out`` out of what a device call sends
    (out of the index and ignored; the files stay on disk) and that put them back after it."""
    names = [p.strip("/") for p in leave_out]
    paths = " ".join(names)
    excludes = "".join(f"/{n}/\\n" for n in names)
    unexclude = "; ".join(f"sed -i '\\#^/{n}/$#d' .git/info/exclude" for n in names)
    return (f"git rm -r -q --cached {paths} && printf '{excludes}' >> .git/info/exclude",
            f"git reset -q -- {paths}; {unexclude}")


def bundle(config: Path, packed: Path, out: Path, megabytes: float, compression: float,
           val_seconds: float, batch_size: int, lr: float, warmup_steps: int,
           wheels: bool = True, seed: int = 0, start: Path | None = None,
           min_lr_ratio: float | None = None, loader_workers: int = 0,
           leave_out: tuple[str, ...] = ()) -> dict:
    """The subset of ``packed``'s voices as Opus, the burst's config and (``start``) a float16
    copy of the checkpoint to start from, in ``out``; returns what it wrote and measured."""
    import soundfile as sf

    from f3stream.evaluation.metrics import pesq_wb, stoi
    from training.data.pack import PackedCorpus

    corpus = PackedCorpus.open(packed)
    sr = corpus.sample_rate
    # measure the codec's bit rate and quality on a sample before sizing the subset
    sample = choose_clips(corpus.speakers, corpus.lengths, corpus.select("train"), 20 * sr, seed)
    x = clip_audio(corpus, sample).astype(np.float32) / 32768.0
    probe = out / "probe.opus"
    out.mkdir(parents=True, exist_ok=True)
    sf.write(probe, x, sr, format="OGG", subtype="OPUS", compression_level=compression)
    kbps = probe.stat().st_size * 8 / (x.size / sr) / 1000
    y, _ = sf.read(probe, dtype="float32")
    probe.unlink()
    s, q = stoi(x, y, sr), pesq_wb(x, y, sr)
    codec = {"kbps": round(kbps, 1), "stoi": None if s is None else round(float(s), 3),
             "pesq_wb": None if q is None else round(float(q), 2),
             "sample_seconds": round(x.size / sr, 1)}
    budget = int(megabytes * 2 ** 20 * 8 / (kbps * 1000) * sr)
    val_budget = int(val_seconds * sr)
    train = choose_clips(corpus.speakers, corpus.lengths, corpus.select("train"),
                         budget - val_budget, seed)
    val = choose_clips(corpus.speakers, corpus.lengths, corpus.select("val"), val_budget, seed)
    clips = np.concatenate([train, val])
    audio = clip_audio(corpus, clips)
    lengths = corpus.lengths[clips]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tmp = out / (AUDIO_FILE + ".tmp")
    sf.write(tmp, audio.astype(np.float32) / 32768.0, sr, format="OGG", subtype="OPUS",
             compression_level=compression)
    tmp.replace(out / AUDIO_FILE)
    np.savez(out / "index.npz", offsets=offsets, lengths=lengths, band_hz=corpus.band_hz[clips],
             splits=corpus.splits[clips], speakers=corpus.speakers[clips],
             sources=corpus.sources[clips], texts=corpus.texts[clips], sample_rate=sr)
    cfg = json.loads(config.read_text())
    cfg["packed"] = str(out / "packed")
    ae = cfg.setdefault("autoencoder", {})
    ae.update({"batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
               "noise_ramp_steps": 0, "log_every": 25, "eval_every": 250,
               "checkpoint_every": 1000, "loader_workers": loader_workers})
    if min_lr_ratio is not None:
        ae["min_lr_ratio"] = min_lr_ratio
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if start is not None:
        import torch

        from f3stream.checkpoint import load_checkpoint, save_checkpoint
        from f3stream.model import F3Model
        from f3stream.checkpoint import load_state_strict

        ck_cfg, state, ck_info = load_checkpoint(start)
        model = F3Model(ck_cfg)
        load_state_strict(model, state, str(start))
        shutil.rmtree(out / START_DIR, ignore_errors=True)
        save_checkpoint(model, ck_cfg, out / START_DIR, info=ck_info,
                        weights_dtype=torch.float16)
    if wheels:
        wheel_dir = out / "wheels"
        wheel_dir.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform",
                        "manylinux2014_x86_64", "-d", str(wheel_dir), *WHEELS], check=True)
    carried = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    repo = Path(__file__).resolve().parents[1]
    tree = tracked_tree_bytes(repo, leave_out)
    info = {"config": str(config), "packed": str(packed), "codec": codec,
            "start": None if start is None else str(start),
            "compression_level": compression,
            "train_minutes": round(float(corpus.lengths[train].sum()) / sr / 60, 1),
            "val_minutes": round(float(corpus.lengths[val].sum()) / sr / 60, 1),
            "train_speakers": len(set(corpus.speakers[train].tolist())),
            "train_clips": int(train.size), "val_clips": int(val.size),
            "bundle_mib": round(carried / 2 ** 20, 1), "tracked_tree_mib": round(tree / 2 ** 20, 1),
            "fits_the_device": carried + tree < DEVICE_TREE_LIMIT}
    if leave_out:
        before, after = leave_out_commands(leave_out)
        info.update(left_out=list(leave_out), before_the_call=before, after_the_call=after)
    (out / "bundle.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def unpack_audio(bundle_dir: Path) -> Path:
    """The bundle's Opus audio decoded into a packed corpus (``training.data.pack``'s format)
    beside it; returns its folder."""
    import soundfile as sf

    packed = bundle_dir / "packed"
    index = np.load(bundle_dir / "index.npz", allow_pickle=False)
    wav, sr = sf.read(bundle_dir / AUDIO_FILE, dtype="float32")
    if sr != int(index["sample_rate"]):
        raise ValueError(f"{AUDIO_FILE} is at {sr} Hz, the index says {int(index['sample_rate'])}")
    total = int(index["offsets"][-1] + index["lengths"][-1])
    if wav.size < total:
        raise ValueError(f"{AUDIO_FILE} holds {wav.size} samples, the index needs {total}")
    packed.mkdir(exist_ok=True)
    pcm = np.clip(np.round(wav[:total] * 32768.0), -32768, 32767).astype(np.int16)
    pcm.tofile(packed / "audio.int16")
    np.savez(packed / "index.npz", **{k: index[k] for k in index.files})
    return packed


def _set_stage(config: Path, **values) -> None:
    cfg = json.loads(config.read_text())
    cfg["autoencoder"].update(values)
    config.write_text(json.dumps(cfg, indent=2) + "\n")


def steady_sec_per_step(log_csv: Path) -> float:
    """Seconds per step between the first and the last row of a training log, whose
    ``sec_per_step`` is the running mean since the loop began: the first steps' one-off costs
    (workers starting, cuDNN choosing kernels) drop out."""
    import csv

    rows = list(csv.DictReader(log_csv.open()))
    if len(rows) < 2:
        raise ValueError(f"{log_csv}: need two rows to time the steady steps, got {len(rows)}")
    (s0, t0), (s1, t1) = [(int(r["step"]), float(r["sec_per_step"])) for r in (rows[0], rows[-1])]
    return (s1 * t1 - s0 * t0) / (s1 - s0)


def run(bundle_dir: Path, checkpoint: Path, minutes: float, out: Path, work: Path,
        probe_steps: int = PROBE_STEPS, reserve_seconds: float = 30.0) -> dict:
    """On the GPU: unpack, time ``probe_steps`` steps, plan the cosine to end on time
    (``reserve_seconds`` kept for the export and the shards), train, write the EMA's
    autoencoder weights as float16 shards and the log to ``out``."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True   # float32 weights, TF32 matmuls on the GPU
    torch.backends.cudnn.benchmark = True          # fixed segment shapes: pick the fastest convs

    from training.config import TrainConfig
    from training.seed import seed
    from training.train import train_autoencoder

    started = time.time()
    unpack_audio(bundle_dir)
    config = work / "config.json"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle_dir / "config.json", config)
    # the timing probe: a throwaway run of a few steps (the first ones also warm up the GPU)
    log_every = json.loads(config.read_text())["autoencoder"].get("log_every", 25)
    _set_stage(config, steps=probe_steps, log_every=max(1, probe_steps // 3))
    probe = work / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    seed(checkpoint, TrainConfig.load(config), probe, step=0)
    train_autoencoder(TrainConfig.load(config), probe, resume=True)
    sec_per_step = steady_sec_per_step(probe / "autoencoder" / "log.csv")
    shutil.rmtree(probe)
    left = 60.0 * minutes - (time.time() - started) - reserve_seconds
    steps = max(probe_steps, int(left / sec_per_step * 0.95))
    _set_stage(config, steps=steps, log_every=log_every)
    cfg = TrainConfig.load(config)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    seed(checkpoint, cfg, run_dir, step=0)
    t = time.time()
    train_autoencoder(cfg, run_dir, resume=True, max_seconds=max(1.0, left))
    from f3stream.checkpoint import load_checkpoint

    _, state, info = load_checkpoint(run_dir / "export")
    done = int(info["stage0_steps"])
    out.mkdir(parents=True, exist_ok=True)
    shards = write_shards({k: v for k, v in state.items() if k.startswith(AUTOENCODER_PREFIXES)},
                          out)
    shutil.copy(run_dir / "autoencoder" / "log.csv", out / "log.csv")
    report = {"steps": done, "planned_steps": steps, "probe_sec_per_step": round(sec_per_step, 4),
              "sec_per_step": round((time.time() - t) / max(1, done), 4),
              "batch_size": cfg.autoencoder.batch_size, "lr": cfg.autoencoder.lr,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "minutes": round((time.time() - started) / 60, 2),
              "checkpoint": str(checkpoint), "base_stage0_steps": _base_steps(checkpoint),
              "shards": shards}
    (out / "burst.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _base_steps(checkpoint: Path) -> int:
    from f3stream.checkpoint import read_checkpoint_meta

    return int(read_checkpoint_meta(checkpoint).get("info", {}).get("stage0_steps", 0))


def write_shards(state: dict, out: Path) -> list[str]:
    """``state`` as float16 safetensors files of at most ``SHARD_BYTES`` each."""
    from safetensors.torch import save_file

    import torch

    shards, current, size = [], {}, 0
    for name in sorted(state):
        t = state[name]
        t = t.to(torch.float16) if t.is_floating_point() else t
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t.contiguous()
        size += nbytes
    if current:
        shards.append(current)
    names = []
    for i, shard in enumerate(shards):
        name = f"weights-{i}.safetensors"
        save_file(shard, str(out / name))
        names.append(name)
    return names


def unbundle(shards: Path, out: Path, checkpoint: Path | None = None) -> Path:
    """The burst's shards over ``checkpoint``'s weights (default: the bundled checkpoint, the
    burst's starting point), exported as a float32 f3stream checkpoint to ``out/export``."""
    import torch
    from safetensors.torch import load_file

    from f3stream.checkpoint import default_checkpoint_dir, load_checkpoint, load_state_strict
    from f3stream.model import F3Model
    from training.common import export

    report = json.loads((shards / "burst.json").read_text())
    checkpoint = checkpoint or default_checkpoint_dir()
    cfg, state, info = load_checkpoint(checkpoint)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    got = {}
    for name in report["shards"]:
        got.update(load_file(str(shards / name)))
    unknown = set(got) - set(state)
    if unknown:
        raise SystemExit(f"{shards}: tensors the checkpoint does not have: {sorted(unknown)[:5]}")
    missing = {k for k in state if k.startswith(AUTOENCODER_PREFIXES)} - set(got)
    if missing:
        raise SystemExit(f"{shards}: autoencoder tensors missing: {sorted(missing)[:5]}")
    state.update({k: v.float() if v.is_floating_point() else v for k, v in got.items()})
    model = F3Model(cfg)
    load_state_strict(model, state, str(shards))
    steps = int(info.get("stage0_steps", 0)) + int(report["steps"])
    export(model, out, {"trained": True, "stage0_steps": steps, "stage1_steps": 0,
                        "gpu_burst": {k: report[k] for k in ("steps", "device", "batch_size",
                                                             "lr", "sec_per_step")}})
    shutil.copy(shards / "burst.json", out / "burst.json")
    if (shards / "log.csv").is_file():
        shutil.copy(shards / "log.csv", out / "log.csv")
    return out / "export"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.gpu_burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="here: the audio subset, config and wheels to carry")
    b.add_argument("--config", required=True, type=Path, help="the run's training config")
    b.add_argument("--packed", type=Path, default=Path("data/packed"))
    b.add_argument("--out", type=Path, default=Path("runs/burst"))
    b.add_argument("--megabytes", type=float, default=DEFAULT_MEGABYTES,
                   help=f"MiB of Opus audio (default {DEFAULT_MEGABYTES:g})")
    b.add_argument("--compression", type=float, default=DEFAULT_COMPRESSION,
                   help="Opus compression level 0-1, higher = smaller (default "
                        f"{DEFAULT_COMPRESSION:g}, ~31 kbps)")
    b.add_argument("--val-seconds", type=float, default=60.0)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--lr", type=float, default=8e-4, help="the burst's peak rate")
    b.add_argument("--min-lr-ratio", type=float, default=0.25,
                   help="the cosine's floor as a share of the peak (default 0.25)")
    b.add_argument("--warmup-steps", type=int, default=200)
    b.add_argument("--loader-workers", type=int, default=12,
                   help="processes preparing batches ahead of the GPU (default 12)")
    b.add_argument("--start", type=Path,
                   help="checkpoint to start from, copied as float16 into the bundle (default: "
                        "none; the burst then starts from the bundled checkpoint)")
    b.add_argument("--leave-out", nargs="+", default=[], metavar="FOLDER",
                   help="tracked folders the burst does not need, taken out of the index for "
                        "the call (e.g. docs f3stream/checkpoints); prints the commands")
    b.add_argument("--no-wheels", action="store_true",
                   help="skip downloading the soundfile wheels for the device")
    r = sub.add_parser("run", help="on the GPU: train for MIN minutes, write shards to OUT")
    r.add_argument("--bundle", type=Path, default=Path("runs/burst"))
    r.add_argument("--checkpoint", type=Path, help="the checkpoint to start from (default: "
                   f"the bundle's {START_DIR}/ if it has one, else the bundled checkpoint)")
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/f3-burst"))
    u = sub.add_parser("unbundle", help="here: the shards back into an export directory")
    u.add_argument("--shards", type=Path, required=True, help="the folder the device returned")
    u.add_argument("--checkpoint", type=Path, help="the burst's starting checkpoint "
                   "(default: the bundled one)")
    u.add_argument("--out", type=Path, default=Path("runs/burst-result"))
    a = p.parse_args(argv)
    if a.command == "bundle":
        if not 0.0 <= a.compression <= 1.0:
            p.error("--compression must lie in [0, 1]")
        info = bundle(a.config, a.packed, a.out, a.megabytes, a.compression, a.val_seconds,
                      a.batch_size, a.lr, a.warmup_steps, wheels=not a.no_wheels,
                      start=a.start, min_lr_ratio=a.min_lr_ratio,
                      loader_workers=a.loader_workers, leave_out=tuple(a.leave_out))
        print(json.dumps(info, indent=1))
        if not info["fits_the_device"]:
            print("the bundle and the tracked tree exceed the device's 64 MiB: lower --megabytes "
                  "or --leave-out tracked folders the burst does not need", file=sys.stderr)
            return 1
    elif a.command == "run":
        if a.minutes <= 0:
            p.error("--minutes must be > 0")
        checkpoint = a.checkpoint or (a.bundle / START_DIR if (a.bundle / START_DIR).is_dir()
                                      else Path("f3stream/checkpoints/default"))
        print(json.dumps(run(a.bundle, checkpoint, a.minutes, a.out, a.work), indent=1))
    else:
        print(unbundle(a.shards, a.out, a.checkpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
