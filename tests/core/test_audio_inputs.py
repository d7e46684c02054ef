"""Bad and unusual audio inputs to ``encode``, ``tokenize``, ``encode_file`` and encoder
sessions: every rejection is an AudioInputError (a ValueError) whose message says what is wrong
and what to do; every accepted variant gives exactly the canonical result (``ref_latents``, the
latents of the ``wav`` fixture in ``conftest.py``)."""

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers import SR, noise

import f3stream
from f3stream import AudioInputError


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
