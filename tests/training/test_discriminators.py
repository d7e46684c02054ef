"""CPU-sized discriminators, aligned crops, adding a discriminator to a running stage 0,
growing the decoder of a training checkpoint without changing what it computes, and seeding a
run from an installed checkpoint."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from f3stream.model import F3Model
from training.checkpointing import latest_checkpoint, load_training_state
from training.config import TrainConfig
from training.discriminators import (KINDS, PeriodDiscriminator, aligned_crops,
                                     build_discriminator, discriminator_loss,
                                     generator_adversarial_losses)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_scores_real_and_fake_and_trains(kind):
    torch.manual_seed(0)
    d = build_discriminator(kind, channels=4)
    n_mpd = 5 if "mpd" in kind else 0
    n_mrd = 3 if "mrd" in kind else 0
    x = torch.randn(2, 4800) * 0.1
    outs = d(x)
    assert len(outs) == n_mpd + n_mrd
    assert all(torch.isfinite(logits).all() and feats for logits, feats in outs)
    y = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    adv, fm = generator_adversarial_losses(d(x), d(y))
    (adv + fm).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0   # the generator gets a signal
    assert fm.item() > 0
    # a few discriminator steps separate real from fake
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    fake = torch.zeros_like(x) + 0.01 * torch.randn_like(x)
    first = None
    for _ in range(15):
        loss = discriminator_loss(d(x), d(fake))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="discriminator must be one of"):
        build_discriminator("msd")


def test_period_discriminator_folds_by_its_period_and_pads_odd_lengths():
    d = PeriodDiscriminator(7)
    logits, feats = d(torch.randn(3, 1000))      # 1000 is not a multiple of 7
    assert feats[0].shape[0] == 3 and feats[0].shape[-1] == 7
    assert logits.shape[-1] == 7


def test_aligned_crops_take_the_same_window_of_both():
    x = torch.arange(40.0).reshape(2, 20)
    y = x + 1000
    g = torch.Generator().manual_seed(0)
    xc, yc = aligned_crops(x, y, 6, g)
    assert xc.shape == (2, 6)
    torch.testing.assert_close(yc - xc, torch.full_like(xc, 1000.0))
    assert torch.all(xc[:, 1:] - xc[:, :-1] == 1)            # contiguous windows
    assert aligned_crops(x, y, 0)[0] is x and aligned_crops(x, y, 50)[0] is x


def _tiny_packed_cfg(tmp_path: Path) -> TrainConfig:
    """The tiny config on a synthetic manifest of noise-and-tone clips (no espeak-ng)."""
    import numpy as np
    import soundfile as sf

    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        t = np.arange(24000) / 24000
        wav = 0.2 * np.sin(2 * np.pi * (120 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(clips / f"c{i}.wav", wav.astype(np.float32), 24000)
        rows.append({"path": f"clips/c{i}.wav", "text": "", "speaker": f"s{i % 4}",
                     "split": "val" if i == 7 else "train", "source": "synthetic"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig.load(ROOT / "training/configs/tiny.json")
    cfg.manifest = str(tmp_path / "manifest.jsonl")
    cfg.autoencoder = replace(cfg.autoencoder, adversarial_weight=0.0)  # spectral only
    return cfg


def test_a_discriminator_joins_a_run_that_had_none(tmp_path, capsys):
    """Resuming with an adversarial config from a spectral-only checkpoint keeps the
    generator's weights and optimizer, starts the discriminator fresh, and says so."""
    from training.train import train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    cfg.autoencoder = replace(cfg.autoencoder, steps=2, checkpoint_every=2)
    run = tmp_path / "run"
    train_autoencoder(cfg, run, resume=False)
    gan = replace(cfg.autoencoder, steps=4, adversarial_weight=1.0, discriminator="mpd",
                  discriminator_crop_seconds=0.25, discriminator_lr=2e-4)
    cfg.autoencoder = gan
    train_autoencoder(cfg, run, resume=True)
    out = capsys.readouterr().out
    assert "at step 2" in out and "discriminator" in out and "starting fresh" in out
    rows = (run / "autoencoder/log.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert int(last["step"]) == 4 and float(last["disc"]) > 0 and float(last["fm"]) > 0
    meta = load_training_state(latest_checkpoint(run / "autoencoder"),
                               {"discriminator": build_discriminator("mpd")}, {})
    assert meta["fresh"] == []                    # saved with the run from then on


@pytest.mark.parametrize("change", ["blocks", "layers", "harmonic"])
def test_grow_adds_decoder_parts_without_changing_the_output(tmp_path, change):
    """More ConvNeXt blocks or transformer layers (the grown model computes what the old one
    did), or a harmonic source (the same, but for the harmonics its initial gains add);
    training the grown run moves the new parameters."""
    from training.grow import grow
    from training.train import train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    cfg.autoencoder = replace(cfg.autoencoder, steps=2, checkpoint_every=2)
    train_autoencoder(cfg, tmp_path / "small", resume=False)
    big = TrainConfig.load(ROOT / "training/configs/tiny.json")
    big.manifest = cfg.manifest
    big.autoencoder = cfg.autoencoder
    n = cfg.model.autoencoder.decoder_conv_blocks
    n_enc, n_dec = cfg.model.autoencoder.encoder_layers, cfg.model.autoencoder.decoder_layers
    grown = {"blocks": {"decoder_conv_blocks": n + 2},
             "layers": {"encoder_layers": n_enc + 1, "decoder_layers": n_dec + 2},
             "harmonic": {"harmonic_source": True}}[change]
    big.model = replace(cfg.model, autoencoder=replace(cfg.model.autoencoder, **grown))
    path = grow(tmp_path / "small", cfg, big, tmp_path / "big")
    models = {}
    for name, c, ck in (("small", cfg, latest_checkpoint(tmp_path / "small/autoencoder")),
                        ("big", big, path)):
        m = F3Model(c.model)
        load_training_state(ck, {"ema": m}, {})
        models[name] = m.eval()
    x = torch.randn(1, 9600) * 0.1
    with torch.no_grad():
        if change == "harmonic":   # it adds harmonics at once; at zero gains it is the old model
            assert (models["big"](x)[1] - models["small"](x)[1]).abs().max() > 1e-4
            models["big"].decoder.harmonic_proj.bias.zero_()
        torch.testing.assert_close(models["big"](x)[1], models["small"](x)[1], rtol=0, atol=0)
    # the grown run resumes and trains the new parts
    big.autoencoder = replace(big.autoencoder, steps=4,   # half the items teacher-forced
                              pitch_teacher_forcing=0.5 if change == "harmonic" else 0.0)
    model = train_autoencoder(big, tmp_path / "big", resume=True)
    if change == "blocks":
        assert len(models["big"].decoder.convs.layers) == n + 2
        assert model.decoder.convs.layers[n].gamma.abs().sum() > 0
    elif change == "layers":
        assert len(model.encoder.transformer.layers) == n_enc + 1
        assert len(model.decoder.transformer.layers) == n_dec + 2
        for layer in (model.encoder.transformer.layers[n_enc],
                      model.decoder.transformer.layers[n_dec + 1]):
            assert layer.attn.out.weight.abs().sum() > 0 and layer.mlp[2].weight.abs().sum() > 0
    else:
        assert model.decoder.harmonic_proj.weight.abs().sum() > 0
        header, *rows = (tmp_path / "big/autoencoder/log.csv").read_text().splitlines()
        last = dict(zip(header.split(","), rows[-1].split(",")))
        assert int(last["step"]) == 4 and float(last["pitch"]) > 0
        from training.harmonic_gains import gains   # what the run does with its harmonics
        report = gains(tmp_path / "big", big)
        assert report["step"] == 4 and report["gain_below_1khz_voiced"] > 0.5   # starts at 1
        assert 0 <= report["pitch_head_within_5_percent"] <= 1
    with pytest.raises(SystemExit, match="cannot"):    # nothing is ever taken away
        grow(tmp_path / "big", big, cfg, tmp_path / "back")


def test_seed_continues_an_installed_checkpoint_with_a_rewarmed_rate(tmp_path):
    """A float16 installed checkpoint becomes a run at its stage-0 step: the weights are the
    checkpoint's, and the fresh optimizer's learning rate ramps up again from that step."""
    from training import install_checkpoint
    from training.common import lr_at
    from training.seed import seed
    from training.train import train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    cfg.autoencoder = replace(cfg.autoencoder, steps=40, warmup_steps=3, checkpoint_every=3)
    train_autoencoder(cfg, tmp_path / "old", resume=False, max_steps=3)
    assert install_checkpoint.main([str(tmp_path / "old/export"), str(tmp_path / "installed"),
                                    "--float16"]) == 0
    ck = seed(tmp_path / "installed", cfg, tmp_path / "new")
    assert ck.name == "step-0000003"
    from f3stream.checkpoint import load_checkpoint
    _, installed, _ = load_checkpoint(tmp_path / "installed")
    for name in ("model", "ema"):
        m = F3Model(cfg.model)
        load_training_state(ck, {name: m}, {})
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, installed[k].to(v.dtype), rtol=0, atol=0)
    with pytest.raises(SystemExit, match="refusing"):
        seed(tmp_path / "installed", cfg, tmp_path / "new")
    other = replace(cfg.model, autoencoder=replace(cfg.model.autoencoder, harmonic_source=True))
    with pytest.raises(SystemExit, match="differs"):
        seed(tmp_path / "installed", replace(cfg, model=other), tmp_path / "other")
    train_autoencoder(cfg, tmp_path / "new", resume=True, max_steps=5)   # a stop inside the ramp
    train_autoencoder(cfg, tmp_path / "new", resume=True, max_steps=8)
    header, *rows = (tmp_path / "new/autoencoder/log.csv").read_text().splitlines()
    lrs = {int(r["step"]): float(r["lr"]) for r in (dict(zip(header.split(","), row.split(",")))
                                                   for row in rows)}
    assert sorted(lrs) == [4, 5, 6, 7, 8]
    for done, lr in lrs.items():      # the row of step `done` trained step done - 1
        ramp = min(1.0, (done - 3) / 3)
        assert lr == pytest.approx(lr_at(done - 1, cfg.autoencoder) * ramp, rel=1e-3)
    assert lrs[4] < 0.4 * lr_at(3, cfg.autoencoder)


