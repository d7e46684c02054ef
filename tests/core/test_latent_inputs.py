"""Bad and unusual latents given to ``decode``, ``represent`` and decoder sessions: every
rejection is an AudioInputError whose message says what is wrong; every accepted variant gives
exactly the result of the float32 array."""

import numpy as np
import pytest
import torch

from f3stream import AudioInputError


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
