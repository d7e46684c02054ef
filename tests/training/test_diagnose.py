"""training.diagnose_decoder and diagnose_level: the recombinations and gain sweeps are what
they claim."""

import json
import math

import numpy as np
import pytest

from training.diagnose_decoder import periodicity, swapped


def test_swaps_of_a_perfect_reconstruction_give_the_input_back():
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(12000)).astype(np.float32)
    out = swapped(wav, wav.copy())
    for key in ("reconstruction", "rec_magnitude_input_phase", "input_magnitude_rec_phase"):
        np.testing.assert_allclose(out[key][600:-600], wav[600:-600], atol=1e-5, err_msg=key)
    assert np.abs(out["input_magnitude_random_phase"] - wav).max() > 0.05


def test_each_swap_takes_magnitude_and_phase_from_the_side_it_names():
    t = np.arange(24000) / 24000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rec = (0.1 * np.sin(2 * np.pi * 440 * t + 1.0)).astype(np.float32)   # quieter, shifted
    out = swapped(wav, rec)
    mid = slice(2000, -2000)

    def rms(x):
        return float(np.sqrt(np.mean(x[mid] ** 2)))

    assert abs(rms(out["rec_magnitude_input_phase"]) - rms(rec)) < 0.01   # rec's level ...
    assert np.corrcoef(out["rec_magnitude_input_phase"][mid], wav[mid])[0, 1] > 0.99  # wav's phase
    assert abs(rms(out["input_magnitude_rec_phase"]) - rms(wav)) < 0.01
    assert np.corrcoef(out["input_magnitude_rec_phase"][mid], rec[mid])[0, 1] > 0.99


def test_band_envelope_swaps_take_the_envelope_and_the_fine_structure_from_the_named_side():
    from training.diagnose_decoder import third_octave_bands

    bands = third_octave_bands(24000)
    assert bands.shape == (257,) and bands[0] == 0 and np.all(np.diff(bands) >= 0)
    # band 10 starts at 100 * 2^(10/3) = 1008 Hz: bin 22 (1031 Hz) is in it, bin 21 (984) not
    assert bands[22] == 10 and bands[21] == 9
    t = np.arange(24000) / 24000
    # input: harmonics of 200 Hz; reconstruction: the same band energies at 1/4 of the level
    # (a flat gain) but noise for fine structure
    wav = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 20)).astype(np.float32)
    wav *= 0.3 / np.abs(wav).max()
    rng = np.random.default_rng(0)
    rec = (0.02 * rng.standard_normal(t.size)).astype(np.float32)
    out = swapped(wav, rec)
    mid = slice(2000, -2000)

    def rms(x):
        return float(np.sqrt(np.mean(x[mid] ** 2)))

    # the input's band energies on the noise: the input's level, not the noise's (7x lower;
    # the overlap-add of the rescaled frames loses ~1 dB)
    assert rms(out["rec_fine_input_band_envelope"]) == pytest.approx(rms(wav), rel=0.2)
    # ... but still noise: it does not follow the input's waveform
    assert abs(np.corrcoef(out["rec_fine_input_band_envelope"][mid], wav[mid])[0, 1]) < 0.5
    # the input's harmonics at the noise's band energies: the noise's level
    assert rms(out["input_fine_rec_band_envelope"]) == pytest.approx(rms(rec), rel=0.2)
    # a reconstruction that is the input at another level: its envelope swap is the input
    same = swapped(wav, 0.25 * wav)
    np.testing.assert_allclose(same["rec_fine_input_band_envelope"][600:-600],
                               wav[600:-600], atol=1e-4)