def test_profile_step_times_the_harmonic_sources_pitch_target(tmp_path):
    from training.profile_step import profile

    cfg = _tiny_packed_cfg(tmp_path)
    raw = json.loads((ROOT / "training/configs/tiny.json").read_text())
    raw["manifest"] = cfg.manifest
    raw["model"]["autoencoder"]["harmonic_source"] = True
    raw["autoencoder"].update(adversarial_weight=0.0, pitch_weight=10.0,
                              pitch_teacher_forcing=1.0)
    path = tmp_path / "harmonic.json"
    path.write_text(json.dumps(raw))
    times = profile(str(path), steps=1, threads=1)
    assert set(times) == {"data", "pitch", "forward", "losses", "adversarial", "backward",
                          "optimizer"}
    assert times["pitch"] > 0 and times["backward"] > 0 and times["adversarial"] == 0


@pytest.mark.slow
def test_profile_step_compiles_the_model_and_the_losses(tmp_path):
    """``--compile all`` runs the same step through torch.compile (minutes of inductor codegen
    on 2 cores, hence slow); an unknown choice is refused before any work."""
    from training.profile_step import profile

    cfg = _tiny_packed_cfg(tmp_path)
    raw = json.loads((ROOT / "training/configs/tiny.json").read_text())
    raw["manifest"] = cfg.manifest
    raw["autoencoder"].update(adversarial_weight=0.0)
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="compile must be one of"):
        profile(str(path), steps=1, threads=1, compile_parts="everything")
    times = profile(str(path), steps=1, threads=1, compile_parts="all")
    assert times["forward"] > 0 and times["losses"] > 0 and times["backward"] > 0


