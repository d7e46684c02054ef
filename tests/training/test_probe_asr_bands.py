"""training.probe_asr_bands: which band of a reconstruction moves the recognizer."""

import numpy as np

from training.probe_asr_bands import band_hybrids, band_split, probe

SR = 24000


def _tones(freqs, seconds=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.1 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def test_bands_sum_back_and_hold_their_own_tones():
    x = _tones([300, 700, 1500, 3000, 6000])
    edges = (0, 500, 1000, 2000, 4000, 12000)
    bands = band_split(x, SR, edges)
    assert len(bands) == 5
    np.testing.assert_allclose(sum(bands), x, atol=1e-6)
    for b, f in zip(bands, [300, 700, 1500, 3000, 6000]):
        np.testing.assert_allclose(b, _tones([f]), atol=1e-5)


def test_hybrids_swap_only_their_band():
    wav, rec = _tones([300, 700]), _tones([300, 900])
    hy = band_hybrids(wav, rec, SR, (0, 500, 1000))
    np.testing.assert_allclose(hy["500-1000 Hz"]["reconstruction_band_in_original"], rec, atol=1e-5)
    np.testing.assert_allclose(hy["500-1000 Hz"]["original_band_in_reconstruction"], wav, atol=1e-5)
    np.testing.assert_allclose(hy["0-500 Hz"]["reconstruction_band_in_original"], wav, atol=1e-5)


def test_probe_finds_the_band_that_changes_the_words():
    wav, rec = _tones([300, 700]), _tones([300, 900])  # the "codec" moved one partial

    def transcribe(y, sr):  # hears "front right" when the 700 Hz partial is there
        spec = np.abs(np.fft.rfft(y))
        freq = np.fft.rfftfreq(y.size, 1 / sr)
        return "front right" if spec[np.argmin(abs(freq - 700))] > 100 else "fun to play it"

    out = probe([{"wav": wav, "rec": rec, "original": "front right", "text": "front right"}],
                SR, transcribe, (0, 500, 1000, 4000))
    o = out["wer_vs_original"]
    assert o["reconstruction"]["wer"] == 2.0
    assert o["reconstruction_band_in_original 500-1000 Hz"]["wer"] == 2.0
    assert o["reconstruction_band_in_original 0-500 Hz"]["wer"] == 0.0
    assert o["original_band_in_reconstruction 500-1000 Hz"]["wer"] == 0.0
    assert o["original_band_in_reconstruction 1000-4000 Hz"]["wer"] == 2.0
    assert out["wer_vs_text"]["original"]["wer"] == 0.0
    assert out["clips"][0]["reconstruction"] == "fun to play it"
