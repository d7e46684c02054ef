"""The GPU burst kit, end to end on the CPU with a tiny model: bundle -> run -> unbundle."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import f3stream
from f3stream.audio import write_audio
from f3stream.checkpoint import load_checkpoint, save_checkpoint
from f3stream.model import F3Model
from training.config import TrainConfig
from training.data.manifest import Clip, write_manifest
from training.data.pack import pack
from training.gpu_burst import bundle, choose_clips, run, unbundle, unpack_audio, write_shards

ROOT = Path(__file__).resolve().parents[2]
SR = 24000


def test_clips_are_taken_round_robin_over_speakers_within_the_budget():
    speakers = np.array(["a"] * 6 + ["b"] * 2 + ["c"])
    lengths = np.full(9, 100)
    got = choose_clips(speakers, lengths, np.arange(9), budget_samples=500)
    assert lengths[got].sum() <= 500
    assert set(speakers[got]) == {"a", "b", "c"}          # every voice, not six clips of "a"
    assert (speakers[got] == "a").sum() == 2


def test_shards_stay_under_the_size_limit_and_keep_every_tensor(tmp_path, monkeypatch):
    import training.gpu_burst as gb
    from safetensors.torch import load_file

    monkeypatch.setattr(gb, "SHARD_BYTES", 1000)
    state = {f"decoder.w{i}": torch.randn(100, 3) for i in range(5)}   # 600 bytes each in fp16
    names = write_shards(state, tmp_path)
    assert len(names) == 5
    got = {}
    for n in names:
        assert (tmp_path / n).stat().st_size < 1000 + 200
        got.update(load_file(str(tmp_path / n)))
    assert set(got) == set(state) and all(v.dtype == torch.float16 for v in got.values())


def _speech_like(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 20))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture()
def packed_corpus(tmp_path):
    clips = []
    for i in range(6):
        path = tmp_path / f"c{i}.wav"
        write_audio(path, _speech_like(1.0, 110 + 20 * i, i), SR)
        clips.append(Clip(str(path), "", f"spk{i % 3}", "val" if i == 5 else "train", "src"))
    write_manifest(tmp_path / "manifest.jsonl", clips)
    pack(tmp_path / "manifest.jsonl", tmp_path / "packed", SR, jobs=1)
    return tmp_path / "packed"


def test_bundle_run_unbundle_round_trip_on_the_cpu(packed_corpus, tmp_path):
    cfg_path = ROOT / "training/configs/tiny.json"
    cfg = TrainConfig.load(cfg_path)
    start = tmp_path / "start"
    torch.manual_seed(0)
    save_checkpoint(F3Model(cfg.model), cfg.model, start,
                    info={"trained": True, "stage0_steps": 1000, "stage1_steps": 0})
    out = tmp_path / "burst"
    info = bundle(cfg_path, packed_corpus, out, megabytes=1.0, compression=0.5,
                  val_seconds=1.0, batch_size=2, lr=1e-3, warmup_steps=1, wheels=False,
                  start=start, min_lr_ratio=0.3, loader_workers=1)
    assert info["train_clips"] == 5 and info["val_clips"] == 1 and info["train_speakers"] == 3
    assert info["codec"]["kbps"] > 0 and (out / "audio.opus").stat().st_size > 0
    burst_cfg = json.loads((out / "config.json").read_text())
    assert burst_cfg["packed"] == str(out / "packed")
    assert burst_cfg["autoencoder"]["noise_ramp_steps"] == 0   # the model's gamma at once
    assert burst_cfg["autoencoder"]["loader_workers"] == 1
    assert burst_cfg["autoencoder"]["min_lr_ratio"] == 0.3
    _, start_state, _ = load_checkpoint(start)                 # the start travels as float16
    _, carried, carried_info = load_checkpoint(out / "start")
    assert carried_info["stage0_steps"] == 1000
    assert all(torch.equal(carried[k], start_state[k].half().float()) for k in start_state)

    packed = unpack_audio(out)                                 # the Opus audio decodes back
    original = np.fromfile(packed_corpus / "audio.int16", np.int16)
    decoded = np.fromfile(packed / "audio.int16", np.int16)
    assert decoded.size == original.size
    err = decoded.astype(np.float64) - original
    assert np.sqrt(np.mean(err ** 2)) < 0.2 * np.sqrt(np.mean(original.astype(np.float64) ** 2))

    shards = tmp_path / "shards"
    # 6 s of budget: the probe's steps come out of it, and the rest must fit two steps even on
    # a loaded machine (with 0.6 s a busy CPU fitted one)
    report = run(out, out / "start", minutes=0.1, out=shards, work=tmp_path / "work", probe_steps=2,
                 reserve_seconds=0.0)
    assert report["steps"] >= 2 and report["base_stage0_steps"] == 1000
    assert (shards / "log.csv").is_file()

    export = unbundle(shards, tmp_path / "result", start)
    tok = f3stream.load(export)
    assert tok.info["stage0_steps"] == 1000 + report["steps"]
    _, before, _ = load_checkpoint(start)
    _, after, _ = load_checkpoint(export)
    changed = [k for k in before if k.startswith("decoder.")
               and not torch.allclose(before[k].float(), after[k].float())]
    assert changed                                              # the burst's weights came back
    assert all(torch.equal(before[k], after[k]) for k in before
               if k.startswith("representation."))             # the rest is the start's


def test_steady_step_time_leaves_out_the_first_rows_one_off_costs(tmp_path):
    from training.gpu_burst import steady_sec_per_step

    log = tmp_path / "log.csv"
    # 20 steps took 10 s (workers starting), the next 40 took 2 s: 0.05 s a step from then on
    log.write_text("step,sec_per_step\n20,0.5\n40,0.275\n60,0.2\n")
    assert steady_sec_per_step(log) == pytest.approx(0.05)
    log.write_text("step,sec_per_step\n20,0.5\n")
    with pytest.raises(ValueError):
        steady_sec_per_step(log)


def test_leave_out_commands_take_folders_out_of_what_travels_and_put_them_back(tmp_path):
    import subprocess

    from training.gpu_burst import leave_out_commands, tracked_tree_bytes

    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout

    sh("git init -q . && git config user.email t@t && git config user.name t")
    for name, size in [("docs/a.png", 3000), ("f3stream/checkpoints/w.bin", 5000),
                       ("f3stream/code.py", 100)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    (tmp_path / ".git/info").mkdir(exist_ok=True)
    (tmp_path / ".git/info/exclude").write_text("/runs/\n")
    sh("git add -A && git commit -q -m init")
    leave = ("docs", "f3stream/checkpoints/")
    assert tracked_tree_bytes(tmp_path) == 8100
    assert tracked_tree_bytes(tmp_path, leave) == 100
    before, after = leave_out_commands(leave)
    sh(before)
    # what a device call sends: tracked files and untracked ones git does not ignore
    sent = sh("git ls-files --cached --others --exclude-standard").split()
    assert sent == ["f3stream/code.py"]
    assert (tmp_path / "docs/a.png").is_file()                 # the files stay on disk
    sh(after)
    assert sh("git status --porcelain") == ""
    assert (tmp_path / ".git/info/exclude").read_text() == "/runs/\n"
