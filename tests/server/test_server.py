"""The live websocket server (f3stream.server) on an ephemeral loopback port with the tiny
tokenizer: streamed frames equal offline tokenization, sessions are isolated, hostile input
gets its documented error code without disturbing other clients, no sessions leak, decode
equals Tokenizer.decode, and shutdown flushes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import urllib.request

import numpy as np
import pytest
from helpers import randn_noise, run, serving

pytest.importorskip("websockets")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from f3stream import g711  # noqa: E402
from f3stream.errors import F3StreamError  # noqa: E402
from f3stream.resampling import StreamResampler, stream_latency_ms  # noqa: E402
from f3stream.server import eventloop  # noqa: E402
from f3stream.server.client import (AsyncClient, Client, ServerError,  # noqa: E402
                                    decode_latents_remote, stream_audio)
from f3stream.server.protocol import ERROR_CODES  # noqa: E402
from f3stream.server.server import F3Server  # noqa: E402

TOL = 1e-5


async def stream_chunks(url, wav, chunk_sizes, **kw):
    """Streams ``wav`` cut at the given sizes (cycled), as fast as possible."""
    async with AsyncClient(url, **kw) as c:
        a, i = 0, 0
        while a < wav.size:
            n = chunk_sizes[i % len(chunk_sizes)]
            await c.send_audio(wav[a:a + n])
            a, i = a + n, i + 1
            if i % 7 == 0:
                await asyncio.sleep(0)
        await c.close()
        assert c.error is None, c.error
        return c.result()


def assert_matches(tok, wav, res, returns="both"):
    ref = tok.tokenize(wav, representations=returns != "latents")
    if returns in ("latents", "both"):
        assert res.latents.shape == ref.latents.shape
        assert np.abs(res.latents - ref.latents).max() <= TOL
    if returns in ("representations", "both"):
        assert res.representations.shape == ref.representations.shape
        assert np.abs(res.representations - ref.representations).max() <= TOL


async def good_client(tok, url, seed=0, n=24000):
    """A well-behaved client whose output is checked against offline tokenization."""
    wav = randn_noise(seed, n)
    res = await stream_chunks(url, wav, [1000, 333, 2500])
    assert_matches(tok, wav, res)


# -- correctness ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("returns", ["latents", "representations", "both"])
def test_stream_equals_offline(tiny_tokenizer, seed, returns):
    rng = np.random.RandomState(seed)
    wav = randn_noise(seed, int(rng.randint(1, 3 * 24000)))
    sizes = [int(s) for s in rng.randint(1, 4000, size=5)]

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            return await stream_chunks(url, wav, sizes, returns=returns)

    assert_matches(tiny_tokenizer, wav, run(main()), returns)


def test_pcm16_and_float16_payload(tiny_tokenizer):
    pcm = (randn_noise(5, 30000) * 32767).astype(np.int16)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            a = await stream_chunks(url, pcm, [777], format="pcm16")
            b = await stream_chunks(url, pcm, [1920], format="pcm16", payload_dtype="float16")
            return a, b

    a, b = run(main())
    ref = tiny_tokenizer.tokenize(pcm)
    assert np.abs(a.latents - ref.latents).max() <= TOL
    np.testing.assert_allclose(b.latents, ref.latents, rtol=2e-3, atol=2e-3)


def test_flush_reset_and_realtime_latency(tiny_tokenizer):
    w1, w2 = randn_noise(1, 5000), randn_noise(2, 4000)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with AsyncClient(url, returns="latents") as c:
                await c.send_audio(w1)
                await c.flush()
                first = c.result()
                await c.reset()
                c.messages.clear()
                await c.send_audio(w2)
                await c.flush()
                second = c.result()
            rt = await stream_audio(url, randn_noise(3, 12000), chunk_ms=20, realtime=True,
                                    returns="latents")
            return first, second, rt

    first, second, rt = run(main())
    assert_matches(tiny_tokenizer, w1, first, "latents")
    assert_matches(tiny_tokenizer, w2, second, "latents")
    assert rt.latents.shape[0] == 13 and len(rt.latency_ms) >= 10
    assert all(0 <= x < 1000 for x in rt.latency_ms)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_interleaved_clients_equal_alone(tiny_tokenizer, loop):
    """Also on uvloop, which `f3stream serve` uses when it is installed."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    wavs = [randn_noise(10 + i, 9000 + 3111 * i) for i in range(8)]

    async def main():
        assert type(asyncio.get_running_loop()).__module__.split(".")[0] == loop
        async with serving(tiny_tokenizer) as (srv, url):
            res = await asyncio.gather(*[stream_chunks(url, w, [480 + 97 * i, 1500])
                                         for i, w in enumerate(wavs)])
            return res, srv.metrics

    results, metrics = eventloop.run(asyncio.wait_for(main(), 60), loop)
    for w, r in zip(wavs, results):
        assert_matches(tiny_tokenizer, w, r)
    assert metrics.sessions_total == 8


def test_numba_server_reuses_pool_rows_and_matches_offline(tiny_config):
    """The server's default engine: sessions live in pool rows (more sessions over time than
    rows), and their frames equal offline torch tokenization within the engines' 1e-4."""
    pytest.importorskip("numba")
    from f3stream import Tokenizer
    tok = Tokenizer.from_config(tiny_config, seed=0, backend="numba")
    ref = Tokenizer.from_config(tiny_config, seed=0)
    wavs = [randn_noise(40 + i, 7000 + 1999 * i) for i in range(6)]

    async def main():
        async with serving(tok, max_sessions=3) as (srv, url):
            out = []
            for k in range(0, 6, 3):
                out += await asyncio.gather(*[stream_chunks(url, w, [480, 1700 + k])
                                              for w in wavs[k:k + 3]])
                for _ in range(100):  # handlers finish just after their clients
                    if not srv.sessions:
                        break
                    await asyncio.sleep(0.05)
            pools = [(p.free_rows, p.capacity) for ps in srv._pools.values() for p in ps]
            return out, pools

    results, pools = run(main())
    assert pools == [(3, 3)]  # one pool of max_sessions rows, reused by the second wave
    for w, r in zip(wavs, results):
        want = ref.tokenize(w)
        assert np.abs(r.latents - want.latents).max() <= 1e-4
        assert np.abs(r.representations - want.representations).max() <= 1e-4