def test_envelope_sweep_restores_the_envelope_only_at_the_resolution_it_names():
    from training.diagnose_decoder import envelope_sweep

    rng = np.random.default_rng(1)
    wav = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    out = envelope_sweep(wav, 0.25 * wav, 24000)      # a flat gain: every layout undoes it
    assert len(out) == 15 and "third-octave, 5 ms" in out and "loss wide bands, 85 ms" in out
    for key, y in out.items():
        np.testing.assert_allclose(y[600:-600], wav[600:-600], atol=1e-4, err_msg=key)
    # input gated 40 ms on / 40 ms off, reconstruction steady: 5 ms frames bring the gaps
    # back, 85 ms frames (longer than a gap) cannot
    gate = ((np.arange(24000) // 960) % 2).astype(np.float32)
    steady = (0.05 * rng.standard_normal(24000)).astype(np.float32)
    out = envelope_sweep(wav * gate, steady, 24000)
    gaps = (gate == 0) & (np.arange(24000) % 960 > 240) & (np.arange(24000) % 960 < 720)
    gaps[:2000] = gaps[-2000:] = False

    def gap_rms(key):
        return float(np.sqrt(np.mean(out[key][gaps] ** 2)))

    assert gap_rms("third-octave, 5 ms") < 0.2 * gap_rms("third-octave, 85 ms")


def test_paired_comparison_of_eval_reports(tmp_path):
    from training.compare_evals import clips, paired

    def report(name, values):
        d = tmp_path / name
        d.mkdir()
        rows = [{"path": f"c{i}", "stoi": v, "pesq_wb": None} for i, v in enumerate(values)]
        (d / "report.json").write_text(json.dumps({"clips": rows}))
        return d

    base = clips(report("a", [0.5, 0.6, 0.7, 0.8]))
    other = clips(report("b", [0.51, 0.62, 0.71, 0.82]))
    mean, se, n = paired(base, other, "stoi")
    assert n == 4 and abs(mean - 0.015) < 1e-9 and 0 < se < 0.01
    assert paired(base, other, "pesq_wb") is None   # nothing scored


def test_level_diagnosis_finds_the_gain_that_restores_a_quiet_copy():
    """A reconstruction that is the input 6 dB down: every level-sensitive term is smallest
    at +6 dB, so the sweep reports +6 dB for them and for the total."""
    import torch

    from training.diagnose_level import best_gains
    from training.losses import LogMel

    x = 0.05 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(1))
    best = best_gains(x * 10 ** (-6 / 20), x, 24000,
                      {"mrstft": 1.0, "mel": 1.0, "complex": 0.5, "band": 4.0, "level": 1.0},
                      LogMel(24000))
    for term in ("mrstft", "mel", "complex", "band", "level", "total"):
        assert best[term] == 6.0, (term, best)


def test_eval_curve_groups_labelled_points_and_extrapolates(tmp_path, capsys):
    from training.plot_eval_curve import load_series, main, steps_to_reach

    def report(name, stoi):
        d = tmp_path / name
        d.mkdir()
        rec = {"stoi": {"mean": stoi}, "pesq_wb": {"mean": 1.1}, "level_db": {"median": -1.0}}
        (d / "report.json").write_text(json.dumps({"reconstruction": {"all": rec}}))
        return str(d)

    args = [f"a@2000={report('a2', 0.6)}", f"a@1000={report('a1', 0.5)}",
            f"b@1000={report('b1', 0.7)}"]
    series = load_series(args)
    assert list(series) == ["a", "b"]
    steps, m = series["a"]
    assert steps.tolist() == [1000, 2000] and m["stoi"].tolist() == [0.5, 0.6]
    # +0.1 per doubling from 0.5 at 1000: 0.85 after 3.5 doublings
    assert steps_to_reach(steps, m["stoi"], 0.85) == pytest.approx(1000 * 2 ** 3.5, rel=1e-6)
    assert steps_to_reach(np.array([1, 2]), np.array([0.6, 0.5]), 0.85) == math.inf
    assert main(args + ["--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args + ["--fit-series", "b", "--out", str(tmp_path / "d.png")]) == 0
    printed = capsys.readouterr().out
    assert "b: 1 point(s)" in printed and "a: " not in printed   # only b was fitted
    with pytest.raises(SystemExit):
        main(args + ["--fit-series", "nope", "--out", str(tmp_path / "e.png")])
    with pytest.raises(SystemExit, match="LABEL@"):
        load_series(["a@x=somewhere"])


def test_saturating_fit_finds_the_plateau_and_says_when_a_target_lies_above_it(tmp_path, capsys):
    from training.plot_eval_curve import fit_saturating, main, saturating_steps_to_reach

    steps = np.array([20_000, 30_000, 40_000, 50_000, 60_000, 70_000], dtype=float)
    stoi = 0.83 - 0.12 * (steps / 10_000) ** -0.8
    a, b, c = fit_saturating(steps, stoi)
    assert (a, b, c) == pytest.approx((0.83, 0.12, 0.8), rel=1e-3)
    assert saturating_steps_to_reach((a, b, c), 0.85) == math.inf   # above the plateau
    # 0.83 - 0.12 s^-0.8 = 0.80  <=>  s = 4^(1/0.8)
    assert saturating_steps_to_reach((a, b, c), 0.80) == pytest.approx(
        10_000 * 4 ** 1.25, rel=1e-2)
    with pytest.raises(ValueError, match="3 or more"):
        fit_saturating(steps[:2], stoi[:2])

    def report(step, value):
        d = tmp_path / f"s{step}"
        d.mkdir()
        rec = {"stoi": {"mean": value}, "pesq_wb": {"mean": 1.0 + value},
               "level_db": {"median": 0.0}}
        (d / "report.json").write_text(json.dumps({"reconstruction": {"all": rec}}))
        return f"{int(step)}={d}"

    # a point far off the curve before --fit-from must not enter the fit
    args = [report(10_000, 0.2)] + [report(s, v) for s, v in zip(steps, stoi)]
    assert main(args + ["--fit", "saturating", "--fit-from", "20000",
                        "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "saturating fit over 20000-70000" in out and "plateau 0.830" in out
    assert "STOI 0.85 at ~inf steps" in out
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_periodicity_counts_kept_pitch_and_shaped_noise():
    t = np.arange(24000) / 24000

    def harmonic(f0):
        return (0.1 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
                ).astype(np.float32)
    voice = harmonic(150.0)
    same = periodicity(voice, voice.copy(), 24000)
    assert same["frames"] == 100 and same["input_voiced"] > 90
    assert same["pitch_kept"] == same["input_voiced"] == same["reconstruction_voiced"]
    assert same["over_voiced"] == 0
    octave = periodicity(voice, harmonic(300.0), 24000)
    assert octave["reconstruction_voiced"] > 90 and octave["pitch_kept"] == 0
    noise = (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
    shaped = periodicity(voice, noise, 24000)
    assert shaped["reconstruction_voiced"] < 5 and shaped["pitch_kept"] < 5
    # a voice that goes on 20 ms past the input's (an edge) and buzzes alone later on
    half = voice.copy()
    half[12000:] = 0.0
    rec = half.copy()
    rec[12000:12480] = voice[12000:12480]     # 2 frames past the edge
    rec[19200:21600] = voice[19200:21600]     # 10 frames, far from any voiced input frame
    over = periodicity(half, rec, 24000)
    assert 10 <= over["over_voiced"] <= 14
    assert 1 <= over["over_voiced_near_edge"] <= 3


def test_band_harmonicity_tells_harmonics_from_noise_per_band():
    from training.diagnose_decoder import band_harmonicity

    t = np.arange(24000) / 24000

    def harmonic(f0, top_hz):
        return 0.1 * sum(np.sin(2 * np.pi * k * f0 * t) / k
                         for k in range(1, int(top_hz // f0) + 1))
    voice = harmonic(150.0, 11000).astype(np.float32)
    noise = 0.003 * np.random.default_rng(0).standard_normal(24000)
    low_only = (harmonic(150.0, 1000) + noise).astype(np.float32)   # harmonics below 1 kHz
    got = band_harmonicity({"input": voice, "noise": noise.astype(np.float32),
                            "low_only": low_only}, voice, 24000)
    assert list(got) == ["0-1 kHz", "1-2 kHz", "2-4 kHz", "4-8 kHz"]
    for band, per_signal in got.items():
        assert len(per_signal["input"]) > 90                     # one value per voiced frame
        assert np.mean(per_signal["input"]) > 25.0, band
        assert abs(np.mean(per_signal["noise"])) < 2.0, band
    assert np.mean(got["0-1 kHz"]["low_only"]) > 25.0
    for band in ("2-4 kHz", "4-8 kHz"):
        assert abs(np.mean(got[band]["low_only"])) < 2.0


def loud_harmonic_case(tiny_config):
    """A tiny decoder with a harmonic source whose gains are loud (20x a flat unit spectrum),
    a one-second 180 Hz voice, and random latents: (model, voice, z)."""
    from dataclasses import replace

    import torch

    from f3stream.model import F3Model

    cfg = replace(tiny_config, autoencoder=replace(tiny_config.autoencoder,
                                                   harmonic_source=True))
    torch.manual_seed(0)
    model = F3Model(cfg).eval()
    with torch.no_grad():
        model.decoder.harmonic_proj.bias[:model.decoder.harmonic_proj.out_features // 2] = 20.0
        model.decoder.out_proj.weight.zero_()      # magnitudes 1, phases 0 in every bin
        model.decoder.out_proj.bias.zero_()
    t = np.arange(24000) / 24000
    voice = (0.1 * sum(np.sin(2 * np.pi * k * 180 * t) / k for k in range(1, 8))
             ).astype(np.float32)
    z = np.random.default_rng(0).standard_normal((25, cfg.autoencoder.latent_dim)
                                                 ).astype(np.float32)
    return model, voice, z


def test_oracle_pitch_decode_follows_the_input_pitch(tiny_config):
    """With loud harmonic gains and a flat spectrum, latents decoded at the input's measured
    pitch come out periodic at that pitch (what the oracle-pitch diagnosis scores)."""
    import torch

    from training.diagnose_decoder import decode_with_input_pitch

    model, voice, z = loud_harmonic_case(tiny_config)
    out = decode_with_input_pitch(model, z, voice)
    assert out.shape == voice.shape
    counts = periodicity(voice, out, 24000)
    assert counts["pitch_kept"] > 0.9 * counts["input_voiced"]
    # the head's own pitch (150 Hz at initialisation) is scored against the input's 180 Hz
    from f3stream.harmonic import f0_logit_bias
    from training.diagnose_decoder import pitch_head_error
    err = pitch_head_error(model, z, voice)
    assert err.size > 90 and np.allclose(err, np.log2(180 / 150), atol=0.01)
    with torch.no_grad():
        model.decoder.pitch.out.bias.fill_(f0_logit_bias(180.0))
    assert pitch_head_error(model, z, voice).max() < 0.01


def test_voicing_gate_silences_the_excitation_only_where_the_input_is_unvoiced(tiny_config):
    """Loud harmonic gains over a flat unit spectrum: the output is mostly the excitation. Gated by an input voiced in its first half only, the output keeps its first
    half (as decoded without a gate) and falls silent in its second."""
    import torch

    from f3stream.alignment import align_decoded
    from training.diagnose_decoder import decode_with_voicing_gate

    model, voice, z = loud_harmonic_case(tiny_config)
    voice[12000:] = 0.0
    dec, ae = model.decoder, model.cfg.autoencoder
    with torch.no_grad():
        y, _, state = dec.step_with_f0(torch.from_numpy(z)[None], dec.init_state(1))
        plain = align_decoded(y, dec.tail(state), ae.decoder_delay)[0, :24000].numpy()
    gated = decode_with_voicing_gate(model, z, voice)
    widened = decode_with_voicing_gate(model, z, voice, widen=2)
    # the harmonics are 20x the decoder's own unit spectrum: the gate removes ~all of it
    first, second = slice(1000, 10000), slice(15000, 24000)
    np.testing.assert_allclose(gated[first], plain[first], rtol=0, atol=1e-5)
    assert np.abs(gated[second]).max() < 0.1 * np.abs(plain[second]).max()
    # widened by 2 frames, the gate ends 20 ms later: more of the output survives
    edge = slice(12000, 13000)
    assert np.abs(widened[edge]).sum() > 1.5 * np.abs(gated[edge]).sum()


def test_narrowband_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from f3stream.evaluation.plots import plot_narrowband

    t = np.arange(24000) / 24000
    voice = (0.1 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    noise = (0.01 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
    path = plot_narrowband(tmp_path / "nb.png", {"input": voice, "noise": noise}, 24000, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_harmonic_mix_probe_adds_harmonics_only_in_its_band(tiny_config):
    import torch

    from training.diagnose_decoder import band_harmonicity, decode_with_input_pitch
    from training.pitch import yin_pitch
    from training.probe_harmonic_mix import decode_with_harmonic_share, main

    model, voice, z = loud_harmonic_case(tiny_config)
    with torch.no_grad():                      # gains at zero: the decoder's own spectrum only
        model.decoder.harmonic_proj.bias.zero_()
        n_bins = model.decoder.out_proj.out_features // 2
        model.decoder.out_proj.bias[n_bins:] = torch.from_numpy(
            np.random.default_rng(1).uniform(-np.pi, np.pi, n_bins)).float()
    ae = model.cfg.autoencoder
    zt = torch.from_numpy(z)[None]
    f0, _ = yin_pitch(torch.from_numpy(voice)[None], ae.sample_rate, ae.stft_hop,
                      z.shape[0] * ae.stft_frames_per_latent)
    with torch.no_grad():
        same = decode_with_harmonic_share(model, zt, f0, (2000.0, 4000.0), None)
        none = decode_with_harmonic_share(model, zt, f0, (2000.0, 4000.0), 0.0)
        most = decode_with_harmonic_share(model, zt, f0, (2000.0, 4000.0), 0.9)
    np.testing.assert_allclose(same[0, :voice.size].numpy(),
                               decode_with_input_pitch(model, z, voice), atol=1e-5)
    got = band_harmonicity({"none": none[0, :voice.size].numpy(),
                            "most": most[0, :voice.size].numpy()}, voice, 24000)
    assert np.mean(got["2-4 kHz"]["most"]) > np.mean(got["2-4 kHz"]["none"]) + 6.0
    assert abs(np.mean(got["0-1 kHz"]["most"]) - np.mean(got["0-1 kHz"]["none"])) < 0.5
    with pytest.raises(SystemExit):
        main(["--band", "4000", "1000"])


def test_pulse_alignment_probe_moves_the_pulses_only_in_its_band():
    from training.diagnose_decoder import band_harmonicity
    from training.probe_pulse_alignment import VARIANTS, band_variants, loss_terms, main

    t = np.arange(24000) / 24000
    voice = (0.1 * sum(np.sin(2 * np.pi * k * 150.0 * t) / k for k in range(1, 70))
             ).astype(np.float32)
    got = band_variants(voice, 24000, (2000.0, 4000.0))
    assert tuple(got) == VARIANTS
    np.testing.assert_allclose(got["identity"], voice, atol=1e-4)

    def band(x):                                       # 2-4 kHz, by FFT over the whole clip
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(x.size, 1 / 24000)
        return np.fft.irfft(np.where((f >= 2100) & (f < 3900), spec, 0), x.size)[2400:-2400]

    def corr(a, b):
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
    ref = band(voice)
    assert corr(band(got["full_period_delay"]), ref) > 0.9      # the pulses back in place
    assert abs(corr(band(got["half_period_delay"]), ref)) < 0.3  # odd harmonics inverted
    harm = band_harmonicity(got, voice, 24000)
    for name in ("half_period_delay", "full_period_delay", "oscillator_comb"):
        assert abs(np.mean(harm["2-4 kHz"][name]) - np.mean(harm["2-4 kHz"]["identity"])) < 1.5
    assert np.mean(harm["2-4 kHz"]["identity"]) > 20.0
    assert np.mean(harm["2-4 kHz"]["band_noise"]) < 3.0
    assert (np.mean(harm["2-4 kHz"]["band_noise"]) + 1.0 < np.mean(harm["2-4 kHz"]["random_phase"])
            < np.mean(harm["2-4 kHz"]["identity"]) - 10.0)
    for name in VARIANTS:                                 # the other bands untouched
        assert abs(np.mean(harm["0-1 kHz"][name]) - np.mean(harm["0-1 kHz"]["identity"])) < 0.5
    same, half = (loss_terms(got[k], voice, 24000, per_resolution=True)
                  for k in ("identity", "half_period_delay"))
    assert same["total"] < 1e-3
    # on a voice of one exact pitch the oscillator's comb at that pitch, at the input's band
    # energies, is far closer than noise at those energies
    comb, noise = (loss_terms(got[k], voice, 24000, per_resolution=True)
                   for k in ("oscillator_comb", "band_noise"))
    assert comb["mrstft 2048"] < 0.5 * noise["mrstft 2048"]
    # a stationary voice: its magnitudes at long windows survive the delay, not its pulses
    assert half["mrstft 128"] > 3 * half["mrstft 2048"]
    with pytest.raises(SystemExit):
        main(["--band", "4000", "1000"])
