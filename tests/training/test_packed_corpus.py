"""The packed training corpus, its segment sampler and the band-limited losses."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from f3stream.audio import write_audio
from training.data import real_speech
from training.data.build_corpus import assign_splits
from training.data.manifest import Clip, write_manifest
from training.data.pack import PackedCorpus, pack
from training.losses import LogMel, spectral_losses
from training.segments import Augmentation, LevelAugmentation, PackedSegmentSource

SR = 24000


def _tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def packed(tmp_path):
    clips = []
    for i, (sr, freq) in enumerate([(24000, 440.0), (8000, 300.0), (44100, 1000.0)]):
        path = tmp_path / f"c{i}.wav"
        write_audio(path, _tone(freq, 1.0 + i * 0.5, sr), sr)
        clips.append(Clip(str(path), f"clip {i}", f"spk{i}", "train", f"src{i % 2}"))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    clips.append(Clip(str(empty), "", "spk9", "train", "src0"))
    silent = tmp_path / "silent.wav"
    write_audio(silent, np.zeros(SR, np.float32), SR)
    clips.append(Clip(str(silent), "", "spk9", "train", "src0"))
    write_manifest(tmp_path / "manifest.jsonl", clips)
    counts = pack(tmp_path / "manifest.jsonl", tmp_path / "packed", SR, jobs=1)
    return PackedCorpus.open(tmp_path / "packed"), counts


def test_pack_decodes_once_and_counts_broken_files(packed):
    corpus, counts = packed
    assert counts["clips"] == 3 and counts["skipped"] == 2
    assert counts["unreadable"] == 1 and counts["silent"] == 1
    assert corpus.lengths.tolist() == [24000, 36000, 48000]       # resampled to 24 kHz
    assert corpus.band_hz.tolist() == [12000.0, 4000.0, 12000.0]   # half the file's rate
    assert corpus.audio.size == sum(corpus.lengths)
    np.testing.assert_allclose(corpus.audio[:2400] / 32768.0, _tone(440.0, 0.1, SR), atol=2e-3)
    assert "src0" in corpus.report() and "src1" in corpus.report()


def test_segments_are_deterministic_weighted_and_leveled(packed):
    corpus, _ = packed
    level = LevelAugmentation(level_dbfs=(-30.0, -30.0))
    src = PackedSegmentSource(corpus, "train", 9600, seed=3, level=level)
    a, band_a = src.batch_with_band(7, 6)
    b, band_b = src.batch_with_band(7, 6)
    assert torch.equal(a, b) and torch.equal(band_a, band_b)
    assert not torch.equal(a, src.batch(8, 6))
    rms_db = 20 * torch.log10(a.pow(2).mean(dim=1).sqrt())
    torch.testing.assert_close(rms_db, torch.full_like(rms_db, -30.0), atol=0.5, rtol=0)
    only_src1 = PackedSegmentSource(corpus, "train", 9600, 3, {"src0": 0.0}, level)
    _, band = only_src1.batch_with_band(0, 8)
    assert band.tolist() == [4000.0] * 8                           # the 8 kHz clip only
    with pytest.raises(ValueError, match="unknown sources"):
        PackedSegmentSource(corpus, "train", 9600, 3, {"nope": 1.0})


def test_without_the_peak_limit_loud_segments_keep_their_level(packed):
    """At 0 dBFS RMS the tones' peaks (3 dB above it) pass full scale: with the limit the segments come out
    quieter than drawn; without it they keep the drawn level."""
    corpus, _ = packed
    for peak_limit, expect_drawn in ((True, False), (False, True)):
        level = LevelAugmentation(level_dbfs=(0.0, 0.0), peak_limit=peak_limit)
        a = PackedSegmentSource(corpus, "train", 9600, seed=3, level=level).batch(0, 6)
        rms_db = 20 * torch.log10(a.pow(2).mean(dim=1).sqrt())
        assert bool(rms_db.abs().max() < 0.5) == expect_drawn, rms_db
        assert bool(a.abs().max() > 1.0) == expect_drawn


def test_speed_perturbation_moves_pitch_and_band(packed):
    corpus, _ = packed
    level = LevelAugmentation(level_dbfs=(-20.0, -20.0), speed_prob=1.0,
                              speed_range=(1.25, 1.25))
    src = PackedSegmentSource(corpus, "train", 9600, 0, {"src0": 0.0}, level)
    x, band = src.batch_with_band(0, 1)
    spec = np.abs(np.fft.rfft(x[0].numpy()))
    peak_hz = np.argmax(spec) * SR / 9600
    assert abs(peak_hz - 300.0 * 1.25) < 5                          # faster = higher
    assert band.item() == pytest.approx(4000.0 / 1.25)


def test_band_limited_losses_ignore_what_the_clip_cannot_hold():
    """Above an item's band limit the reconstruction is free: the spectral losses do not
    change when only those bins differ, and they do when bins inside the band differ."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9600, generator=g) * 0.1
    high = torch.from_numpy(_tone(9000.0, 0.4, SR)).repeat(2, 1)
    low = torch.from_numpy(_tone(1000.0, 0.4, SR)).repeat(2, 1)
    band = torch.tensor([4000.0, 4000.0])
    mel = LogMel(SR)
    base_mr, base_cx, _ = spectral_losses(x, x, band)
    mr_hi, cx_hi, _ = spectral_losses(x + high, x, band)
    mr_lo, cx_lo, _ = spectral_losses(x + low, x, band)
    # the tone's hard start and end leak a little below 4 kHz, far less than a tone inside
    assert mr_hi.item() < 0.05 and cx_hi.item() < 1e-3
    assert mr_lo.item() > 5 * mr_hi.item() and cx_lo.item() > 1e-2
    assert mel.loss(x + high, x, band).item() * 5 < mel.loss(x + low, x, band).item()
    full_mr, _, _ = spectral_losses(x + high, x, None)
    assert full_mr.item() > 0.1                                     # without a band: counted
    assert base_mr.item() == 0.0 and base_cx.item() == 0.0


