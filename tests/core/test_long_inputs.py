"""Long input: offline ``encode``/``tokenize``, ``decode`` and ``represent`` work in blocks of
``BLOCK_FRAMES`` (bounded memory) with the same result, with or without a progress bar."""

import numpy as np
from helpers import HOP, SR, noise

import f3stream.tokenizer


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
