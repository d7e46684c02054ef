"""Encoder and decoder session lifecycle: no push after flush until ``reset()``, no second
flush, and a reset session equals a fresh one (frame numbering included)."""

import numpy as np
import pytest
from helpers import HOP, SR, noise

from f3stream import SessionClosedError


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