def test_same_gain_brings_the_real_crop_to_the_reference_level():
    from training.discriminators import DISCRIMINATOR_RMS, same_gain_to_reference

    x = torch.randn(3, 4000) * torch.tensor([[0.003], [0.05], [0.4]])
    y = 0.5 * x                                   # 6 dB too quiet, as a bad generator is
    xs, ys = same_gain_to_reference(x, y)
    rms = xs.pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.full((3,), DISCRIMINATOR_RMS), rtol=1e-4, atol=0)
    torch.testing.assert_close(ys, 0.5 * xs)      # same gain: the level error still shows
    y.requires_grad_(True)
    same_gain_to_reference(x, y)[1].sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_rewarm_ramps_the_rate_when_a_finished_schedule_is_extended(tmp_path):
    """A run that ended its cosine continues under a longer schedule: with ``--rewarm`` the rate
    climbs from the resumed step over ``warmup_steps`` to the new schedule; without it, the rate
    jumps there at once (the kick the flag exists to avoid)."""
    from training.common import lr_at
    from training.train import main, train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    short = replace(cfg.autoencoder, steps=4, warmup_steps=2, checkpoint_every=2, min_lr_ratio=0.1)
    train_autoencoder(replace(cfg, autoencoder=short), tmp_path / "run", resume=False)
    shutil.copytree(tmp_path / "run", tmp_path / "jump")
    longer = replace(short, steps=40)
    train_autoencoder(replace(cfg, autoencoder=longer), tmp_path / "run", resume=True,
                      max_steps=6, rewarm=True)
    train_autoencoder(replace(cfg, autoencoder=longer), tmp_path / "run", resume=True,
                      max_steps=7)                         # a plain resume keeps the ramp's origin
    train_autoencoder(replace(cfg, autoencoder=longer), tmp_path / "jump", resume=True,
                      max_steps=5)

    def lrs(run):
        header, *rows = (tmp_path / run / "autoencoder/log.csv").read_text().splitlines()
        return {int(r["step"]): float(r["lr"])
                for r in (dict(zip(header.split(","), row.split(","))) for row in rows)}

    ramped, jumped = lrs("run"), lrs("jump")
    assert sorted(ramped) == [1, 2, 3, 4, 5, 6, 7]
    for done in (5, 6, 7):                  # the row of step `done` trained step done - 1
        ramp = min(1.0, (done - 4) / 2)
        assert ramped[done] == pytest.approx(lr_at(done - 1, longer) * ramp, rel=1e-3)
    assert ramped[5] < 0.6 * jumped[5]
    assert jumped[5] == pytest.approx(lr_at(4, longer), rel=1e-3)
    assert jumped[5] > 3 * lr_at(short.steps, short)   # far above the finished cosine's floor
    with pytest.raises(SystemExit):
        main(["autoencoder", "--config", str(tmp_path / "none.json"), "--out",
              str(tmp_path / "x"), "--rewarm"])