def test_real_speech_ingesters_and_pinned_held_out_voices(tmp_path):
    root = tmp_path / "pkg"
    fish = root / "usr/share/games/fillets-ng/sound/level1"
    for lang in ("cs", "nl"):
        (fish / lang).mkdir(parents=True)
        for who in ("m", "v"):
            (fish / lang / f"lev-{who}-line.ogg").write_bytes(b"x")
    stamps = root / "usr/share/tuxpaint/stamps/animals"
    stamps.mkdir(parents=True)
    for lang in ("es", "fr"):
        (stamps / f"big_cat_desc_{lang}.ogg").write_bytes(b"x")
    (stamps / "big_cat_desc.ogg").write_bytes(b"x")                 # the English narrator
    clips = real_speech.ingest(["fillets", "tuxpaint"], root)
    speakers = {c.speaker for c in clips}
    assert speakers == {"fillets-cs-m", "fillets-cs-v", "fillets-nl-m", "fillets-nl-v",
                        "tuxpaint-es", "tuxpaint-fr", "tuxpaint-en"}
    # an English file name is the transcript of the English recording only
    assert {c.speaker: c.text for c in clips if c.source == "tuxpaint"} == {
        "tuxpaint-en": "big cat", "tuxpaint-es": "", "tuxpaint-fr": ""}
    split = {c.speaker: c.split for c in assign_splits(clips, 0.5, 0.5, seed=0)}
    assert split["fillets-nl-v"] == "test" and split["tuxpaint-es"] == "test"
    # voices of real sources that are not pinned are all trained on
    assert all(split[s] == "train" for s in ("fillets-cs-m", "fillets-cs-v", "fillets-nl-m",
                                             "tuxpaint-fr", "tuxpaint-en"))


def test_drascula_voice_files_become_wav_clips_per_character(tmp_path):
    """Raw 8-bit unsigned PCM after a 32-byte header; speaker = the file's character prefix."""
    import numpy as np
    import soundfile as sf

    base = tmp_path / "usr/share/scummvm/drascula/en"
    base.mkdir(parents=True)
    pcm = np.array([128, 255, 0, 192, 64], dtype=np.uint8)
    for name in ("12", "D3", "VB1", "E2"):
        (base / f"{name}.ALS").write_bytes(bytes(32 * [7]) + pcm.tobytes())
    (base / "TLEF0.ALG").write_bytes(b"not a voice")
    clips = real_speech.ingest(["drascula"], tmp_path)
    assert {c.speaker for c in clips} == {"drascula-hero", "drascula-D", "drascula-VB",
                                          "drascula-E"}
    wav, rate = sf.read(clips[0].path, dtype="int16")
    assert rate == 11025 and wav.tolist() == [0, 127 * 256, -128 * 256, 64 * 256, -64 * 256]
    split = {c.speaker: c.split for c in assign_splits(clips, 0.0, 0.0, seed=0)}
    assert split == {"drascula-hero": "train", "drascula-D": "train", "drascula-VB": "train",
                     "drascula-E": "val"}


