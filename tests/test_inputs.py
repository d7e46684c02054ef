"""Bad and unusual inputs: every rejection is an AudioInputError (a ValueError) whose message says
what is wrong and what to do; every accepted variant gives exactly the canonical result."""

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import f3stream
import f3stream.tokenizer
from f3stream import AudioInputError, SessionClosedError
from f3stream.audio import resample

SR = 24000
HOP = 960


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)


@pytest.fixture(scope="module")
def wav():
    return noise(0.5, seed=1)  # 12000 samples = 12.5 frames


@pytest.fixture(scope="module")
def ref_latents(tiny_tokenizer, wav):
    return tiny_tokenizer.encode(wav)


def test_audio_input_error_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)
    assert issubclass(AudioInputError, f3stream.F3StreamError)


# -- sample rate ---------------------------------------------------------------------------------
def test_wrong_sample_rate_is_rejected_with_resampling_advice(tiny_tokenizer, wav):
    with pytest.raises(AudioInputError) as exc:
        tiny_tokenizer.encode(wav, sample_rate=16000)
    msg = str(exc.value)
    assert "16000" in msg and "24000" in msg
    assert "resample" in msg
    assert "encode_file" in msg
    with pytest.raises(AudioInputError, match="16000"):
        tiny_tokenizer.tokenize(wav, sample_rate=16000)


def test_matching_sample_rate_is_accepted(tiny_tokenizer, wav, ref_latents):
    np.testing.assert_array_equal(tiny_tokenizer.encode(wav, sample_rate=SR), ref_latents)


def test_encode_file_resamples_16k_mono(tiny_tokenizer, tmp_path):
    sr = 16000
    x = noise(1.3, seed=2, sr=sr)  # 20800 samples -> 31200 at 24 kHz -> 32.5 -> 33 frames
    path = tmp_path / "mono16k.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    out = tiny_tokenizer.encode_file(path)
    assert out.start_frame == 0
    assert out.latents.shape == (33, tiny_tokenizer.latent_dim)
    assert out.representations.shape == (33, tiny_tokenizer.representation_dim)
    expected = tiny_tokenizer.encode(soxr.resample(x, sr, SR))  # the files' one resampler
    np.testing.assert_array_equal(out.latents, expected)


def test_encode_file_mixes_down_and_resamples_44k_stereo(tiny_tokenizer, tmp_path):
    sr = 44100
    left, right = noise(0.7, seed=3, sr=sr), noise(0.7, seed=4, sr=sr)
    # 30870 samples -> exactly 16800 at 24 kHz -> 17.5 -> 18 frames
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    out = tiny_tokenizer.encode_file(path)
    assert out.latents.shape == (18, tiny_tokenizer.latent_dim)
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = tiny_tokenizer.encode(soxr.resample(data.mean(axis=1), sr, SR))
    np.testing.assert_array_equal(out.latents, expected)


