"""Voice activity (hello ``"vad": true``, f3stream/server/vad.py): Silero VAD on real recorded
speech finds its onset and its end, silence and noise give no events, the probabilities do not
depend on how the audio is cut or batched with other sessions, the hello field is validated,
the websocket server sends the probabilities and events, and a session without it runs no
VAD code at all."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import run, serving

pytest.importorskip("websockets")
pytest.importorskip("onnxruntime")

from websockets.asyncio.client import connect  # noqa: E402

from f3stream.audio import resample  # noqa: E402
from f3stream.server import vad as vadmod  # noqa: E402
from f3stream.server.client import AsyncClient, ServerError  # noqa: E402
from f3stream.server.protocol import (DTYPE_FLOAT32, HEADER_SIZE, KIND_LATENTS,  # noqa: E402
                                      ProtocolError, encode_frame, parse_frame, parse_hello)
from f3stream.server.vad import (SpeechSegmenter, VadModel, VadParams,  # noqa: E402
                                 VadStream, run_windows)

try:
    vadmod.model_path()
except vadmod.VadUnavailable as e:  # pragma: no cover - CI installs it with f3stream[server]
    pytest.skip(str(e), allow_module_level=True)

SR, HOP = 24000, 960
ALSA = Path("/usr/share/sounds/alsa")


@pytest.fixture(scope="module")
def model() -> VadModel:
    return VadModel()


def prompt(name: str = "Front_Center") -> np.ndarray:
    """An alsa-utils voice prompt (real recorded English speech, reserved for evaluation) at
    24 kHz."""
    path = ALSA / f"{name}.wav"
    if not path.exists():
        pytest.skip("needs the alsa-utils prompts (apt-get install alsa-utils)")
    x, rate = sf.read(path, dtype="float32")
    return resample(x, rate, SR)


def framed(x: np.ndarray, before_s: float = 2.0, after_s: float = 1.5) -> np.ndarray:
    """``x`` with silence before and after."""
    return np.concatenate([np.zeros(int(before_s * SR), np.float32), x,
                           np.zeros(int(after_s * SR), np.float32)])


def speech_frames(x: np.ndarray) -> tuple[int, int]:
    """First and last frame with speech energy (|x| > 0.02): the ground truth."""
    loud = np.nonzero(np.abs(x) > 0.02)[0]
    return int(loud[0]) // HOP, int(loud[-1]) // HOP


def vad_offline(model: VadModel, x: np.ndarray, chunks: list[int] | None = None
                ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """What a server session computes for ``x`` sent in ``chunks`` (cycled; default one),
    then flushed: per-frame probabilities and events, the way the batcher drives VadStream."""
    s = VadStream(model, SR, HOP)
    probs, events, pos, i = [], [], 0, 0
    chunks = chunks or [x.size]
    while pos < x.size:
        n = chunks[i % len(chunks)]
        s.feed(x[pos:pos + n])
        pos, i = min(pos + n, x.size), i + 1
        run_windows([s])
        if pos // HOP > s.frames:
            p, e = s.label(s.frames, pos // HOP - s.frames)
            probs.append(p)
            events += e
    n_frames = -(-x.size // HOP)
    s.finish(n_frames)
    run_windows([s])
    if n_frames > s.frames:
        p, e = s.label(s.frames, n_frames - s.frames)
        probs.append(p)
        events += e
    events += s.end()
    return np.concatenate(probs) if probs else np.zeros(0, np.float32), events


# -- the model on real speech -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["Front_Center", "Rear_Left"])
def test_speech_start_near_onset_and_end_after_it(model, name):
    x = framed(prompt(name))
    first, last = speech_frames(x)
    probs, events = vad_offline(model, x)
    assert probs.shape == (-(-x.size // HOP),) and probs.dtype == np.float32
    assert [e[0] for e in events] == ["speech_start", "speech_end"], events
    start, end = events[0][1], events[1][1]
    assert first - 1 <= start <= first + 3, (first, start)  # within 120 ms of the onset
    assert last < end <= last + 5, (last, end)  # the first quiet frame, shortly after
    assert probs[start] >= 0.5 and probs[:start].max() < 0.5
    assert np.median(probs[first:last + 1]) > 0.9  # inside the prompt: speech (and pauses)
    assert probs[:first - 5].max() < 0.1 and probs[end + 2:].max() < 0.1


@pytest.mark.parametrize("kind", ["silence", "quiet noise", "alsa noise prompt"])
def test_no_speech_no_events(model, kind):
    if kind == "silence":
        x = np.zeros(3 * SR, np.float32)
    elif kind == "quiet noise":
        x = (np.random.RandomState(0).randn(3 * SR) * 0.01).astype(np.float32)
    else:
        x = framed(prompt("Noise"), 0.5, 0.5)
    probs, events = vad_offline(model, x)
    assert events == []
    assert probs.max() < 0.35


def test_probabilities_do_not_depend_on_chunking(model):
    """Any cut of the stream, down to single samples: the same probabilities and events (the
    frame-to-window rule needs only audio, never the timing of the resampler's output)."""
    x = framed(prompt(), 0.6, 0.6)
    ref_p, ref_e = vad_offline(model, x)
    for chunks in ([1, 2, 3, 500], [480], [960], [7, 13001], [HOP * 3 + 17]):
        p, e = vad_offline(model, x, chunks)
        np.testing.assert_array_equal(p, ref_p)
        assert e == ref_e


def test_batched_equals_one_session_at_a_time(model):
    """One model call per window position for all sessions: each session's probabilities equal
    its own run alone, and the calls really were batched."""
    wavs = [framed(prompt(), 1.0, 1.0), np.zeros(2 * SR, np.float32),
            framed(prompt("Rear_Left"), 0.3, 0.5),
            (np.random.RandomState(1).randn(SR) * 0.1).astype(np.float32)]
    alone = [vad_offline(model, w) for w in wavs]
    streams = [VadStream(model, SR, HOP) for _ in wavs]
    got = [[] for _ in wavs]
    calls0, windows0 = model.calls, model.windows
    step = 2 * HOP - 100  # rounds that complete one or two frames per session
    for pos in range(0, max(w.size for w in wavs), step):
        live = [(i, s) for i, (s, w) in enumerate(zip(streams, wavs)) if pos < w.size]
        for i, s in live:
            s.feed(wavs[i][pos:pos + step])
        run_windows([s for _, s in live])
        for i, s in live:
            done = min(pos + step, wavs[i].size) // HOP
            if done > s.frames:
                got[i].append(s.label(s.frames, done - s.frames)[0])
    for i, (s, w) in enumerate(zip(streams, wavs)):
        n = -(-w.size // HOP)
        s.finish(n)
    run_windows(streams)
    for i, (s, w) in enumerate(zip(streams, wavs)):
        n = -(-w.size // HOP)
        if n > s.frames:
            got[i].append(s.label(s.frames, n - s.frames)[0])
    for g, (ref, _) in zip(got, alone):
        np.testing.assert_allclose(np.concatenate(g), ref, atol=1e-6, rtol=0)
    windows = model.windows - windows0
    assert windows == sum(s.windows for s in streams)
    assert windows / (model.calls - calls0) > 2  # one at a time would be 1


def test_segmenter_hysteresis():
    seg = SpeechSegmenter(VadParams(start_threshold=0.5, end_threshold=0.35,
                                    min_silence_frames=3))
    probs = [0.1, 0.49, 0.5, 0.9,        # starts at frame 2 (reaches the start threshold)
             0.4, 0.4, 0.4, 0.4,         # between the thresholds: still speech
             0.2, 0.3, 0.7, 0.4,         # quiet from frame 8, back to speech within 3 frames
             0.3, 0.4, 0.2,              # quiet from frame 12, 0.4 does not interrupt it
             0.1, 0.6]                   # so it ended at 12 (decided at 14); 16 starts again
    events = [e for i, p in enumerate(probs) for e in seg.update(i, p)]
    assert events == [("speech_start", 2), ("speech_end", 12), ("speech_start", 16)]
    assert seg.finish(30) == [("speech_end", 30)]     # a flush during speech ends it
    assert seg.finish(31) == []
    seg.update(0, 0.9)
    seg.update(1, 0.1)
    assert seg.finish(2) == [("speech_end", 1)]       # where its silence began


# -- the protocol -----------------------------------------------------------------------------
def hello(**kw):
    d = {"type": "hello", "version": 2, "sample_rate": SR}
    d.update(kw)
    return d


def test_hello_vad_field():
    assert parse_hello(hello(), SR).vad is False
    h = parse_hello(hello(vad=True, format="mulaw", sample_rate=8000), SR)
    assert h.vad is True
    assert parse_hello(json.loads(h.to_json()), SR) == h
    assert "vad" not in json.loads(parse_hello(hello(), SR).to_json())  # version 1 clients
    assert parse_hello(hello(vad=False), SR).vad is False


@pytest.mark.parametrize("obj, code", [
    (hello(vad="yes"), "bad_field"),
    (hello(vad=1), "bad_field"),
    (hello(vad=None), "bad_field"),
    (hello(vad=[True]), "bad_field"),
    (hello(vad=True, direction="decode"), "bad_field"),
    (hello(version=1, vad=True), "unknown_field"),       # version 1 gets exactly version 1
    (hello(version=1, vad=False), "unknown_field"),
])
def test_bad_vad_hello(obj, code):
    with pytest.raises(ProtocolError) as e:
        parse_hello(obj, SR)
    assert e.value.code == code


def test_frame_with_speech_probabilities_round_trips():
    payload = np.random.RandomState(0).randn(3, 5).astype(np.float32)
    probs = np.array([0.0, 0.5, 1.0], np.float32)
    data = encode_frame(KIND_LATENTS, 1, 7, payload, DTYPE_FLOAT32, 1, 2, speech_prob=probs)
    assert len(data) == HEADER_SIZE + 4 * payload.size + 4 * 3
    m = parse_frame(data)
    np.testing.assert_array_equal(m.payload, payload)
    np.testing.assert_array_equal(m.speech_prob, probs)
    assert parse_frame(encode_frame(KIND_LATENTS, 1, 7, payload, DTYPE_FLOAT32, 1, 2)
                       ).speech_prob is None
    with pytest.raises(ProtocolError):  # flagged, but the probabilities are cut off
        parse_frame(data[:-4])
    with pytest.raises(ValueError):
        encode_frame(KIND_LATENTS, 1, 7, payload, DTYPE_FLOAT32, 1, 2, speech_prob=probs[:2])


# -- the server -------------------------------------------------------------------------------
async def send_all(c: AsyncClient, x: np.ndarray, chunks: list[int]) -> None:
    pos, i = 0, 0
    while pos < x.size:
        n = chunks[i % len(chunks)]
        await c.send_audio(x[pos:pos + n])
        pos, i = pos + n, i + 1
        if i % 5 == 0:
            await asyncio.sleep(0)


def test_server_sends_probabilities_and_events(tiny_tokenizer, model):
    """Over the websocket: every frame message carries its frames' probabilities, equal to the
    offline VAD of the same audio; speech_start / speech_end arrive with frame indices and
    server times, after the frame message that decided them; the tokens are unchanged;
    /metrics counts the VAD's windows."""
    x = framed(prompt(), 1.0, 1.0)
    ref_p, ref_e = vad_offline(model, x)

    async def main():
        async with serving(tiny_tokenizer) as (srv, url):
            async with AsyncClient(url, vad=True, returns="latents") as c:
                await send_all(c, x, [480, 1000, 333])
                await c.close()
            assert c.error is None, c.error
            metrics = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(
                url.replace("ws://", "http://") + "/metrics.json", timeout=5).read()))
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(
                url.replace("ws://", "http://") + "/metrics", timeout=5).read().decode())
            return c, metrics, text

    c, metrics, text = run(main())
    assert c.ready["version"] == 2 and c.ready["vad"]["model"].startswith("silero-vad ")
    assert c.ready["vad"]["start_threshold"] == 0.5 and c.ready["vad"]["min_silence_ms"] == 480
    res = c.result()
    assert all(m.speech_prob is not None and m.speech_prob.shape == (m.n_rows,)
               for m, _ in c.messages)
    np.testing.assert_array_equal(res.speech_prob, ref_p)
    assert [(e["type"], e["frame_index"]) for e in res.events] == ref_e
    assert all(isinstance(e["time_us"], int) and e["time_us"] > 1.6e15 for e in res.events)
    np.testing.assert_allclose(res.latents, tiny_tokenizer.encode(x), atol=1e-5, rtol=0)
    assert metrics["vad"]["windows_total"] >= x.size * 2 // 3 // 512
    assert "f3stream_vad_windows_total" in text