def test_training_config_reads_packed_options(tmp_path):
    from training.config import TrainConfig

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"packed": "data/packed", "source_weights": {"a": 0.5},
                                "level": {"level_dbfs": [-40, -20], "speed_prob": 0.2},
                                "autoencoder": {"complex_weight": 1.0,
                                                "noise_ramp_steps": 100}}))
    cfg = TrainConfig.load(path)
    assert cfg.packed == "data/packed" and cfg.source_weights == {"a": 0.5}
    assert cfg.level.level_dbfs == (-40, -20) and cfg.level.speed_prob == 0.2
    assert cfg.autoencoder.complex_weight == 1.0
    path.write_text(json.dumps({"level": {"levels": [1, 2]}}))
    with pytest.raises(ValueError, match="level: unknown keys"):
        TrainConfig.load(path)


def test_noise_gamma_ramp():
    from training.config import StageConfig
    from training.train import noise_gamma_at

    stage = StageConfig(noise_gamma_start=0.0, noise_ramp_steps=100)
    assert [noise_gamma_at(s, stage, 1.0) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert noise_gamma_at(0, StageConfig(), 0.7) == 0.7


def test_manifest_of_real_sources_never_reads_alsa(tmp_path):
    root = Path("/")
    clips = real_speech.ingest([], root)
    assert clips == []


def test_ema_update_warms_up_then_averages():
    from training.train import update_ema

    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(ema.weight)
    torch.nn.init.ones_(model.weight)
    update_ema(ema, model, 0.99, step=0)         # d = 1/10: mostly the model already
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.9))
    update_ema(ema, model, 0.5, step=1000)       # d = 0.5 once warmed up
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 0.95))


def test_band_energy_loss_scores_level_not_harmonic_positions():
    """A harmonic signal with its harmonics moved by half their spacing keeps its band
    energies (small loss), a 10 dB quieter copy does not (loss = 2 ln(10^0.5))."""
    from training.losses import band_energy_loss

    t = torch.arange(48000) / SR
    voice = sum(torch.sin(2 * torch.pi * 150 * k * t) / k for k in range(1, 30))
    moved = sum(torch.sin(2 * torch.pi * (150 * k + 75) * t) / k for k in range(1, 30))
    x = (0.05 * voice)[None]
    _, _, m_same = spectral_losses(0.05 * moved[None], x)
    _, _, m_quiet = spectral_losses(x * 10 ** (-0.5), x)
    same = band_energy_loss(*m_same[(1024, 256)], None).item()
    quiet = band_energy_loss(*m_quiet[(1024, 256)], None).item()
    assert same < 0.25 * quiet
    noise = 0.05 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(0))
    _, _, m_noise = spectral_losses(noise * 10 ** (-0.5), noise)   # broadband: every band
    assert band_energy_loss(*m_noise[(1024, 256)], None).item() == pytest.approx(
        2 * np.log(10 ** 0.5), rel=0.02)
    # above the clip's band limit nothing is scored
    _, _, m = spectral_losses(x * 0.1, x, torch.tensor([4000.0]))
    masked = band_energy_loss(*m[(1024, 256)], torch.tensor([299.0])).item()
    assert masked == 0.0