def test_encode_file_missing_file(tiny_tokenizer, tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        tiny_tokenizer.encode_file(tmp_path / "nope.wav")


def test_encode_file_unreadable_file(tiny_tokenizer, tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioInputError, match="cannot read audio file"):
        tiny_tokenizer.encode_file(path)


# -- channels / shape ----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["n2", "2n", "n3"])
def test_multichannel_is_rejected_with_mixdown_advice(tiny_tokenizer, wav, layout):
    x = {"n2": np.stack([wav, wav], axis=1), "2n": np.stack([wav, wav]),
         "n3": np.stack([wav, wav, wav], axis=1)}[layout]
    with pytest.raises(AudioInputError) as exc:
        tiny_tokenizer.encode(x)
    msg = str(exc.value)
    assert "mono" in msg
    assert "mix it down" in msg
    assert str(tuple(x.shape)) in msg


def test_multichannel_chunk_rejected_by_session(tiny_tokenizer, wav):
    s = tiny_tokenizer.session()
    with pytest.raises(AudioInputError, match="mono"):
        s.push(np.stack([wav, wav], axis=1))
    assert s.samples_received == 0 and s.frames_emitted == 0


def test_three_dimensional_audio_is_rejected(tiny_tokenizer, wav):
    with pytest.raises(AudioInputError, match=r"mono \(1-D\).*\(1, 12000, 1\)"):
        tiny_tokenizer.encode(wav.reshape(1, -1, 1))


@pytest.mark.parametrize("shape", [(-1, 1), (1, -1)])
def test_single_channel_2d_is_accepted(tiny_tokenizer, wav, ref_latents, shape):
    np.testing.assert_array_equal(tiny_tokenizer.encode(wav.reshape(shape)), ref_latents)


# -- non-finite and empty ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_samples_are_rejected_with_count_and_index(tiny_tokenizer, wav, bad, dtype):
    x = wav.astype(dtype)
    x[123] = bad
    x[4567] = bad
    with pytest.raises(AudioInputError) as exc:
        tiny_tokenizer.encode(x)
    msg = str(exc.value)
    assert "2 NaN/Inf" in msg
    assert "index 123" in msg
    assert "clean the signal" in msg


def test_rejected_chunk_leaves_session_untouched(tiny_tokenizer, wav):
    bad = wav[:500].copy()
    bad[7] = np.nan
    s, ref = tiny_tokenizer.session(), tiny_tokenizer.session()
    s.push(wav[:3000])
    ref.push(wav[:3000])
    with pytest.raises(AudioInputError, match="index 7"):
        s.push(bad)
    assert s.samples_received == 3000
    a, b = s.push(wav[3000:]), ref.push(wav[3000:])
    assert a.start_frame == b.start_frame
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(s.flush().latents, ref.flush().latents)


def test_empty_audio_is_rejected_by_encode(tiny_tokenizer):
    for x in (np.zeros(0, np.float32), np.zeros(0, np.int16), np.zeros((0, 1), np.float32), []):
        with pytest.raises(AudioInputError, match="empty"):
            tiny_tokenizer.encode(x)


def test_empty_chunk_in_session_gives_zero_frames(tiny_tokenizer, wav):
    s = tiny_tokenizer.session()
    out = s.push(np.zeros(0, np.float32))
    assert out.n_frames == 0 and out.start_frame == 0
    assert out.latents.shape == (0, tiny_tokenizer.latent_dim)
    assert out.representations.shape == (0, tiny_tokenizer.representation_dim)
    # and it changes nothing about what follows
    got = [s.push(wav), s.push(np.zeros(0, np.int16)), s.flush()]
    assert [g.n_frames for g in got] == [12, 0, 1]
    assert got[1].start_frame == 12
    ref = tiny_tokenizer.session()
    np.testing.assert_array_equal(got[0].latents, ref.push(wav).latents)
    np.testing.assert_array_equal(got[2].latents, ref.flush().latents)


def test_flush_of_a_session_that_got_nothing_gives_zero_frames(tiny_tokenizer):
    out = tiny_tokenizer.session().flush()
    assert out.n_frames == 0 and out.latents.shape == (0, tiny_tokenizer.latent_dim)


# -- dtypes and containers -----------------------------------------------------------------------
def test_int16_equals_float_divided_by_32768_exactly(tiny_tokenizer):
    rng = np.random.default_rng(5)
    pcm = rng.integers(-32768, 32768, size=9000, dtype=np.int16)
    as_float = pcm.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(tiny_tokenizer.encode(pcm), tiny_tokenizer.encode(as_float))
    s = tiny_tokenizer.session()
    np.testing.assert_array_equal(s.push(pcm).latents,
                                  tiny_tokenizer.session().push(as_float).latents)


def test_float64_is_accepted(tiny_tokenizer, wav, ref_latents):
    np.testing.assert_array_equal(tiny_tokenizer.encode(wav.astype(np.float64)), ref_latents)


def test_python_list_is_accepted(tiny_tokenizer, wav, ref_latents):
    np.testing.assert_array_equal(tiny_tokenizer.encode(wav.tolist()), ref_latents)


def test_torch_tensor_is_accepted(tiny_tokenizer, wav, ref_latents):
    t = torch.from_numpy(wav.copy()).requires_grad_(True)
    np.testing.assert_array_equal(tiny_tokenizer.encode(t), ref_latents)


def test_big_endian_arrays_are_accepted(tiny_tokenizer, wav, ref_latents):
    # e.g. np.frombuffer(..., dtype=">f4") on data from a network or a big-endian file
    np.testing.assert_array_equal(tiny_tokenizer.encode(wav.astype(">f4")), ref_latents)
    pcm = (wav * 32767).astype(np.int16)
    np.testing.assert_array_equal(tiny_tokenizer.encode(pcm.astype(">i2")),
                                  tiny_tokenizer.encode(pcm))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.complex64, np.float16])
