"""Streaming equals offline: any chunking of the same audio gives the same frames."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import f3stream
from f3stream import Tokenizer, TokenizerConfig
from f3stream.audio import load_audio

TOL = 1e-5
SR = 24000
MAX_CHUNKS = 60  # bounds the work of one example; the rest of the clip goes in one last chunk


@pytest.fixture(scope="module")
def tok():
    """Default-size architecture (random weights) so the real layer shapes are exercised."""
    return Tokenizer.from_config(TokenizerConfig(), seed=1)


@pytest.fixture(scope="module")
def speech():
    path = f3stream.checkpoint.default_checkpoint_dir().parent.parent / "assets" / "sample.wav"
    wav, _ = load_audio(path, SR)
    return wav[: int(3.3 * SR)]  # deliberately not a whole number of frames


chunk_size = st.one_of(st.integers(1, 100), st.integers(101, 5000), st.integers(5001, 3 * SR))


def split(n, sizes):
    """Cuts ``n`` items into chunks of the drawn sizes, the rest in one final chunk."""
    bounds, pos = [], 0
    for s in sizes:
        if pos >= n:
            break
        bounds.append((pos, min(n, pos + s)))
        pos += s
    if pos < n:
        bounds.append((pos, n))
    return bounds


def stream_encode(tok, wav, bounds, dtype=np.float32):
    session = tok.session()
    outs = [session.push(wav[a:b].astype(dtype) if dtype == np.float32
                         else np.round(wav[a:b] * 32767).astype(np.int16)) for a, b in bounds]
    outs.append(session.flush())
    starts = [o.start_frame for o in outs]
    assert starts == sorted(starts)
    return (np.concatenate([o.latents for o in outs]),
            np.concatenate([o.representations for o in outs]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(chunk_size, min_size=1, max_size=MAX_CHUNKS))
def test_streaming_encoder_equals_offline_for_any_chunking(tok, speech, sizes):
    offline = tok.tokenize(speech)
    lat, rep = stream_encode(tok, speech, split(speech.size, sizes))
    assert lat.shape == offline.latents.shape == (tok.n_frames(speech.size), 64)
    assert rep.shape == offline.representations.shape
    assert np.abs(lat - offline.latents).max() <= TOL
    assert np.abs(rep - offline.representations).max() <= TOL


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=MAX_CHUNKS))
def test_streaming_decoder_equals_offline_for_any_chunking(tok, speech, sizes):
    latents = tok.encode(speech)
    offline = tok.decode(latents)
    session = tok.decoder_session()
    parts = [session.push(latents[a:b]) for a, b in split(latents.shape[0], sizes)]
    parts.append(session.flush())
    streamed = np.concatenate(parts)
    assert streamed.shape == offline.shape == (latents.shape[0] * tok.hop_length,)
    assert np.abs(streamed - offline).max() <= TOL


def test_frame_by_frame_and_sample_by_sample_int16_streams(tok, speech):
    """The two extremes: exactly one frame per push, and 1-sample pushes (int16 PCM)."""
    clip = speech[: 3 * 960 + 17]
    offline = tok.tokenize(np.round(clip * 32767).astype(np.int16))
    frames = [(a, min(a + 960, clip.size)) for a in range(0, clip.size, 960)]
    singles = [(a, a + 1) for a in range(clip.size)]
    for bounds in (frames, singles):
        lat, rep = stream_encode(tok, clip, bounds, dtype=np.int16)
        assert np.abs(lat - offline.latents).max() <= TOL
        assert np.abs(rep - offline.representations).max() <= TOL


def test_frames_are_emitted_as_soon_as_complete(tok, speech):
    session = tok.session()
    assert session.push(speech[:959]).n_frames == 0
    out = session.push(speech[959:961])
    assert (out.start_frame, out.n_frames) == (0, 1)
    assert session.pending_samples == 1
    out = session.push(speech[961:961 + 2 * 960])
    assert (out.start_frame, out.n_frames) == (1, 2)


def test_encoder_is_causal(tok, speech):
    """Changing the future never changes frames already emitted."""
    a = tok.encode(speech)
    changed = speech.copy()
    changed[20 * 960:] = 0.5 * np.sin(np.arange(changed.size - 20 * 960) / 7.0)
    b = tok.encode(changed)
    np.testing.assert_array_equal(a[:20], b[:20])
    assert np.abs(a[20:] - b[20:]).max() > 1e-3


def test_decoder_output_is_aligned_and_delayed_only_by_the_overlap(tok, speech):
    """Decoder sample n depends on latent frames up to (n + decoder_delay) // hop."""
    z = tok.encode(speech)
    delay = tok.config.autoencoder.decoder_delay
    y1 = tok.decode(z)
    z2 = z.copy()
    z2[30:] = 0.0
    y2 = tok.decode(z2)
    cut = 30 * tok.hop_length - delay
    np.testing.assert_array_equal(y1[:cut], y2[:cut])
    assert np.abs(y1[cut:cut + delay] - y2[cut:cut + delay]).max() > 0
