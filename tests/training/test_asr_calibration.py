"""training.asr_calibration: the floor a near-transparent change puts under a recognizer's WER."""

import numpy as np

from training.asr_calibration import add_noise, calibrate, opus_roundtrip


def _tone(seconds=0.5, sr=24000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_changes_keep_length_and_are_small():
    x = _tone()
    for y in (opus_roundtrip(x, 24000), add_noise(x, 40.0, 0)):
        assert y.shape == x.shape and y.dtype == np.float32
        err = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2))
        assert err < 0.3
    noise = add_noise(x, 40.0, 0) - x
    assert abs(20 * np.log10(np.sqrt(np.mean(x ** 2)) / np.sqrt(np.mean(noise ** 2))) - 40) < 0.5


def test_calibrate_pools_edits_per_change():
    x = _tone()

    def transcribe(wav, sr):  # hears "a b" in the exact tone, "a c" in anything changed
        return "a b" if np.array_equal(wav, x) else "a c"

    out = calibrate([(x, "a b"), (x, "")], 24000, transcribe)
    assert out["unchanged"] == {"wer_vs_original": 0.0, "n": 1, "skipped_empty_reference": 1}
    assert out["opus"]["wer_vs_original"] == 0.5
    assert out["noise_40db"]["wer_vs_original"] == 0.5