def test_unsupported_dtypes_are_rejected_with_advice(tiny_tokenizer, dtype):
    x = np.zeros(2000, dtype=dtype)
    with pytest.raises(AudioInputError) as exc:
        tiny_tokenizer.encode(x)
    msg = str(exc.value)
    assert np.dtype(dtype).name in msg
    assert "int16" in msg and "float32" in msg  # what to convert to
    with pytest.raises(AudioInputError, match=np.dtype(dtype).name):
        tiny_tokenizer.session().push(x)


def test_int32_message_explains_the_conversion(tiny_tokenizer):
    with pytest.raises(AudioInputError, match=r"int32 PCM with x / 2\*\*31"):
        tiny_tokenizer.encode(np.zeros(100, np.int32))


@pytest.mark.parametrize("obj", ["some/file.wav", None, 0.5, {"audio": [0.0]}])
def test_non_array_objects_are_rejected(tiny_tokenizer, obj):
    with pytest.raises(AudioInputError, match=r"must be a numpy array or torch tensor, got "
                                              + type(obj).__name__):
        tiny_tokenizer.encode(obj)


@pytest.mark.parametrize("obj", [["a", "b"], [[0.0, 0.1], [0.2]]])
def test_unconvertible_lists_are_rejected(tiny_tokenizer, obj):
    with pytest.raises(AudioInputError, match="cannot convert the list to a float32 array"):
        tiny_tokenizer.encode(obj)


def test_bfloat16_tensor_is_rejected_with_advice(tiny_tokenizer, wav):
    with pytest.raises(AudioInputError, match=r"bfloat16.*\.float\(\)"):
        tiny_tokenizer.encode(torch.from_numpy(wav).bfloat16())
    with pytest.raises(AudioInputError, match="bfloat16"):
        tiny_tokenizer.decode(torch.zeros(3, 64, dtype=torch.bfloat16))


# -- latents -------------------------------------------------------------------------------------
def _decode(tok, z):
    return tok.decode(z)


def _represent(tok, z):
    return tok.represent(z)


def _push(tok, z):
    return tok.decoder_session().push(z)


LATENT_CONSUMERS = pytest.mark.parametrize("consume", [_decode, _represent, _push],
                                           ids=["decode", "represent", "DecoderSession.push"])


@LATENT_CONSUMERS
@pytest.mark.parametrize("shape", [(5, 63), (5, 65), (64,), (5, 64, 1), (64, 5)])
def test_latents_of_wrong_shape_are_rejected(tiny_tokenizer, consume, shape):
    with pytest.raises(AudioInputError) as exc:
        consume(tiny_tokenizer, np.zeros(shape, np.float32))
    msg = str(exc.value)
    assert "[frames, 64]" in msg
    assert str(tuple(shape)) in msg


@LATENT_CONSUMERS
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_latents_are_rejected(tiny_tokenizer, consume, bad):
    z = np.zeros((5, 64), np.float32)
    z[3, 10] = bad
    with pytest.raises(AudioInputError, match="NaN or Inf"):
        consume(tiny_tokenizer, z)


@LATENT_CONSUMERS
@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.bool_, np.complex64])
def test_non_float_latents_are_rejected(tiny_tokenizer, consume, dtype):
    with pytest.raises(AudioInputError) as exc:
        consume(tiny_tokenizer, np.zeros((5, 64), dtype))
    msg = str(exc.value)
    assert "must be float" in msg and np.dtype(dtype).name in msg