def test_events_follow_their_frames_on_the_wire(tiny_tokenizer):
    """The raw message order: an event comes after the frame message holding its frame."""
    x = framed(prompt(), 0.5, 1.0)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with connect(url) as ws:
                await ws.send(json.dumps(hello(format="pcm16", vad=True)))
                json.loads(await ws.recv())
                for a in range(0, pcm.size, 480):
                    await ws.send(pcm[a:a + 480].tobytes())
                await ws.send(json.dumps({"type": "close"}))
                return [m async for m in ws]

    seen, events = 0, []
    for m in run(main()):
        if isinstance(m, bytes):
            f = parse_frame(m)
            assert f.frame_index == seen and f.speech_prob is not None
            seen += f.n_rows
        else:
            msg = json.loads(m)
            if msg["type"].startswith("speech_"):
                assert msg["frame_index"] < seen
                events.append(msg["type"])
    assert events == ["speech_start", "speech_end"]


def test_telephone_audio_and_flush_during_speech_and_reset(tiny_tokenizer):
    """8 kHz mu-law in (resampled by the session), speech cut off by a flush: speech_end at
    the stream's end; after a reset the next stream starts at frame 0 with fresh state."""
    speech = prompt()
    x = np.concatenate([np.zeros(SR // 2, np.float32), speech[:int(1.1 * SR)]])  # in "Center"
    x8 = resample(x, SR, 8000)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            async with AsyncClient(url, vad=True, sample_rate=8000, format="mulaw") as c:
                await send_all(c, x8, [160])
                await c.flush()
                first = c.result()
                await c.reset()
                await send_all(c, x8, [160])
                await c.close()
            assert c.error is None, c.error
            return first, c.result()

    first, both = run(main())
    n = first.n_frames
    kinds = [(e["type"], e["frame_index"]) for e in first.events]
    assert [k for k, _ in kinds] == ["speech_start", "speech_end"]
    onset = speech_frames(x)[0]
    assert onset - 1 <= kinds[0][1] <= onset + 3
    assert kinds[1][1] == n  # still speaking when the stream ended
    # the second stream (after the reset) repeats the first exactly
    np.testing.assert_array_equal(both.speech_prob[n:], first.speech_prob)
    assert [(e["type"], e["frame_index"]) for e in both.events[2:]] == kinds


def test_session_without_vad_runs_no_vad_code(tiny_tokenizer, monkeypatch):
    """Without "vad" (version 1 or 2, beside a session with it or not) nothing of the VAD
    runs: no model is loaded, run_windows and VadStream are never called, frames carry no
    probabilities, and ready says so (version 2) or stays version 1's."""
    def boom(*a, **k):
        raise AssertionError("VAD code ran for a session without vad")

    monkeypatch.setattr(vadmod.VadModel, "__init__", boom)
    monkeypatch.setattr(vadmod.VadStream, "__init__", boom)
    monkeypatch.setattr("f3stream.server.batcher.run_windows", boom)
    monkeypatch.setattr("f3stream.server.server.VadModel", boom)
    x = framed(prompt(), 0.5, 0.5)

    async def main():
        async with serving(tiny_tokenizer) as (srv, url):
            out = []
            for kw in ({}, {"version": 2}, {"sample_rate": 16000, "format": "pcm16"}):
                rate = kw.get("sample_rate", SR)
                async with AsyncClient(url, returns="latents", **kw) as c:
                    await send_all(c, resample(x, SR, rate), [640])
                    await c.close()
                assert c.error is None, c.error
                out.append(c)
            return srv, out

    srv, clients = run(main())
    assert srv._vad_model is None and srv.metrics.snapshot()["vad"] is None
    assert "vad" not in clients[0].ready and clients[0].ready["version"] == 1
    assert clients[1].ready["vad"] is False and clients[2].ready["vad"] is False
    for c in clients:
        assert all(m.speech_prob is None for m, _ in c.messages)
        assert c.result().events == [] and c.result().speech_prob is None


def test_vad_sessions_beside_plain_ones(tiny_tokenizer, model):
    """Concurrent sessions with and without vad: each gets what it asked for, exactly."""
    x = framed(prompt(), 0.5, 0.5)
    ref_p, ref_e = vad_offline(model, x)

    async def one(url, vad, seed):
        handed = []  # the first vad session takes its events through on_event
        async with AsyncClient(url, vad=vad, returns="latents",
                               on_event=handed.append if seed == 0 else None) as c:
            await send_all(c, x, [480 + 37 * seed])
            await c.close()
        assert c.error is None, c.error
        res = c.result()
        if seed == 0:
            assert res.events == [] and handed
            res.events = handed
        return res

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            return await asyncio.gather(*(one(url, i % 2 == 0, i) for i in range(6)))

    for i, res in enumerate(run(main())):
        np.testing.assert_allclose(res.latents, tiny_tokenizer.encode(x), atol=1e-5, rtol=0)
        if i % 2 == 0:
            np.testing.assert_array_equal(res.speech_prob, ref_p)
            assert [(e["type"], e["frame_index"]) for e in res.events] == ref_e
        else:
            assert res.speech_prob is None and res.events == []


def test_server_without_silero_refuses_vad_clearly(tiny_tokenizer, monkeypatch):
    def missing():
        raise vadmod.VadUnavailable("voice activity needs the 'silero-vad' package")

    monkeypatch.setattr(vadmod, "model_path", missing)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            with pytest.raises(ServerError) as e:
                async with AsyncClient(url, vad=True):
                    pass
            async with AsyncClient(url) as c:  # others are unaffected
                await c.send_audio(np.zeros(HOP, np.float32))
                await c.close()
            return e.value, c

    err, c = run(main())
    assert err.code == "bad_field" and "silero-vad" in err.message and err.close_code == 4000
    assert c.error is None and c.result().n_frames == 1


def test_load_benchmark_with_vad():
    """benchmarks/server_load.py --vad, small: every frame arrives with a speech probability
    and the report carries the VAD model's work (calls, windows, CPU time per window)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "server_load.py"),
                          "--clients", "3", "--duration", "1.5", "--vad"], capture_output=True,
                         text=True, timeout=300, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["vad"] is True and report["client_errors"] == []
    assert report["frames_lost"] == 0
    assert report["frames_with_speech_prob"] == report["frames_expected"] == 3 * 38
    vad = report["server_vad"]
    assert vad["windows_total"] >= 3 * 1.5 * 16000 // 512 - 3
    assert vad["calls_total"] <= vad["windows_total"]
    assert 0 < vad["cpu_us_per_window"] < 100_000
