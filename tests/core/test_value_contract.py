"""The value contract at the library boundary (f3stream/audio.py), which the Python API, the
CLI and the server share: float audio in [-1, 1] (clipped with a warning up to ±4, rejected
beyond), latents within ±100, and never a non-finite number out, on every engine."""

import warnings

import numpy as np
import pytest

from f3stream import AudioInputError, Tokenizer

SR = 24000


@pytest.fixture(scope="module")
def wav():
    return (0.1 * np.random.default_rng(1).standard_normal(12000)).astype(np.float32)


# -- audio --------------------------------------------------------------------------------------
@pytest.mark.parametrize("peak", [4.01, 1e6, 3e38])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_audio_far_beyond_full_scale_is_rejected(tiny_tokenizer, wav, peak, dtype):
    """3e38 is finite, so it passed the NaN check, and every frame it gave was NaN/Inf."""
    loud = (wav.astype(np.float64) / np.abs(wav).max() * peak).astype(dtype)
    for consume in (tiny_tokenizer.encode, lambda x: tiny_tokenizer.session().push(x)):
        with pytest.raises(AudioInputError, match=r"peaks at .* must be in \[-1, 1\]"):
            consume(loud)


@pytest.mark.parametrize("peak", [1.0001, 2.5, 4.0])
def test_slightly_loud_float_audio_is_clipped_with_a_warning(tiny_tokenizer, wav, peak):
    """Up to ±4 (e.g. the overshoot of resampling full-scale audio) is clipped to [-1, 1],
    not silently: the same frames as the clipped audio, and a warning."""
    loud = wav / np.abs(wav).max() * np.float32(peak)
    with pytest.warns(UserWarning, match=r"clipped to \[-1, 1\]") as caught:
        got = tiny_tokenizer.encode(loud)
    assert f"peaks at {np.abs(loud).max():.3g}," in str(caught[0].message)  # says how loud
    np.testing.assert_array_equal(got, tiny_tokenizer.encode(np.clip(loud, -1, 1)))
    assert np.abs(loud).max() > 1  # the caller's array is not changed


def test_full_scale_audio_passes_without_a_warning(tiny_tokenizer, wav):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_tokenizer.encode(wav / np.abs(wav).max())
        tiny_tokenizer.encode(np.full(960, -32768, np.int16))


# -- latents ------------------------------------------------------------------------------------
LATENT_CONSUMERS = pytest.mark.parametrize(
    "consume", [lambda tok, z: tok.decode(z), lambda tok, z: tok.represent(z),
                lambda tok, z: tok.decoder_session().push(z)],
    ids=["decode", "represent", "DecoderSession.push"])


@LATENT_CONSUMERS
@pytest.mark.parametrize("bad", [-100.01, 1e6, 3e38])
def test_latents_beyond_the_bound_are_rejected(tiny_tokenizer, consume, bad):
    """Latents are O(1-10); 3e38 decoded to non-finite audio (a wav of constant -1.0)."""
    z = np.zeros((5, 64), np.float32)
    z[3, 10] = bad
    with pytest.raises(AudioInputError, match=r"beyond ±100"):
        consume(tiny_tokenizer, z)


@LATENT_CONSUMERS
def test_latents_at_the_bound_are_accepted(tiny_tokenizer, consume):
    z = np.where(np.random.default_rng(0).random((5, 64)) < 0.5, -100, 100).astype(np.float32)
    assert np.isfinite(consume(tiny_tokenizer, z)).all()


def test_decode_cli_refuses_absurd_latents_and_writes_nothing(tiny_tokenizer, tmp_path, capsys):
    """`f3stream decode` of latents of 3e38 wrote a wav of constant -1.0."""
    from f3stream.cli import main
    from f3stream.frames import EncodedFrames
    from f3stream.tokens_io import save_tokens

    ckpt = tiny_tokenizer.save(tmp_path / "tiny")
    tokens, out = tmp_path / "huge.npz", tmp_path / "huge.wav"
    save_tokens(tokens, EncodedFrames(0, np.full((5, 64), 3e38, np.float32), None), SR, 25)
    assert main(["decode", str(tokens), "--out", str(out), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("f3stream: error: latents reach 3e+38") and err.count("\n") == 1
    assert not out.exists()


# -- outputs, on every engine --------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tiny_tokenizer, tmp_path_factory):
    """The tiny model on the three engines the tests parametrise over."""
    pytest.importorskip("numba")
    pytest.importorskip("onnxruntime")
    model = tiny_tokenizer.model
    return {"torch": Tokenizer(model, {}, "cpu", "torch"),
            "numba": Tokenizer(model, {}, "cpu", "numba"),
            "onnx": Tokenizer(model, {}, "cpu", "onnx", threads=1,
                              export_dir=tmp_path_factory.mktemp("onnx"))}


def every_output(tok, wav, z):
    """What every path returns for audio ``wav`` and latents ``z``: offline, streaming and
    batched in a shared pool, encode, represent and decode."""
    enc = tok.tokenize(wav)
    s = tok.session()
    streamed = [s.push(wav), s.flush()]
    pool = tok.session_pool(2)
    batched = tok.step_sessions([pool.session(), pool.session()], [wav, wav[:5000]])
    d = tok.decoder_session()
    dpool = tok.decoder_pool(2)
    return [enc.latents, enc.representations, tok.represent(z), tok.decode(z), d.push(z),
            d.flush(), *tok.step_decoder_sessions([dpool.session(), dpool.session()], [z, z[:3]]),
            *(f.latents for f in streamed + batched),
            *(f.representations for f in streamed + batched)]


@pytest.mark.parametrize("backend", ["torch", "numba", "onnx"])
def test_outputs_are_finite_at_the_edges_of_the_contract(engines, backend):
    """Audio at the clip limit (a ±4 square, clipped to full scale) and latents of ±100."""
    tok = engines[backend]
    rng = np.random.default_rng(0)
    square = np.where(rng.random(3 * 960 + 500) < 0.5, -4, 4).astype(np.float32)
    z = np.where(rng.random((12, 64)) < 0.5, -100, 100).astype(np.float32)
    with pytest.warns(UserWarning, match="clipped"):
        outs = every_output(tok, square, z)
    assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("backend", ["torch", "numba", "onnx"])
def test_non_finite_model_output_never_leaves_the_tokenizer(engines, backend, wav,
                                                            monkeypatch):
    """The last guard: if an engine returns NaN/Inf (a bug, a broken checkpoint), every path
    returns 0 there instead, with a warning."""
    engine = engines[backend].engine
    enc, dec, rep, tail = (engine.encode_rows, engine.decode_rows, engine.represent_step,
                           engine.decode_tail)

    def nan(x):
        return None if x is None else np.full_like(x, np.nan)

    def represent_step(z, state):
        r, state = rep(z, state)
        return nan(r), state
    monkeypatch.setattr(engine, "encode_rows", lambda *a: tuple(nan(x) for x in enc(*a)))
    monkeypatch.setattr(engine, "decode_rows", lambda *a: nan(dec(*a)))
    monkeypatch.setattr(engine, "represent_step", represent_step)
    monkeypatch.setattr(engine, "decode_tail", lambda state: nan(tail(state)))
    z = np.random.default_rng(0).standard_normal((12, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match="NaN/Inf"):
        outs = every_output(engines[backend], wav, z)
    assert all(np.isfinite(o).all() and not o.any() for o in outs if o.size)