def test_a_frozen_encoder_keeps_the_exported_latents_and_the_decoder_learns(tmp_path):
    """``freeze_encoder``: resumed from a run with an EMA, the decoder trains on the exported
    (averaged) encoder's latents; the exported encoder stays bit for bit what it was, the
    decoder moves."""
    import torch

    from training.checkpointing import latest_checkpoint
    from training.train import train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    first = replace(cfg.autoencoder, steps=3, checkpoint_every=3, ema_decay=0.5)
    train_autoencoder(replace(cfg, autoencoder=first), tmp_path / "run", resume=False)

    def exported(name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        ck = latest_checkpoint(tmp_path / "run" / "autoencoder")
        state = load_file(str(Path(ck) / "state.safetensors"))
        prefix = "module.ema." + name
        return {k[len("module.ema."):]: v for k, v in state.items() if k.startswith(prefix)}

    enc0, dec0 = exported("encoder."), exported("decoder.")
    frozen = replace(first, steps=6, freeze_encoder=True)
    model = train_autoencoder(replace(cfg, autoencoder=frozen), tmp_path / "run", resume=True)
    enc1, dec1 = exported("encoder."), exported("decoder.")
    assert enc0.keys() == enc1.keys() and len(enc0) > 0
    assert all(torch.equal(enc0[k], enc1[k]) for k in enc0)
    for k, v in model.encoder.state_dict().items():       # the trained copy = the exported one
        assert torch.equal(v, enc1["encoder." + k])
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)


def test_the_phase_advance_term_trains_and_is_logged(tmp_path):
    from training.train import train_autoencoder

    cfg = _tiny_packed_cfg(tmp_path)
    stage = replace(cfg.autoencoder, steps=2, log_every=1, phase_advance_weight=1.0)
    train_autoencoder(replace(cfg, autoencoder=stage), tmp_path / "run", resume=False)
    header, *rows = (tmp_path / "run/autoencoder/log.csv").read_text().splitlines()
    col = header.split(",").index("phase_advance")
    values = [float(r.split(",")[col]) for r in rows]
    assert len(values) == 2 and all(0 < v < 4 for v in values)
