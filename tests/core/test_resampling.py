"""One resampling path (libsoxr): f3stream.audio.resample, the block-wise file reader and the
streaming f3stream.resampling.StreamResampler give the same samples, however the stream is cut,
and the latency the server reports is what an impulse shows."""

import numpy as np
import pytest
import soundfile as sf
from helpers import SR, noise

from f3stream import AudioInputError
from f3stream.audio import resample
from f3stream.audiofile import AudioFileReader
from f3stream.resampling import StreamResampler, stream_latency_ms


def tone_noise(n: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    t = np.arange(n)
    return (0.3 * np.sin(0.05 * t) + 0.1 * rng.randn(n)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_resample_equals_the_block_reader(tmp_path, rate):
    x = tone_noise(rate + 123, rate)
    path = tmp_path / "x.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    with AudioFileReader(path, block_frames=5000) as f:
        blocks = np.concatenate(list(f.blocks(24000)))
    np.testing.assert_array_equal(resample(x, rate, 24000), blocks)


@pytest.mark.parametrize("rates", [(8000, 24000), (24000, 8000), (22050, 24000), (24000, 44100)])
def test_stream_resampler_any_chunking_equals_one_shot(rates):
    a, b = rates
    x = tone_noise(2 * a, 1)
    rng = np.random.RandomState(2)
    r = StreamResampler(a, b)
    for _ in range(2):  # flush leaves it fresh for the next stream
        cuts = np.sort(rng.randint(0, x.size, size=12))
        y = np.concatenate([r.process(c) for c in np.split(x, cuts)] + [r.flush()])
        np.testing.assert_array_equal(y, resample(x, a, b))


def test_reset_drops_the_stream():
    r = StreamResampler(16000, 24000)
    r.process(tone_noise(500, 3))
    r.reset()
    x = tone_noise(4000, 4)
    np.testing.assert_array_equal(np.concatenate([r.process(x), r.flush()]),
                                  resample(x, 16000, 24000))


def test_same_rate_passes_through():
    x = tone_noise(100, 5)
    r = StreamResampler(24000, 24000)
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().size == 0 and stream_latency_ms(24000, 24000) == 0.0


@pytest.mark.parametrize("rates", [(8000, 24000), (48000, 24000), (24000, 44100)])
def test_latency_is_when_an_impulse_comes_out(rates):
    """Fed sample by sample, an impulse's output sample is returned only after
    stream_latency_ms of further input (and not one sample earlier)."""
    a, b = rates
    ms = stream_latency_ms(a, b)
    assert 1.0 < ms < 60.0
    k = round(ms * a / 1000)  # input samples after the impulse
    x = np.zeros(a + 1 + k, np.float32)
    x[a] = 1.0  # impulse after 1 s
    for extra, emitted in ((k, True), (k - 1, False)):
        r = StreamResampler(a, b)
        got = r.process(x[:a + 1 + extra]).size
        assert (got > b) == emitted


# -- resample ------------------------------------------------------------------------------------
def test_resample_keeps_frequency_and_length_ratio():
    sr_in, sr_out, f0 = 16000, 24000, 1000.0
    t = np.arange(sr_in) / sr_in  # 1 s
    x = (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32
    assert y.size == sr_out  # 1.5x as many samples
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(y.size, 1 / sr_out)
    assert freqs[np.argmax(spectrum)] == pytest.approx(f0, abs=1.0)
    # amplitude kept (away from the filter's edge effects)
    mid = y[2000:-2000]
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_44k_to_24k_length():
    y = resample(np.zeros(44100 * 2, np.float32), 44100, 24000)
    assert y.size == 48000


def test_resample_same_rate_is_identity():
    x = noise(0.1, seed=10)
    np.testing.assert_array_equal(resample(x, SR, SR), x)


@pytest.mark.parametrize("rates", [(0, 24000), (16000, -1)])
def test_resample_rejects_non_positive_rates(rates):
    with pytest.raises(AudioInputError, match="must be positive"):
        resample(np.zeros(10, np.float32), *rates)