def test_fine_band_loss_sees_the_envelope_the_wide_band_loss_smooths_away():
    """Noise gated on and off every 20 ms against steady noise of the same mean power: the
    wide bands on 43 ms frames smooth most of the gating away (loss 0.74), the third-octave
    bands on 21 ms frames every 5 ms do not (2.07). A 10 dB quieter copy scores 2 ln(10^0.5)
    in every band."""
    from training.losses import (BAND_RESOLUTION, FINE_BAND_RESOLUTION, THIRD_OCTAVE_EDGES_HZ,
                                 band_energy_loss)

    assert THIRD_OCTAVE_EDGES_HZ[:3] == pytest.approx((0.0, 125.99, 158.74), abs=0.01)
    assert THIRD_OCTAVE_EDGES_HZ[-1] == 12000.0 and len(THIRD_OCTAVE_EDGES_HZ) == 22
    noise = 0.1 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(0))
    gate = ((torch.arange(48000) // 480) % 2).float()            # 20 ms on, 20 ms off
    gated, steady = noise * gate, noise * 0.5 ** 0.5

    def losses(y, x, band=None, limit=None):
        _, _, m = spectral_losses(y, x, band)
        return (band_energy_loss(*m[BAND_RESOLUTION], limit),
                band_energy_loss(*m[FINE_BAND_RESOLUTION], limit, 24000, THIRD_OCTAVE_EDGES_HZ))

    wide, fine = losses(steady, gated)
    assert fine.item() > 2.5 * wide.item()
    assert losses(gated, gated)[1].item() == 0.0
    assert losses(noise * 10 ** (-0.5), noise)[1].item() == pytest.approx(
        2 * np.log(10 ** 0.5), rel=0.02)
    # bands above the clip's band limit are not scored (here: all, the first ends at 126 Hz)
    assert losses(noise * 0.1, noise, torch.tensor([4000.0]), torch.tensor([125.0])
                  )[1].item() == 0.0


def test_level_loss_scores_the_total_power_whatever_the_level():
    """Equal signals score 0; a copy g times louder scores |ln g^2| at any input level, and
    power above the item's band limit is not scored."""
    from training.losses import level_loss

    noise = torch.randn(1, 48000, generator=torch.Generator().manual_seed(0))
    for level in (0.003, 0.3):
        x = level * noise
        _, _, m = spectral_losses(x, x)
        assert level_loss(*m[(1024, 256)], None).item() == pytest.approx(0.0, abs=1e-6)
        _, _, m = spectral_losses(2.0 * x, x)
        assert level_loss(*m[(1024, 256)], None).item() == pytest.approx(np.log(4.0), rel=1e-3)
    t = torch.arange(48000) / SR
    low = 0.1 * torch.sin(2 * torch.pi * 200 * t)[None]
    high = 0.1 * torch.sin(2 * torch.pi * 8000 * t)[None]
    _, _, m = spectral_losses(low + high, low)
    assert level_loss(*m[(1024, 256)], None).item() > 0.5
    assert level_loss(*m[(1024, 256)], torch.tensor([4000.0])).item() < 0.01


def test_csv_log_gains_new_columns_on_resume(tmp_path):
    from training.common import CsvLog

    log = CsvLog(tmp_path / "log.csv", True)
    log.write({"step": 1, "loss": "0.5"})
    log.write({"step": 2, "loss": "0.4", "band": "0.1"})
    log.write({"step": 3, "loss": "0.3", "band": "0.2"})
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["step,loss,band", "1,0.5,", "2,0.4,0.1", "3,0.3,0.2"]


def test_stage1_mix_keeps_transcribed_and_samples_the_rest():
    from training.data.mix import mix

    base = [Clip("b.wav", "a sentence", "espeak", "test")]
    real = ([Clip(f"t{i}.wav", "word", "r1", "train") for i in range(3)]
            + [Clip(f"u{i}.wav", "", "r2", "train") for i in range(10)]
            + [Clip("held.wav", "word", "r3", "test")])
    out = mix(base, real, untranscribed=4, seed=1)
    assert out[:4] == base + real[:3]
    assert len(out) == 8 and all(not c.text for c in out[4:])
    assert all(c.split == "train" for c in out[1:])       # held-out real voices stay out
    assert out == mix(base, real, untranscribed=4, seed=1)


def test_manifest_sample_takes_seeded_train_then_held_out_clips(tmp_path):
    from training.data.sample import main, sample

    clips = ([Clip(f"t{i}.wav", "", "r1", "train") for i in range(20)]
             + [Clip(f"v{i}.wav", "", "r2", "val") for i in range(5)]
             + [Clip(f"x{i}.wav", "", "r3", "test") for i in range(5)])
    out = sample(clips, 6, 3, seed=0)
    assert [c.split for c in out[:6]] == ["train"] * 6
    assert all(c.split in ("val", "test") for c in out[6:]) and len(out) == 9
    assert len({c.path for c in out}) == 9
    assert out == sample(clips, 6, 3, seed=0) and out != sample(clips, 6, 3, seed=1)
    assert len(sample(clips, 100, 100)) == 30                 # no more than there are
    with pytest.raises(SystemExit):
        main(["--manifest", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")])


def test_loader_workers_give_the_same_batches_in_step_order(packed):
    from training.train import step_batches

    corpus, _ = packed
    src = PackedSegmentSource(corpus, "train", 4800, seed=5,
                              augment=Augmentation(noise_prob=0.5, reverb_prob=0.5))
    inline = list(step_batches(src, 7, 13, 3, rank=1, workers=0))
    ahead = list(step_batches(src, 7, 13, 3, rank=1, workers=2))
    assert len(inline) == len(ahead) == 6
    for (x, band), (y, band2) in zip(inline, ahead):
        assert torch.equal(x, y) and torch.equal(band, band2)
    # step order: each batch is that of its own step, not of a neighbour
    assert not torch.equal(inline[0][0], inline[1][0])
    assert torch.equal(inline[2][0], src.batch(9, 3, rank=1))


class _FailsInWorkers:
    """A source whose batches cannot be made in a worker process (as when shared memory runs
    out there): the loader must fall back to making them in the loop, losing no step."""

    def batch(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("no shared memory")
        return torch.full((batch_size, 4), float(step))


def test_loader_falls_back_to_the_loop_when_its_workers_fail(capsys):
    from training.train import step_batches

    got = [x[0, 0].item() for x, band in step_batches(_FailsInWorkers(), 3, 8, 2, 0, workers=2)]
    assert got == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert "batch workers failed at step 3" in capsys.readouterr().err