@pytest.mark.parametrize("consume", [_decode, _represent], ids=["decode", "represent"])
def test_empty_latents_are_rejected_offline(tiny_tokenizer, consume):
    with pytest.raises(AudioInputError, match=r"empty \(0 frames\)"):
        consume(tiny_tokenizer, np.zeros((0, 64), np.float32))


def test_empty_latents_are_fine_in_a_decoder_session(tiny_tokenizer, ref_latents):
    s = tiny_tokenizer.decoder_session()
    out = s.push(np.zeros((0, 64), np.float32))
    assert out.shape == (0,) and out.dtype == np.float32
    assert s.frames_received == 0
    # an empty push in the middle changes nothing
    y = np.concatenate([s.push(ref_latents[:4]), s.push(np.zeros((0, 64), np.float32)),
                        s.push(ref_latents[4:]), s.flush()])
    ref = tiny_tokenizer.decoder_session()
    y_ref = np.concatenate([ref.push(ref_latents[:4]), ref.push(ref_latents[4:]), ref.flush()])
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ">f4"])
def test_other_float_latents_are_accepted(tiny_tokenizer, ref_latents, dtype):
    z = ref_latents.astype(dtype)
    expected = tiny_tokenizer.decode(z.astype(np.float32))
    np.testing.assert_array_equal(tiny_tokenizer.decode(z), expected)
    assert tiny_tokenizer.represent(z).shape == (z.shape[0], tiny_tokenizer.representation_dim)


def test_latents_as_list_and_tensor_are_accepted(tiny_tokenizer, ref_latents):
    ref = tiny_tokenizer.represent(ref_latents)
    np.testing.assert_array_equal(tiny_tokenizer.represent(ref_latents.tolist()), ref)
    np.testing.assert_array_equal(tiny_tokenizer.represent(torch.from_numpy(ref_latents)), ref)


def test_latents_as_string_are_rejected(tiny_tokenizer):
    with pytest.raises(AudioInputError, match="latents must be a numpy array"):
        tiny_tokenizer.decode("latents.npy")


# -- session lifecycle ---------------------------------------------------------------------------
def test_push_after_flush_raises_until_reset(tiny_tokenizer, wav):
    s = tiny_tokenizer.session()
    s.push(wav[:5000])
    s.flush()
    assert s.closed
    with pytest.raises(SessionClosedError, match=r"reset\(\)"):
        s.push(wav[:100])
    with pytest.raises(SessionClosedError, match=r"reset\(\)"):
        s.push(np.zeros(0, np.float32))  # even an empty chunk
    assert issubclass(SessionClosedError, RuntimeError)


def test_flush_twice_raises(tiny_tokenizer, wav):
    s = tiny_tokenizer.session()
    assert s.push(wav[:1000]).n_frames == 1  # 1000 samples = 1 frame + 40 pending
    last = s.flush()  # the 40 pending samples, zero-padded
    assert last.n_frames == 1 and last.start_frame == 1
    with pytest.raises(SessionClosedError, match="already flushed"):
        s.flush()


def test_reset_reopens_and_matches_a_fresh_session(tiny_tokenizer, wav):
    sizes = [700, 2000, 5300]
    s = tiny_tokenizer.session()
    for n in sizes:
        s.push(noise(n / SR, seed=n))  # some other stream first
    s.flush()
    s.reset()
    assert not s.closed and s.frames_emitted == 0 and s.pending_samples == 0

    def run(session):
        outs, pos = [], 0
        for n in sizes:
            outs.append(session.push(wav[pos:pos + n]))
            pos += n
        outs.append(session.push(wav[pos:]))
        outs.append(session.flush())
        return outs

    got, ref = run(s), run(tiny_tokenizer.session())
    assert got[0].start_frame == 0
    assert [g.start_frame for g in got] == [r.start_frame for r in ref]
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g.latents, r.latents)
        np.testing.assert_array_equal(g.representations, r.representations)
    assert sum(g.n_frames for g in got) == 13