def test_overlapping_rounds_keep_sessions_exclusive_and_exact(tiny_tokenizer, monkeypatch):
    """With two model workers and a slow model, rounds compute at the same time; no session
    is ever in two running rounds, a disconnected session's row is only given back once no
    running round holds it, and every stream still equals offline tokenization."""
    import threading
    import time

    from f3stream.server import batcher as batcher_mod
    from f3stream.session import _StatePool

    real_compute = batcher_mod.compute
    lock = threading.Lock()
    running: list[set[int]] = []
    seen = {"overlap": 0, "shared": 0, "release_in_round": 0}

    def slow_compute(tok, items):
        mine = {id(w.session.coder) for w in items}
        with lock:
            seen["overlap"] += bool(running)
            seen["shared"] += any(mine & other for other in running)
            running.append(mine)
        time.sleep(0.02)  # long enough for the next input to start a second round
        try:
            return real_compute(tok, items)
        finally:
            with lock:
                running.remove(mine)

    real_release = _StatePool._release

    def checked_release(pool, row):
        with lock:
            seen["release_in_round"] += any(
                id(c) in ids for ids in running for c in pool_sessions.get(id(pool), ())
                if c.row == row)
        return real_release(pool, row)

    pool_sessions: dict[int, list] = {}
    monkeypatch.setattr(batcher_mod, "compute", slow_compute)
    monkeypatch.setattr(_StatePool, "_release", checked_release)
    wavs = [randn_noise(70 + i, 6000 + 1500 * i) for i in range(6)]

    async def rude(url):  # leaves while its audio may be in a round
        ws = await connect(url, compression=None)
        await ws.send(hello(format="float32"))
        await ws.recv()
        await ws.send(randn_noise(99, 4000).tobytes())
        await asyncio.sleep(0.01)
        ws.transport.abort()

    async def paced(url, wav, i):  # sessions with input at different moments
        await asyncio.sleep(0.004 * i)
        async with AsyncClient(url) as c:
            for a in range(0, wav.size, 960):
                await c.send_audio(wav[a:a + 960])
                await asyncio.sleep(0.003 + 0.002 * i)
            await c.close()
            assert c.error is None, c.error
            return c.result()

    async def main():
        async with serving(tiny_tokenizer, model_workers=2) as (srv, url):
            assert srv.batcher.workers == 2
            orig = srv._pooled_session

            def tracked(reps):
                coder = orig(reps)
                pool_sessions.setdefault(id(coder.pool), []).append(coder)
                return coder
            srv._pooled_session = tracked
            res = await asyncio.gather(*[paced(url, w, i) for i, w in enumerate(wavs)],
                                       *[rude(url) for _ in range(3)])
            for _ in range(100):
                if not srv.sessions:
                    break
                await asyncio.sleep(0.05)
            return res[:len(wavs)], [(p.free_rows, p.capacity)
                                     for ps in srv._pools.values() for p in ps]

    results, pools = run(main())
    for w, r in zip(wavs, results):
        assert_matches(tiny_tokenizer, w, r)
    assert seen["overlap"] > 0, "rounds never overlapped: the test did not test anything"
    assert seen["shared"] == 0 and seen["release_in_round"] == 0
    assert all(free == cap for free, cap in pools)  # every row came back


def test_decode_direction_equals_tokenizer_decode(tiny_tokenizer):
    lat = tiny_tokenizer.encode(randn_noise(7, 20000))

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            a = await decode_latents_remote(url, lat, frames_per_message=1)
            b = await decode_latents_remote(url, lat, frames_per_message=4)
            return a, b

    ref = tiny_tokenizer.decode(lat)
    for audio in run(main()):
        assert audio.shape == ref.shape
        assert np.abs(audio - ref).max() <= TOL


# -- protocol version 2: client rates and G.711 ------------------------------------------------
def offline_resampled(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """What one streaming resampler gives for the whole of ``x`` (the server's per-session
    resampler, fed at once)."""
    r = StreamResampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])


def as_sent(x: np.ndarray, fmt: str) -> np.ndarray:
    """The samples the server decodes from ``x`` sent in ``fmt``."""
    if fmt in g711.LAWS:
        return g711.decode(g711.encode(x, fmt), fmt)
    return np.round(x * 32768) / 32768 if fmt == "pcm16" else x


@pytest.mark.parametrize("rate, fmt, seed", [(8000, "mulaw", 0), (8000, "alaw", 1),
                                             (16000, "pcm16", 2), (22050, "float32", 3),
                                             (44100, "float32", 4), (48000, "pcm16", 5),
                                             (24000, "mulaw", 6)])
