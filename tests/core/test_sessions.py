"""Sessions are independent, batchable, and hold constant memory on endless streams."""

import gc

import numpy as np
import pytest
from helpers import noise

from f3stream import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_config(TokenizerConfig(), seed=2)


def run_alone(tok, wav, sizes):
    s = tok.session()
    outs, pos = [], 0
    for n in sizes:
        outs.append(s.push(wav[pos:pos + n]))
        pos += n
    outs.append(s.flush())
    return outs


def test_interleaved_sessions_equal_each_alone_exactly(tok):
    a, b = noise(2.0, 1), noise(2.5, 2)
    sizes_a = [5000, 123, 20000, 1, 22876]
    sizes_b = [960, 960, 30000, 28080]
    alone_a, alone_b = run_alone(tok, a, sizes_a), run_alone(tok, b, sizes_b)
    sa, sb = tok.session(), tok.session()
    got_a, got_b, pa, pb = [], [], 0, 0
    for i in range(max(len(sizes_a), len(sizes_b))):
        if i < len(sizes_b):
            got_b.append(sb.push(b[pb:pb + sizes_b[i]]))
            pb += sizes_b[i]
        if i < len(sizes_a):
            got_a.append(sa.push(a[pa:pa + sizes_a[i]]))
            pa += sizes_a[i]
    got_a.append(sa.flush())
    got_b.append(sb.flush())
    for got, alone in ((got_a, alone_a), (got_b, alone_b)):
        for g, r in zip(got, alone, strict=True):
            assert g.start_frame == r.start_frame
            np.testing.assert_array_equal(g.latents, r.latents)
            np.testing.assert_array_equal(g.representations, r.representations)


def test_batched_step_over_sessions_equals_separate_pushes(tok):
    waves = [noise(1.5, s) for s in range(4)]
    steps = [[1000, 0, 30000, 5000], [960, 960, 960, 960], [36000, 0, 0, 0], [7, 20000, 13, 999]]
    sessions = [tok.session() for _ in waves]
    solo = [tok.session() for _ in waves]
    pos = [0] * 4
    for k in range(4):
        chunks = []
        for i in range(4):
            n = steps[i][k]
            chunks.append(waves[i][pos[i]:pos[i] + n])
            pos[i] += n
        batched = Tokenizer.step_sessions(sessions, chunks)
        for i in range(4):
            ref = solo[i].push(chunks[i])
            assert batched[i].start_frame == ref.start_frame
            assert batched[i].n_frames == ref.n_frames
            if ref.n_frames:
                assert np.abs(batched[i].latents - ref.latents).max() <= 1e-5
                assert np.abs(batched[i].representations - ref.representations).max() <= 1e-5
    assert [s.frames_emitted for s in sessions] == [s.frames_emitted for s in solo]


def test_batched_step_rejects_mixed_inputs(tok):
    s = tok.session()
    with pytest.raises(ValueError, match="one chunk per session"):
        Tokenizer.step_sessions([s], [])
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.step_sessions([s, s], [np.zeros(1, np.float32)] * 2)
    other = Tokenizer.from_config(TokenizerConfig(), seed=3)
    with pytest.raises(ValueError, match="share one Tokenizer"):
        Tokenizer.step_sessions([s, other.session()], [np.zeros(1, np.float32)] * 2)
    with pytest.raises(ValueError, match="representations"):
        Tokenizer.step_sessions([s, tok.session(representations=False)],
                                [np.zeros(1, np.float32)] * 2)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def stream_minutes(tok, minutes, chunk_seconds=1.0):
    """Feeds ``minutes`` of audio through one encoder and one decoder session; returns the
    RSS growth after the first minute and checks that the state never changes size."""
    enc, dec = tok.session(), tok.decoder_session()
    chunk = noise(chunk_seconds, 7)
    n_chunks = int(minutes * 60 / chunk_seconds)
    enc_bytes, dec_bytes = enc.state_nbytes, dec.state_nbytes
    baseline = None
    for i in range(n_chunks):
        out = enc.push(chunk)
        wav = dec.push(out.latents)
        assert enc.state_nbytes == enc_bytes and dec.state_nbytes == dec_bytes
        assert enc.pending_samples < tok.hop_length
        assert np.isfinite(wav).all()
        if i == int(60 / chunk_seconds):
            gc.collect()
            baseline = rss_bytes()
    gc.collect()
    assert enc.frames_emitted == int(minutes * 60 * tok.frame_rate)
    assert dec.frames_received == enc.frames_emitted
    return rss_bytes() - baseline


def test_ten_minute_stream_has_flat_memory(tok):
    growth = stream_minutes(tok, 10)
    # 10 minutes of float32 audio alone is 57 MiB: any per-frame leak would show far above this
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.slow
def test_one_hour_stream_has_flat_memory(tok):
    growth = stream_minutes(tok, 60)
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_session_state_is_small(tok):
    s = tok.session()
    # fixed-size KV windows: well under 1 MiB per stream at the default config
    assert s.state_nbytes < 2**20