def test_reset_mid_stream_restarts_frame_numbering(tiny_tokenizer, wav):
    s = tiny_tokenizer.session()
    assert s.push(wav[:5000]).n_frames == 5
    s.reset()
    out = s.push(wav[:2000])
    assert out.start_frame == 0 and out.n_frames == 2
    np.testing.assert_array_equal(out.latents, tiny_tokenizer.encode(wav[:1920]))


def test_decoder_session_lifecycle(tiny_tokenizer, ref_latents):
    s = tiny_tokenizer.decoder_session()
    s.push(ref_latents[:3])
    s.flush()
    with pytest.raises(SessionClosedError, match=r"reset\(\)"):
        s.push(ref_latents[:1])
    with pytest.raises(SessionClosedError, match="already flushed"):
        s.flush()
    s.reset()
    y = np.concatenate([s.push(ref_latents[:5]), s.push(ref_latents[5:]), s.flush()])
    fresh = tiny_tokenizer.decoder_session()
    y_fresh = np.concatenate([fresh.push(ref_latents[:5]), fresh.push(ref_latents[5:]),
                              fresh.flush()])
    np.testing.assert_array_equal(y, y_fresh)
    assert y.shape == (ref_latents.shape[0] * HOP,)


# -- long input ----------------------------------------------------------------------------------
def _count_calls(monkeypatch, obj, name):
    sizes = []
    original = getattr(obj, name)

    def wrapper(x, state):
        sizes.append(x.shape[1])
        return original(x, state)

    monkeypatch.setattr(obj, name, wrapper)
    return sizes


def test_encode_works_in_blocks_with_the_same_result(tiny_tokenizer, monkeypatch):
    x = noise(100 * HOP / SR, seed=6)  # 100 frames
    default = tiny_tokenizer.tokenize(x)
    monkeypatch.setattr(f3stream.tokenizer, "BLOCK_FRAMES", 16)
    sizes = _count_calls(monkeypatch, tiny_tokenizer.model, "encode_step")
    blocked = tiny_tokenizer.tokenize(x)
    assert len(sizes) == 7  # ceil(100 / 16): memory stays bounded by the block size
    assert max(sizes) == 16 * HOP and sum(sizes) == x.size
    # Different block sizes change only the float rounding of the batched matmuls.
    np.testing.assert_allclose(blocked.latents, default.latents, rtol=0, atol=1e-5)
    np.testing.assert_allclose(blocked.representations, default.representations, rtol=0,
                               atol=1e-5)
    assert blocked.latents.shape == default.latents.shape == (100, 64)


def test_decode_and_represent_work_in_blocks_with_the_same_result(tiny_tokenizer, monkeypatch):
    z = tiny_tokenizer.encode(noise(60 * HOP / SR, seed=7))
    y, r = tiny_tokenizer.decode(z), tiny_tokenizer.represent(z)
    monkeypatch.setattr(f3stream.tokenizer, "BLOCK_FRAMES", 8)
    sizes = _count_calls(monkeypatch, tiny_tokenizer.model, "decode_step")
    y_blocked = tiny_tokenizer.decode(z)
    assert sizes == [8] * 7 + [4]
    np.testing.assert_allclose(y_blocked, y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(tiny_tokenizer.represent(z), r, rtol=0, atol=1e-5)
    assert y_blocked.shape == (60 * HOP,)


def test_progress_bar_does_not_change_the_result(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(f3stream.tokenizer, "BLOCK_FRAMES", 4)
    x = noise(10 * HOP / SR, seed=8)
    np.testing.assert_array_equal(tiny_tokenizer.encode(x, progress=True),
                                  tiny_tokenizer.encode(x, progress=False))


def test_three_minutes_of_noise(tiny_tokenizer):
    x = noise(180.0, seed=9)
    z = tiny_tokenizer.encode(x)
    assert z.shape == (180 * 25, tiny_tokenizer.latent_dim)
    assert z.dtype == np.float32
    assert np.isfinite(z).all()


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