def test_v2_stream_at_client_rate_equals_offline_resampler_and_encode(tiny_tokenizer, rate, fmt,
                                                                      seed):
    """Random chunkings, reset, flush, a second stream: each stream's latents equal the same
    streaming resampler over the whole signal followed by Tokenizer.encode."""
    rng = np.random.RandomState(seed)
    w1 = randn_noise(seed, int(rng.randint(rate // 2, 2 * rate)))
    w2 = randn_noise(seed + 9, rate // 3)
    sizes = [int(s) for s in rng.randint(1, rate // 10, size=5)]

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with AsyncClient(url, returns="latents", format=fmt, sample_rate=rate) as c:
                await c.send_audio(randn_noise(99, rate // 50))  # 20 ms, no frame: dropped by reset
                await c.reset()
                results = []
                for w in (w1, w2):
                    a, i = 0, 0
                    while a < w.size:
                        await c.send_audio(w[a:a + sizes[i % len(sizes)]])
                        a, i = a + sizes[i % len(sizes)], i + 1
                    await c.flush()
                    results.append(c.result())
                    await c.reset()
                    c.messages.clear()
                return c.ready, results

    ready, results = run(main())
    assert ready["version"] == 2 and ready["client_sample_rate"] == rate
    assert ready["resampler_latency_ms"] == stream_latency_ms(rate, 24000)
    for w, res in zip((w1, w2), results):
        ref = tiny_tokenizer.encode(offline_resampled(as_sent(w, fmt), rate, 24000))
        assert res.latents.shape == ref.shape
        assert np.abs(res.latents - ref).max() <= 1e-4


@pytest.mark.parametrize("rate", [8000, 44100])
def test_v2_decode_returns_audio_at_client_rate(tiny_tokenizer, rate):
    lat = tiny_tokenizer.encode(randn_noise(8, 20000))

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            return [await decode_latents_remote(url, lat, frames_per_message=n,
                                                sample_rate=rate) for n in (1, 3)]

    ref = offline_resampled(tiny_tokenizer.decode(lat), 24000, rate)
    for audio in run(main()):
        assert audio.shape == ref.shape
        assert np.abs(audio - ref).max() <= TOL


@pytest.mark.parametrize("version", [1, None])  # None: the client says 1 when it suffices
def test_v1_client_is_unaffected_by_v2(tiny_tokenizer, version):
    """A version-1 hello gets version 1's ready (no version-2 fields) and the same frames."""
    wav = randn_noise(4, 30000)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with AsyncClient(url, version=version, returns="latents") as c:
                await c.send_audio(wav)
                await c.flush()
                return c.ready, c.result()

    ready, res = run(main())
    assert ready["version"] == 1 and ready["sample_rate"] == 24000
    assert "client_sample_rate" not in ready and "resampler_latency_ms" not in ready
    assert_matches(tiny_tokenizer, wav, res, "latents")


def test_concurrent_decode_clients_are_batched_and_exact(tiny_tokenizer, monkeypatch):
    """Decode-direction sessions share a state pool and are decoded in batched steps; each
    client still gets exactly Tokenizer.decode of its latents."""
    from f3stream import Tokenizer
    lats = [tiny_tokenizer.encode(randn_noise(60 + i, 9000 + 2500 * i)) for i in range(5)]
    sizes: list[int] = []

    def recording_step(sessions, chunks, **options):
        sizes.append(len(sessions))
        return Tokenizer.step_decoder_sessions(sessions, chunks, **options)

    monkeypatch.setattr(tiny_tokenizer, "step_decoder_sessions", recording_step)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            return await asyncio.gather(*[decode_latents_remote(url, z, frames_per_message=1 + i)
                                          for i, z in enumerate(lats)])

    for z, audio in zip(lats, run(main())):
        ref = tiny_tokenizer.decode(z)
        assert audio.shape == ref.shape
        assert np.abs(audio - ref).max() <= TOL
    assert max(sizes) > 1  # at least one step decoded several sessions at once


def test_decode_client_measures_latency_per_audio_message(tiny_tokenizer):
    """Each audio message is matched to the latent message that completed it."""
    lat = tiny_tokenizer.encode(randn_noise(8, 960 * 12))

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with AsyncClient(url, direction="decode") as c:
                for i in range(lat.shape[0]):
                    await c.send_latents(lat[i:i + 1])
                    await asyncio.sleep(0.01)
                await c.close()
                return c.result(), [m for m, _ in c.messages if not m.final]

    res, messages = run(main())
    assert len(res.latency_ms) == len(messages) == lat.shape[0]
    assert all(0 <= x < 5000 for x in res.latency_ms)


# -- hostile input ----------------------------------------------------------------------------
HELLO = {"type": "hello", "version": 1, "sample_rate": 24000, "format": "pcm16"}


def hello(**kw):
    return json.dumps({**HELLO, **kw})


async def raw_exchange(url, messages, pause: float = 0.0, **connect_kw):
    """Sends raw messages; returns (every text message received, close code)."""
    texts = []
    async with connect(url, compression=None, **connect_kw) as ws:
        try:
            for m in messages:
                await ws.send(m)
                if pause:
                    await asyncio.sleep(pause)
        except ConnectionClosed:
            pass
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    texts.append(json.loads(msg))
        except ConnectionClosed:
            pass
    return texts, ws.close_code


NAN_F32 = np.array([0.1, np.nan], "<f4").tobytes()
HUGE = 3e38  # finite, so it passed the NaN checks, and every frame it gave was NaN/Inf
HOSTILE = {
    "malformed_json": (["{not json"], "bad_json", 4000),
    "json_array": (["[1, 2, 3]"], "bad_json", 4000),
    "unknown_hello_field": ([hello(colour="red")], "unknown_field", 4000),
    "binary_before_hello": ([b"\x00\x01"], "not_ready", 4000),
    "control_before_hello": ([json.dumps({"type": "flush"})], "not_ready", 4000),
    "wrong_sample_rate": ([hello(sample_rate=16000)], "bad_sample_rate", 4000),
    "wrong_version": ([hello(version=9)], "unsupported_version", 4000),
    "bad_field": ([hello(format="mp3")], "bad_field", 4000),
    "v1_mulaw": ([hello(format="mulaw")], "bad_field", 4000),
    "v2_unknown_rate": ([hello(version=2, sample_rate=11025)], "bad_sample_rate", 4000),
    "v2_rate_not_int": ([hello(version=2, sample_rate="8000")], "bad_field", 4000),
    "v2_unknown_format": ([hello(version=2, format="g722")], "bad_field", 4000),
    "v2_odd_pcm16_at_8k": ([hello(version=2, sample_rate=8000), b"\x00" * 101], "bad_audio",
                           4004),
    "odd_pcm16_bytes": ([hello(), b"\x00" * 101], "bad_audio", 4004),
    "nan_float32": ([hello(format="float32"), NAN_F32], "bad_audio", 4004),
    "inf_float32": ([hello(format="float32"), np.array([np.inf], "<f4").tobytes()],
                    "bad_audio", 4004),
    "huge_float32": ([hello(format="float32"), np.full(960, HUGE, "<f4").tobytes()],
                     "bad_audio", 4004),
    "float32_beyond_clip_limit": ([hello(format="float32"), np.full(960, 4.5, "<f4").tobytes()],
                                  "bad_audio", 4004),
    "huge_latents": ([hello(direction="decode"), np.full(64, HUGE, "<f4").tobytes()],
                     "bad_latents", 4004),
    "latents_beyond_bound": ([hello(direction="decode"), np.full(64, -101, "<f4").tobytes()],
                             "bad_latents", 4004),
    "bad_latent_bytes": ([hello(direction="decode"), b"\x00" * 12], "bad_latents", 4004),
    "nan_latents": ([hello(direction="decode"), np.full(64, np.nan, "<f4").tobytes()],
                    "bad_latents", 4004),
    "unknown_control": ([hello(), json.dumps({"type": "rewind"})], "unknown_type", 4000),
    "control_extra_field": ([hello(), json.dumps({"type": "reset", "x": 1})],
                            "unknown_field", 4000),
    "duplicate_hello": ([hello(), hello()], "duplicate_hello", 4000),
    "audio_after_flush": ([hello(), b"\x00" * 200, json.dumps({"type": "flush"}),
                           b"\x00" * 200], "session_closed", 4000),
    "wrong_token": ([hello(token="nope")], "unauthorized", 4001),
    "missing_token": ([hello()], "unauthorized", 4001),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_gets_error_code_and_others_unaffected(tiny_tokenizer, case):
    messages, code, close_code = HOSTILE[case]
    token = "s3cret" if "token" in case else None

    async def main():
        async with serving(tiny_tokenizer, token=token) as (srv, url):
            async def good():
                if token:  # the good client knows the token
                    wav = randn_noise(0, 24000)
                    res = await stream_chunks(url, wav, [1000], token=token)
                    assert_matches(tiny_tokenizer, wav, res)
                else:
                    await good_client(tiny_tokenizer, url)

            (texts, got_close), _ = await asyncio.gather(raw_exchange(url, messages), good())
            await good()  # the server still serves afterwards
            return texts, got_close, srv

    texts, got_close, srv = run(main())
    errors = [t for t in texts if t.get("type") == "error"]
    assert errors and errors[-1]["code"] == code, texts
    assert isinstance(errors[-1]["message"], str) and errors[-1]["message"]
    assert got_close == close_code
    assert srv.metrics.errors[code] >= 1


def test_slightly_loud_float32_audio_is_clipped_as_the_library_clips_it(tiny_tokenizer):
    """The server applies the library's audio contract: float32 up to ±4 is clipped to [-1, 1]
    (the frames equal offline tokenization of the clipped audio), louder is bad_audio above."""
    wav = randn_noise(6, 9000) * 8  # peaks at 3.5

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            with pytest.warns(UserWarning, match="clipped"):
                return await stream_chunks(url, wav, [1000, 2500], format="float32")

    assert 1 < np.abs(wav).max() <= 4
    assert_matches(tiny_tokenizer, np.clip(wav, -1, 1), run(main()))


def test_oversized_message_closes_1009(tiny_tokenizer):
    async def main():
        async with serving(tiny_tokenizer, max_message_bytes=16384) as (_, url):
            (_, code), _ = await asyncio.gather(
                raw_exchange(url, [hello(), b"\x00" * 20000]), good_client(tiny_tokenizer, url))
            (_, code2), _ = await asyncio.gather(
                raw_exchange(url, ["x" * 20000]), good_client(tiny_tokenizer, url))
            return code, code2

    assert run(main()) == (1009, 1009)


def test_limits_sessions_idle_length(tiny_tokenizer):
    async def main():
        async with serving(tiny_tokenizer, max_sessions=2, idle_timeout=1.0,
                           max_session_seconds=0.5) as (srv, url):
            # idle: a session that says nothing after its hello, and a connection with no hello
            idle, _ = await raw_exchange(url, [hello()])
            silent, silent_code = await raw_exchange(url, [])
            # length: 0.6 s of audio in 0.1 s messages
            chunk = np.zeros(2400, "<i2").tobytes()
            long_, long_code = await raw_exchange(url, [hello()] + [chunk] * 6)
            # sessions: two open sessions, the third is refused
            a = await AsyncClient(url).__aenter__()
            b = await AsyncClient(url).__aenter__()
            with pytest.raises(ServerError) as e:
                await AsyncClient(url).__aenter__()
            await a.disconnect()
            await b.disconnect()
            return idle, silent, silent_code, long_, long_code, e.value

    idle, silent, silent_code, long_, long_code, refused = run(main())
    assert idle[-1]["code"] == "idle_timeout"
    assert silent[-1]["code"] == "idle_timeout" and silent_code == 4010
    assert long_[-1]["code"] == "session_too_long" and long_code == 4009
    assert refused.code == "too_many_sessions" and refused.close_code == 1013


def test_allowed_origins(tiny_tokenizer):
    async def main():
        async with serving(tiny_tokenizer, allowed_origins=["https://ok.example"]) as (_, url):
            with pytest.raises(InvalidStatus) as e:
                await raw_exchange(url, [hello()], origin="https://evil.example")
            async with AsyncClient(url) as c:  # no Origin header: a non-browser client
                await c.send_audio(randn_noise(0, 960))
                await c.flush()
            texts, _ = await raw_exchange(url, [hello(), json.dumps({"type": "close"})],
                                          origin="https://ok.example")
            return e.value.response.status_code, texts, c.result()

    status, texts, res = run(main())
    assert status == 403
    assert texts[0]["type"] == "ready" and texts[-1]["type"] == "flushed"
    assert res.latents.shape[0] == 1


def test_abrupt_disconnects_leak_no_sessions(tiny_tokenizer):
    n = 200

    async def rude(url, i):
        ws = await connect(url, compression=None)
        if i % 4 == 0:           # drop right after connecting
            ws.transport.abort()
            return
        await ws.send(hello(format="float32"))
        if i % 4 == 1:           # drop after the hello
            ws.transport.abort()
            return
        await ws.send(randn_noise(i, 1000 + 37 * i).tobytes())
        if i % 4 == 3:           # drop mid-message (half a websocket frame written)
            ws.transport.write(b"\x82\x7e\x10\x00" + b"\x00" * 100)
        ws.transport.abort()     # drop with frames possibly in flight

    async def main():
        async with serving(tiny_tokenizer) as (srv, url):
            sem = asyncio.Semaphore(25)

            async def one(i):
                async with sem:
                    await rude(url, i)
            await asyncio.gather(*[one(i) for i in range(n)])
            await good_client(tiny_tokenizer, url)
            for _ in range(100):
                if not srv.sessions and not srv._ws.connections:
                    break
                await asyncio.sleep(0.05)
            pools = [p for ps in srv._pools.values() for p in ps]
            return (len(srv.sessions), len(srv._ws.connections), srv.metrics.sessions_total,
                    [(p.free_rows, p.capacity) for p in pools])

    sessions, connections, total, pools = run(main())
    assert sessions == 0 and connections == 0
    assert total >= n // 2
    assert pools and all(free == cap for free, cap in pools)  # every state row came back


def test_slow_reader_is_closed_not_buffered(tiny_tokenizer):
    wav = randn_noise(4, 24000 * 400)

    async def main():
        async with serving(tiny_tokenizer, send_queue=4, max_pending_seconds=0.2) as (srv, url):
            # a client that never reads, with a tiny socket receive buffer so the kernel
            # does not absorb megabytes first
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", srv.port))
            async with connect(url, sock=sock, compression=None, max_queue=1) as ws:
                await ws.send(hello(format="float32", **{"return": "both"}))

                async def send_all():  # never read: socket buffers fill, then the outbox
                    for i, row in enumerate(wav.reshape(-1, 960)):
                        await ws.send(row.tobytes())
                        if i % 20 == 0:
                            await asyncio.sleep(0)
                sending = asyncio.get_running_loop().create_task(send_all())
                for _ in range(1200):
                    if srv.metrics.errors["slow_reader"] or sending.done():
                        break
                    await asyncio.sleep(0.05)
                # stop sending (the server no longer reads it, so a send may wait until the
                # abort), then read: the 4008 close comes after the buffered frames
                sending.cancel()
                with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
                    await sending
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:  # drain: the close frame comes after buffered data
                        pass
                code = ws.close_code
            await good_client(tiny_tokenizer, url)
            return code, srv.metrics.errors["slow_reader"], len(srv.sessions)

    code, count, _ = run(main(), timeout=90)
    assert count == 1, "the server never detected the slow reader"
    assert code == 4008, code


def test_slow_reader_is_not_read_after_its_close(tiny_tokenizer):
    """After the slow_reader close the server used to keep reading (and discarding) the
    client's audio for as long as it came (GBs, seconds of CPU); now it reads nothing more
    and aborts the connection once close_timeout has passed."""
    row = randn_noise(4, 960).tobytes()

    async def main():
        async with serving(tiny_tokenizer, send_queue=4, max_pending_seconds=0.2,
                           close_timeout=0.5) as (srv, url):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", srv.port))
            read_after = sent_after = 0
            async with connect(url, sock=sock, compression=None, max_queue=1) as ws:
                await ws.send(hello(format="float32", **{"return": "both"}))
                (conn,) = srv._ws.connections
                real_data_received = conn.data_received

                def counting(data: bytes) -> None:  # what the server reads after the close
                    nonlocal read_after
                    if srv.metrics.errors["slow_reader"]:
                        read_after += len(data)
                    real_data_received(data)
                conn.data_received = counting
                with contextlib.suppress(ConnectionClosed):  # never read, send 64 MiB more
                    for i in itertools.count():
                        if sent_after >= 64 << 20:
                            break
                        await ws.send(row)
                        if srv.metrics.errors["slow_reader"]:
                            sent_after += len(row)
                        if i % 20 == 0:
                            await asyncio.sleep(0)
            return srv.metrics.errors["slow_reader"], read_after, sent_after

    count, read_after, sent_after = run(main(), timeout=90)
    assert count == 1, "the server never detected the slow reader"
    assert sent_after < 64 << 20, "the connection was never aborted"
    assert read_after <= 1 << 20, f"read {read_after >> 20} MiB after closing"


# -- connections that read nothing: pings, stuck writes ---------------------------------------
PING, TEXT = 0x9, 0x1
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (zero masking key) of at most 125 bytes, written raw: the client library
    would read and answer what the server sends."""
    assert len(payload) <= 125
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


async def deaf_client(srv: F3Server, first: str):
    """A raw websocket client that sends ``first`` after the upgrade and then reads nothing
    (with a tiny receive buffer). Returns its stream writer and the server's connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(UPGRADE)
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()
    writer.write(ws_frame(TEXT, first.encode()))
    for _ in range(400):
        if srv.sessions:
            break
        await asyncio.sleep(0.01)
    (conn,) = srv._ws.connections
    return writer, conn


def test_keepalive_timeout_of_a_peer_that_reads_nothing_is_bounded(tiny_tokenizer):
    """websockets closes a connection whose keepalive pong is late, but that close first
    waits for the peer to read what is queued; a peer that kept sending and read nothing
    stayed open until its idle timeout (found by the soak: 72 s). Now the close deadline
    bounds it. Here: the server's keepalive ping goes out, then the peer's unread pongs stall
    the server's writes, then the ping times out."""
    import time

    pings = ws_frame(PING, b"p" * 125) * 20

    async def main():
        async with serving(tiny_tokenizer, idle_timeout=30.0, close_timeout=0.5,
                           ping_interval=0.2, ping_timeout=1.5) as (srv, url):
            writer, conn = await deaf_client(srv, hello())
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                               socket.SO_SNDBUF, 4096)
            await asyncio.sleep(0.4)  # the keepalive ping is out (and never answered)
            for _ in range(100000):  # unread pongs until the server's writes to it stall
                if conn.paused:
                    break
                writer.write(pings)
                await writer.drain()
                await asyncio.sleep(0)
            stalled = conn.paused
            t0 = time.monotonic()
            while srv.sessions and time.monotonic() - t0 < 8:
                await asyncio.sleep(0.05)
            open_s = time.monotonic() - t0
            writer.transport.abort()
            return stalled, open_s

    stalled, open_s = run(main())
    assert stalled, "the test never stalled the server's writes"
    # the ping times out <= 1.5 s after it went out; then a reaper period and the deadline
    assert open_s < 3.5, f"open {open_s:.1f} s after its writes stalled"


def test_ping_flood_that_reads_no_pong_is_cut_off(tiny_tokenizer):
    """websockets writes a pong for every ping outside send()'s flow control: a client that
    pinged as fast as it could after its hello and read nothing grew the server ~30 MB/s and
    was never closed. Now it is aborted once its unread pongs pass max_pong_backlog, and a
    good client is served as before."""
    pings = ws_frame(PING, b"p" * 125) * 1000  # 131 kB of pings -> 127 kB of pongs

    async def main():
        async with serving(tiny_tokenizer) as (srv, url):
            writer, conn = await deaf_client(srv, hello())
            peak = sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < 64 << 20 and not conn.transport.is_closing():
                    writer.write(pings)
                    await writer.drain()
                    sent += len(pings)
                    peak = max(peak, conn.transport.get_write_buffer_size())
            closed = conn.transport.is_closing()
            writer.transport.abort()
            await good_client(tiny_tokenizer, url)
            return closed, peak, sent, srv.metrics.errors["slow_reader"]

    closed, peak, sent, count = run(main())
    assert closed, f"open after {sent >> 20} MiB of pings with {peak >> 20} MiB of pongs queued"
    assert peak < 1 << 20 and count == 1


def test_backpressure_is_not_idleness(tiny_tokenizer, monkeypatch):
    """While the server stops reading a client because the model is behind (backpressure),
    the client is not idle: found by the soak benchmark on a starved machine, where a client
    streaming in real time was closed with idle_timeout after its reading had been paused for
    longer than the idle timeout."""
    import time

    from f3stream.server import batcher as batcher_mod

    real_compute = batcher_mod.compute

    def slow_compute(tok, items):
        time.sleep(0.6)  # each round outlasts the idle timeout
        return real_compute(tok, items)

    monkeypatch.setattr(batcher_mod, "compute", slow_compute)
    wav = randn_noise(5, 12000)

    async def main():
        async with serving(tiny_tokenizer, idle_timeout=0.4, max_pending_seconds=0.1) as (
                srv, url):
            res = await stream_chunks(url, wav, [960], format="float32")
            return res, dict(srv.metrics.errors)

    res, errors = run(main())
    assert errors.get("idle_timeout", 0) == 0, errors
    assert res.latents.shape[0] == -(-wav.size // tiny_tokenizer.hop_length)


def test_idle_timeout_closes_a_connection_whose_writes_are_stuck(tiny_tokenizer):
    """The idle timeout queues an error, then the close; to a client that reads nothing that
    send waited for ever, so the timeout was counted but never closed the connection. The
    close deadline (close_timeout) now aborts it."""
    pings = ws_frame(PING, b"p" * 125) * 20

    async def main():
        async with serving(tiny_tokenizer, idle_timeout=1.0, close_timeout=0.5) as (srv, url):
            writer, conn = await deaf_client(srv, hello())
            # a small kernel send buffer, so that a few unread pongs stall the server's writes
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                               socket.SO_SNDBUF, 4096)
            for _ in range(100000):  # unread pongs until the server's writes to it stall (then
                # stop, well below max_pong_backlog: the idle timeout must close this one)
                if conn.paused:
                    break
                writer.write(pings)
                await writer.drain()
                await asyncio.sleep(0)  # let the server read them before the next check
            stalled = conn.paused
            for _ in range(400):  # then silence: only the idle timeout can end the session
                if not srv.sessions:
                    break
                await asyncio.sleep(0.025)
            left = len(srv.sessions)
            writer.transport.abort()
            return stalled, left, srv.metrics.errors["idle_timeout"]

    stalled, left, idle = run(main())
    assert stalled, "the test never stalled the server's writes"
    assert idle == 1 and left == 0, "the idle session was not closed"


# -- endpoints, shutdown, sync client, CLI ----------------------------------------------------
def test_health_and_metrics(tiny_tokenizer):
    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            await good_client(tiny_tokenizer, url)
            base = url.replace("ws://", "http://")
            get = lambda p: json.loads(urllib.request.urlopen(base + p, timeout=5).read())  # noqa
            return await asyncio.to_thread(get, "/health"), await asyncio.to_thread(
                get, "/metrics.json")

    health, metrics = run(main())
    assert health["status"] == "ok" and health["protocol_version"] == 1
    assert health["protocol_versions"] == [1, 2]
    assert metrics["frames_total"] == 25 and metrics["latency_ms"]["p50"] is not None
    assert {"sessions", "frames_per_second", "latency_ms"} <= set(metrics)


def scrape(base: str) -> tuple[str, dict]:
    """``GET /metrics``: its Content-Type and its families parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=5) as f:
        ctype, text = f.headers["Content-Type"], f.read().decode()
    return ctype, {fam.name: fam for fam in text_string_to_metric_families(text)}


def samples(fam, suffix: str = "") -> dict:
    """A family's samples named ``fam.name + suffix``, by their labels."""
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples
            if s.name == fam.name + suffix}


def test_metrics_in_the_prometheus_text_format(tiny_tokenizer):
    """/metrics is Prometheus text: frames by direction, errors by code (every code from 0),
    open sessions, frame latency and model-step histograms; a real stream moves them, and
    /metrics.json counts the same frames."""
    lat = tiny_tokenizer.encode(randn_noise(7, 9600))

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            base = url.replace("ws://", "http://")
            before = await asyncio.to_thread(scrape, base)
            async with AsyncClient(url) as c:
                await c.send_audio(randn_noise(1, 960))
                during = await asyncio.to_thread(scrape, base)
            await good_client(tiny_tokenizer, url)
            await decode_latents_remote(url, lat, frames_per_message=2)
            await raw_exchange(url, ["{not json"])
            after = await asyncio.to_thread(scrape, base)
            js = json.loads(await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "/metrics.json", timeout=5).read()))
            return before, during, after, js

    (ctype, before), (_, during), (_, after), js = run(main())
    assert ctype.startswith("text/plain") and "version=" in ctype
    kinds = {"f3stream_frames": "counter", "f3stream_errors": "counter",
             "f3stream_sessions": "counter", "f3stream_open_sessions": "gauge",
             "f3stream_frame_latency_seconds": "histogram",
             "f3stream_model_step_seconds": "histogram"}
    for fams in (before, after):
        assert {n: fams[n].type for n in kinds if n in fams} == kinds
    directions = {(("direction", "encode"),), (("direction", "decode"),)}
    codes = {(("code", c),) for c in ERROR_CODES}
    assert set(samples(before["f3stream_frames"], "_total")) == directions
    assert set(samples(before["f3stream_errors"], "_total")) == codes
    assert set(samples(before["f3stream_frames"], "_total").values()) == {0}
    assert set(samples(before["f3stream_errors"], "_total").values()) == {0}
    assert samples(before["f3stream_open_sessions"])[()] == 0
    assert samples(during["f3stream_open_sessions"])[()] == 1

    frames = samples(after["f3stream_frames"], "_total")
    assert frames[(("direction", "encode"),)] >= 25  # good_client's 25, plus the short one's
    assert 1 <= frames[(("direction", "decode"),)] <= lat.shape[0]  # an audio message: one
    assert sum(frames.values()) == js["frames_total"]
    errors = samples(after["f3stream_errors"], "_total")
    assert errors[(("code", "bad_json"),)] == 1 == js["errors"]["bad_json"]
    assert sum(errors.values()) == 1
    assert samples(after["f3stream_sessions"], "_total")[()] == js["sessions_total"] >= 3
    # what a model step's speed depends on, for load reports (benchmarks/server_load.py)
    engine = js["engine"]
    assert engine["backend"] == tiny_tokenizer.backend
    assert engine["gemm_plan"] == (list(tiny_tokenizer.engine.gemm_plan)
                                   if hasattr(tiny_tokenizer.engine, "gemm_plan") else None)
    assert all("internal_api" in lib for lib in engine["blas"])
    assert samples(after["f3stream_open_sessions"])[()] == 0
    latency = after["f3stream_frame_latency_seconds"]
    assert samples(latency, "_count")[()] == js["messages_total"] > 0
    assert samples(latency, "_bucket")[(("le", "+Inf"),)] == js["messages_total"]
    assert samples(latency, "_sum")[()] > 0
    step = after["f3stream_model_step_seconds"]
    assert samples(step, "_count")[()] == js["batches_total"] > 0
    assert samples(before["f3stream_model_step_seconds"], "_count")[()] == 0


def test_servers_in_one_process_have_their_own_metrics(tiny_tokenizer):
    """Each server has its own registry: two at once neither collide nor share counts."""
    async def main():
        async with serving(tiny_tokenizer) as (_, url_a), serving(tiny_tokenizer) as (_, url_b):
            await good_client(tiny_tokenizer, url_a)
            return [await asyncio.to_thread(scrape, u.replace("ws://", "http://"))
                    for u in (url_a, url_b)]

    (_, a), (_, b) = run(main())
    assert samples(a["f3stream_frames"], "_total")[(("direction", "encode"),)] == 25
    assert samples(b["f3stream_frames"], "_total")[(("direction", "encode"),)] == 0


async def http_status(port: int, request: bytes) -> int | None:
    """The status code of a raw HTTP request's answer (None: closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def test_http_status_codes_and_the_metrics_token(tiny_tokenizer):
    """Unknown paths are 404 (not 426), other methods 405 (a POST with a body got no status
    line), and with a token /metrics and /metrics.json need it too; /health stays open."""
    def get(path: str, *headers: str) -> bytes:
        return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers, "", ""]).encode()

    requests = {
        "unknown path": (get("/nonexistent"), 404),
        "post": (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        "post with a body": (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
                             405),
        "metrics without the token": (get("/metrics"), 401),
        "metrics with a wrong token": (get("/metrics", "Authorization: Bearer nope"), 401),
        "metrics with the token": (get("/metrics", "Authorization: Bearer s3cret"), 200),
        "metrics.json without the token": (get("/metrics.json"), 401),
        "metrics.json with a wrong token": (get("/metrics.json", "Authorization: Bearer nope"),
                                            401),
        "metrics.json with the token": (get("/metrics.json", "Authorization: Bearer s3cret"),
                                        200),
        "health": (get("/health"), 200),
        "demo": (get("/"), 200),
    }

    async def main():
        async with serving(tiny_tokenizer, token="s3cret") as (srv, url):
            got = {name: await http_status(srv.port, req) for name, (req, _) in requests.items()}
            await stream_chunks(url, randn_noise(0, 2000), [1000], token="s3cret")  # still serves
            return got

    got = run(main())
    assert got == {name: want for name, (_, want) in requests.items()}


def test_graceful_shutdown_flushes_open_sessions(tiny_tokenizer):
    wavs = [randn_noise(20 + i, 960 * 3 + 100 * i + 1) for i in range(3)]

    async def main():
        srv = await F3Server(tiny_tokenizer).start("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{srv.port}"
        clients = [await AsyncClient(url).__aenter__() for _ in wavs]
        for c, w in zip(clients, wavs):
            await c.send_audio(w)
        for _ in range(200):  # until the server has read all the audio (not yet flushed)
            if all(srv.sessions[c.ready["session"]].total_in == w.size
                   for c, w in zip(clients, wavs)):
                break
            await asyncio.sleep(0.01)
        await srv.shutdown()
        for c in clients:
            await asyncio.wait_for(c._closed.wait(), 10)
        with pytest.raises(OSError):
            await connect(url, open_timeout=2)
        return [(c.result(), c.ws.close_code, c.error) for c in clients]

    for w, (res, code, err) in zip(wavs, run(main())):
        assert code == 1001 and err is None
        assert_matches(tiny_tokenizer, w, res)   # the zero-padded last frame arrived too


@pytest.mark.parametrize("rate, fmt", [(16000, "pcm16"), (8000, "mulaw")])
def test_graceful_shutdown_flushes_the_resampler_of_v2_sessions(tiny_tokenizer, rate, fmt):
    """Shutdown, like a flush, pushes the held-back resampler tail before the last frame."""
    wavs = [randn_noise(30 + i, rate // 5 + 77 * i) for i in range(2)]

    async def main():
        srv = await F3Server(tiny_tokenizer).start("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{srv.port}"
        clients = [await AsyncClient(url, returns="latents", sample_rate=rate,
                                     format=fmt).__aenter__() for _ in wavs]
        for c, w in zip(clients, wavs):
            await c.send_audio(w)
        held = [StreamResampler(rate, 24000).process(as_sent(w, fmt)).size for w in wavs]
        for _ in range(200):  # until the server has read all the audio (not yet flushed)
            if all(srv.sessions[c.ready["session"]].total_in == n
                   for c, n in zip(clients, held)):
                break
            await asyncio.sleep(0.01)
        await srv.shutdown()
        for c in clients:
            await asyncio.wait_for(c._closed.wait(), 10)
        return [(c.result(), c.ws.close_code) for c in clients]

    for w, (res, code) in zip(wavs, run(main())):
        assert code == 1001
        ref = tiny_tokenizer.encode(offline_resampled(as_sent(w, fmt), rate, 24000))
        assert res.latents.shape == ref.shape and np.abs(res.latents - ref).max() <= 1e-4


def test_sync_client_and_cli(tiny_tokenizer, tmp_path):
    """The blocking client and ``f3stream stream`` against a server in another thread."""
    from f3stream.cli import main as cli_main
    from f3stream.audio import load_audio, write_audio
    from f3stream.tokens_io import load_tokens

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    def serve():
        asyncio.set_event_loop(loop)
        box["srv"] = loop.run_until_complete(F3Server(tiny_tokenizer).start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert started.wait(10)
    srv = box["srv"]
    url = f"ws://127.0.0.1:{srv.port}"
    try:
        wav = randn_noise(9, 7000)
        with Client(url, returns="both") as c:
            for a in range(0, wav.size, 1234):
                c.send_audio(wav[a:a + 1234])
            res = c.flush()
        assert_matches(tiny_tokenizer, wav, res)

        audio = tmp_path / "in.wav"
        write_audio(audio, wav, 24000)
        out = tmp_path / "tokens.npz"
        rc = cli_main(["stream", str(audio), "--url", url, "--out", str(out),
                       "--as-fast-as-possible", "--format", "pcm16"])
        assert rc == 0
        tokens = load_tokens(out)
        ref = tiny_tokenizer.tokenize(load_audio(audio, 24000)[0])
        assert np.abs(tokens.latents - ref.latents).max() <= TOL
        assert tokens.sample_rate == 24000 and tokens.frame_rate == 25
        # a refused stream is one clear error line, exit status 2
        assert cli_main(["stream", str(audio), "--url", url.rsplit(":", 1)[0] + ":1",
                         "--out", str(out)]) == 2
    finally:
        asyncio.run_coroutine_threadsafe(srv.shutdown(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_serve_cli_sigterm_flushes(tiny_tokenizer, tmp_path):
    """`f3stream serve` in a subprocess: SIGTERM flushes an open session, closes it with 1001
    and exits 0."""
    import os
    import re
    import signal
    import subprocess
    import sys

    ckpt = tiny_tokenizer.save(tmp_path / "tiny")
    proc = subprocess.Popen([sys.executable, "-m", "f3stream", "serve", "--checkpoint",
                             str(ckpt), "--port", "0", "--quiet", "--threads", "1"],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", line).group(1))
        assert f"{eventloop.loop_factory('auto')[0]} loop" in line  # uvloop when installed
        wav = randn_noise(30, 960 * 2 + 500)

        async def main():
            async with AsyncClient(f"ws://127.0.0.1:{port}") as c:
                await c.send_audio(wav)
                for _ in range(100):  # the two complete frames arrive first
                    if sum(m.n_rows for m, _ in c.messages) >= 2:
                        break
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(c._closed.wait(), 20)
                return c.result(), c.ws.close_code

        res, code = run(main())
        assert code == 1001
        assert_matches(tiny_tokenizer, wav, res)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


BAD_SERVE_OPTIONS = [("--port", "99999"), ("--port", "-1"), ("--max-sessions", "0"),
                     ("--max-sessions", "-5"), ("--max-message-bytes", "0"),
                     ("--max-message-bytes", "100"), ("--idle-timeout", "0"),
                     ("--idle-timeout", "-1"), ("--idle-timeout", "nan"), ("--send-queue", "0"),
                     ("--max-session-seconds", "-1"), ("--max-session-seconds", "inf"),
                     ("--threads", "0"), ("--model-workers", "0")]


@pytest.mark.parametrize("option,value", BAD_SERVE_OPTIONS)
def test_serve_refuses_out_of_range_options(option, value, monkeypatch, capsys):
    """Each of these started a server that refused every client (or listened on another
    port); now it is one error line and exit status 2, before anything starts."""
    from f3stream.cli import main
    from f3stream.server import cli as live_cli
    started = []
    monkeypatch.setattr(live_cli, "cmd_serve", lambda args: started.append(args) or 0)
    assert main(["serve", option, value]) == 2
    err = capsys.readouterr().err
    assert not started
    assert err.startswith(f"f3stream serve: error: argument {option}:") and err.count("\n") == 1


def test_serve_accepts_the_edges_of_its_options(monkeypatch):
    from f3stream.cli import main
    from f3stream.server import cli as live_cli
    started = []
    monkeypatch.setattr(live_cli, "cmd_serve", lambda args: started.append(args) or 0)
    assert main(["serve", "--port", "65535", "--max-sessions", "1", "--max-message-bytes",
                 "4096", "--idle-timeout", "0.1", "--send-queue", "1",
                 "--max-session-seconds", "0.5", "--threads", "1", "--model-workers", "1"]) == 0
    assert main(["serve", "--port", "0"]) == 0
    args = started[0]
    assert (args.port, args.max_sessions, args.max_message_bytes, args.idle_timeout,
            args.send_queue, args.max_session_seconds) == (65535, 1, 4096, 0.1, 1, 0.5)


def test_load_benchmark_runs_and_loses_no_frame():
    """benchmarks/server_load.py end to end, small: `f3stream serve` with its defaults and
    a few real-time clients on loopback; every frame arrives and the report is complete."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "server_load.py"),
                          "--clients", "4", "--duration", "1.5"], capture_output=True,
                         text=True, timeout=300, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["frames_expected"] == 4 * 38 and report["frames_lost"] == 0
    assert report["client_errors"] == [] and report["phases"] == "uniform"
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] < 1000
    assert report["model_workers"] == 2 and report["loop"] in ("uvloop", "asyncio")
    # what the figures depend on is recorded beside them (issue 13 item 11)
    assert report["server_engine"]["blas"] and "gemm_plan" in report["server_engine"]
    cond = report["conditions"]
    assert cond["machine"]["logical_cores"] >= 1 and len(cond["load_average_before"]) == 3
    assert cond["cpu_cores_used"]["server"] > 0 and cond["cpu_cores_used"]["clients"] > 0
    assert 0 < cond["client_cpu_share"] < 1
    assert cond["samples"] and cond["samples"][-1]["server_rss_mib"] > 50


@pytest.mark.slow
def test_limits_benchmark_runs_and_shows_the_bounds(tiny_tokenizer, tmp_path):
    """benchmarks/server_limits.py end to end, short: against `f3stream serve`, the ping
    flooder is aborted and the slow reader gets nothing more read after its 4008."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    ckpt = tiny_tokenizer.save(tmp_path / "tiny")
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "server_limits.py"),
                          "--duration", "3", "--checkpoint", str(ckpt)], capture_output=True,
                         text=True, timeout=300, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr[-2000:]
    flood, slow = json.loads(out.stdout)["runs"]
    assert flood["attacker_closed_after_s"] is not None and flood["healthy_frames_lost"] == 0
    assert slow["after_close_decision"]["bytes_read_by_server"] < 1 << 20


def test_serve_thread_limit_reaches_the_blas_of_the_numba_engine(tiny_config):
    """`serve --threads 1` must also limit the BLAS that numba's products call (its own pool
    ignores torch.set_num_threads and took both cores: docs/server.md)."""
    pytest.importorskip("numba")
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from f3stream import Tokenizer
    from f3stream.threads import limit_threads
    Tokenizer.from_config(tiny_config, seed=0, backend="numba").engine.warmup()  # loads it
    torch_threads = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the pools' sizes afterwards
        try:
            limit_threads(1)
            blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
            assert blas and all(i["num_threads"] == 1 for i in blas)
            assert torch.get_num_threads() == 1
        finally:
            torch.set_num_threads(torch_threads)


def test_event_loop_choice(monkeypatch):
    """auto falls back to asyncio without uvloop; asking for uvloop then is a clear error."""
    assert eventloop.loop_factory("asyncio")[0] == "asyncio"
    assert eventloop.run(asyncio.sleep(0, "done"), "asyncio") == "done"
    with pytest.raises(F3StreamError, match="unknown event loop"):
        eventloop.loop_factory("trio")
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # import fails
    assert eventloop.loop_factory("auto")[0] == "asyncio"
    with pytest.raises(F3StreamError, match="needs the uvloop package"):
        eventloop.loop_factory("uvloop")


def test_failing_session_is_isolated(tiny_tokenizer, monkeypatch):
    """If the model fails for one session (a bug), that session gets `internal` (1011) and the
    sessions batched with it still get correct frames."""
    from f3stream.tokenizer import Tokenizer
    victims = set()

    def flaky_step(sessions, chunks, **options):
        if any(id(s) in victims for s in sessions):
            raise RuntimeError("simulated model failure")
        return Tokenizer.step_sessions(sessions, chunks, **options)

    def flaky_push(self, pcm, _orig=type(tiny_tokenizer.session()).push, **options):
        if id(self) in victims:
            raise RuntimeError("simulated model failure")
        return _orig(self, pcm, **options)

    monkeypatch.setattr(tiny_tokenizer, "step_sessions", flaky_step)
    monkeypatch.setattr(type(tiny_tokenizer.session()), "push", flaky_push)

    async def main():
        async with serving(tiny_tokenizer) as (srv, url):
            bad = await AsyncClient(url).__aenter__()
            victims.add(id(srv.sessions[bad.ready["session"]].coder))
            goods = [stream_chunks(url, randn_noise(40 + i, 9000), [960 * 2]) for i in range(3)]

            async def victim():
                for _ in range(10):
                    with contextlib.suppress(ConnectionClosed):
                        await bad.send_audio(randn_noise(1, 960 * 2))
                    await asyncio.sleep(0.005)
                await asyncio.wait_for(bad._closed.wait(), 10)
            results = await asyncio.gather(victim(), *goods)
            return bad.error, results[1:]

    err, results = run(main())
    assert err is not None and err.code == "internal" and err.close_code == 1011
    for i, res in enumerate(results):
        assert_matches(tiny_tokenizer, randn_noise(40 + i, 9000), res)


DOCUMENTED_CLOSES = {1000, 1001, 1007, 1009, 1013, 4000, 4001, 4004, 4008, 4009, 4010}


def test_fuzz_message_sequences_never_break_the_server(tiny_tokenizer):
    """Random sequences of (mostly hostile) messages: every connection ends with a documented
    close code (never an internal error), and a good client is still served correctly."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    controls = st.sampled_from([{"type": t} for t in ("flush", "reset", "close", "hello", "x")])
    text = st.one_of(st.just(hello()), st.just(hello(format="float32")),
                     st.just(hello(direction="decode")), controls.map(json.dumps),
                     st.just(hello(version=2, sample_rate=8000, format="mulaw")),
                     st.just(hello(version=2, sample_rate=44100, direction="decode")),
                     st.text(max_size=30),
                     st.dictionaries(st.sampled_from(["type", "version", "sample_rate", "a"]),
                                     st.one_of(st.integers(), st.text(max_size=5)),
                                     max_size=4).map(json.dumps))
    binary = st.one_of(st.binary(max_size=3000),
                       st.integers(0, 2000).map(lambda n: randn_noise(n, n).tobytes()))
    sequences = st.lists(st.one_of(text, binary), min_size=1, max_size=8)

    async def scenario(batches):
        async with serving(tiny_tokenizer, max_message_bytes=1 << 16) as (srv, url):
            outs = await asyncio.gather(*[raw_exchange_closing(url, b) for b in batches])
            await good_client(tiny_tokenizer, url, n=5000)
            return outs, dict(srv.metrics.errors)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(sequences, min_size=1, max_size=3))
    def check(batches):
        outs, errors = run(scenario(batches))
        assert "internal" not in errors
        for texts, code in outs:
            assert code in DOCUMENTED_CLOSES, (code, texts)
            for t in texts:
                if t.get("type") == "error":
                    assert t["code"] in ERROR_CODES

    check()


async def raw_exchange_closing(url, messages):
    """Like raw_exchange, but ends a still-open session with a close message."""
    return await raw_exchange(url, list(messages) + [json.dumps({"type": "close"})])
