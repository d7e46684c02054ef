"""The browser demo (f3stream/web, served by the server at / and /demo/...) end to end in
headless Chromium: a fake microphone plays a speech file, the page streams it over protocol
v2 at the AudioContext's own rate with voice activity, gets latents back and decodes them on a
second connection at the same rate.

The page records exactly the PCM it sent (window.f3demo), so the frames it received are
compared with an offline resampling + tokenization of that PCM, and the PCM itself is checked
against the file (the fake device loops the file from an arbitrary point). What the page shows
is checked too: no NaN / null / undefined in its text before, during or after a stream
("–" until a value exists), finite latencies, spectrograms and latents drawn, the voice
activity state changing with the speech, A/B playing, no console errors. Chromium is driven
through the DevTools protocol (demos/web_screenshot.py); skipped when Chromium is not
installed or cannot start."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")

from demos.web_screenshot import Chromium, ChromiumUnavailable, find_chromium  # noqa: E402
from demos.web_screenshot import serve_in_thread as server_thread  # noqa: E402
from f3stream.audio import load_audio, write_audio  # noqa: E402
from f3stream.resampling import StreamResampler  # noqa: E402

CHROMIUM = find_chromium()
RATE = 24000
HAS_VAD = importlib.util.find_spec("silero_vad") is not None
BAD_TEXT = re.compile(r"NaN|null|undefined|Infinity")
# the fields of the page that hold values ("–" until a value exists)
FIELDS = ["f-e2e", "f-server", "f-frames", "f-fps", "vad-state", "f-prob", "f-sent", "f-recon",
          "f-segments", "f-rate", "f-resampler", "f-ab"]
FIELDS_JS = "Object.fromEntries(%s.map((id) => [id, document.getElementById(id).textContent]))" \
    % json.dumps(FIELDS)
# fraction of a canvas's pixels that are not (nearly) black
INK_JS = """((id) => { const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 40) n++;
  return n / (c.width * c.height); })"""
HASH_JS = """((id) => { const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0; for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) | 0; return h; })"""


def http_get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """A spoken sentence and 1.2 s of silence (looped by the fake microphone: speech starts
    and ends)."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    d = tmp_path_factory.mktemp("speech")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "the quick brown fox jumps over the lazy "
                    "dog, then streams its voice to the server"], check=True, timeout=60)
    wav, _ = load_audio(raw, RATE)
    wav = np.concatenate([0.8 * wav / np.abs(wav).max(), np.zeros(int(1.2 * RATE), np.float32)])
    return write_audio(d / "speech.wav", wav, RATE)


def open_browser(tmp: Path, wav: Path | None) -> Chromium:
    try:
        return Chromium(tmp, wav)
    except ChromiumUnavailable as e:
        pytest.skip(str(e))


def f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<f4").copy()


def resampled(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """What the server's per-session streaming resampler gives for all of ``x``."""
    r = StreamResampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])


def best_correlation(seg: np.ndarray, ref: np.ndarray) -> float:
    """Max normalized cross-correlation of ``seg`` against the looped ``ref`` over all lags."""
    reps = int(np.ceil((seg.size + ref.size) / ref.size)) + 1
    tiled = np.tile(ref, reps)
    n = 1 << int(np.ceil(np.log2(tiled.size + seg.size)))
    xc = np.fft.irfft(np.fft.rfft(tiled, n) * np.conj(np.fft.rfft(seg, n)), n)[:ref.size]
    energy = np.concatenate([[0.0], np.cumsum(tiled.astype(np.float64) ** 2)])
    win = energy[seg.size:seg.size + ref.size] - energy[:ref.size]
    return float(np.max(xc / (np.linalg.norm(seg) * np.sqrt(np.maximum(win, 1e-12)))))


def assert_clean_text(text: str, when: str):
    bad = BAD_TEXT.findall(text)
    assert not bad, f"{when}: the page shows {bad}:\n{text}"


def number(text: str) -> float:
    """The leading number of a field such as '12.3 ms (median, last 1 s)'."""
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)", text)
    assert m, f"no number in {text!r}"
    return float(m.group(1))


def test_http_routes(tiny_tokenizer):
    with server_thread(tiny_tokenizer) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        status, ctype, body = http_get(base + "/")
        assert status == 200 and ctype.startswith("text/html") and b"f3stream" in body
        assert http_get(base + "/demo/")[2] == body
        for name in ("app.js", "capture-worklet.js"):
            status, ctype, _ = http_get(f"{base}/demo/{name}")
            assert status == 200 and ctype.startswith("text/javascript"), (name, status, ctype)
        for bad in ("/demo/nope.js", "/demo/../server/server.py", "/demo/%2e%2e/cli.py",
                    "/demo/.hidden.js", "/demo/sub/app.js"):
            assert http_get(base + bad)[0] == 404, bad
        assert json.loads(http_get(base + "/health")[2])["status"] == "ok"
        assert "frames_total" in json.loads(http_get(base + "/metrics.json")[2])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
@pytest.mark.parametrize("rate", ["24000", "native"])  # native: the server resamples
def test_browser_demo_end_to_end(tiny_tokenizer, speech_wav, tmp_path, rate):
    tok = tiny_tokenizer
    ref_file, _ = load_audio(speech_wav, RATE)
    seen: dict = {"vad": set(), "texts": 0}

    async def drive(url: str):
        await browser.attach()
        try:
            return await steps(url)
        finally:
            await browser.ws.close()

    async def page_text(when: str):
        assert_clean_text(await browser.js("document.body.innerText"), when)
        seen["texts"] += 1

    async def sample():  # what the page shows while it streams
        await page_text("during the stream")
        seen["vad"].add(await browser.js("document.getElementById('vad-state').textContent"))

    async def steps(url: str):
        await browser.call("Page.navigate", url=url)
        await browser.wait_for("!!(window.f3demo && document.readyState === 'complete')", 20)
        out = {"before": await browser.js(FIELDS_JS)}
        await page_text("before the stream")
        out["ab_disabled"] = await browser.js("[document.getElementById('play-a').disabled, "
                                              "document.getElementById('play-b').disabled]")
        # the page's FFT: a 1 kHz sine of amplitude 0.5 at 48 kHz peaks at 1 kHz, -6 dB
        out["sine"] = await browser.js(
            "f3demo.spectrumColumn(Float32Array.from({length: 4096}, "
            "(_, i) => 0.5 * Math.sin(2 * Math.PI * 1000 * i / 48000)), 48000)")
        await browser.js("document.getElementById('start').click()")
        await browser.wait_for("f3demo.frames.length >= 25 || f3demo.errors.length > 0", 30,
                               poll=sample)
        out["heat1"] = await browser.js(f"{HASH_JS}('heat')")
        # 6 s in: 5 s of reconstruction exist; A, then B (which stops A), plays to its end
        await browser.wait_for("f3demo.frames.length >= 150 || f3demo.errors.length > 0", 30,
                               poll=sample)
        await browser.js("document.getElementById('play-a').click()")
        out["ab_a"] = await browser.js("[f3demo.ab.playing, "
                                       "document.getElementById('f-ab').textContent]")
        await browser.js("document.getElementById('play-b').click()")
        out["ab_b"] = await browser.js("[f3demo.ab.playing, f3demo.ab.seconds, "
                                       "document.getElementById('f-ab').textContent]")
        vad_done = "f3demo.vadEvents.some((m) => m.type === 'speech_end')" if HAS_VAD else "true"
        await browser.wait_for(f"({vad_done} && f3demo.ab.ended >= 1) || "
                               "f3demo.errors.length > 0", 40, poll=sample)
        out["during"] = await browser.js(FIELDS_JS)
        out["ink"] = {c: await browser.js(f"{INK_JS}('{c}')")
                      for c in ("spec-in", "spec-out", "heat", "vadstrip", "spark")}
        out["heat2"] = await browser.js(f"{HASH_JS}('heat')")
        await browser.js("document.getElementById('stop').click()")
        await browser.wait_for("f3demo.done", 20)
        await page_text("after the stream")
        out["after"] = await browser.js(FIELDS_JS)
        out.update(await browser.js(
            "({frames: f3demo.framesBase64(), pcm: f3demo.pcmBase64(), "
            "decoded: f3demo.decodedBase64(), errors: f3demo.errors, flushed: f3demo.flushed, "
            "rate: f3demo.contextRate, latency: f3demo.latencyMs, server: f3demo.serverLatencyMs, "
            "prob: f3demo.speechProb, events: f3demo.vadEvents, ready: f3demo.ready, "
            "decReady: f3demo.decReady, ab: f3demo.ab, spec: f3demo.specColumns})"))
        await browser.call("Runtime.evaluate", expression="0")  # collect the last events
        return out

    with server_thread(tok) as srv:
        browser = open_browser(tmp_path, speech_wav)
        try:
            res = asyncio.run(asyncio.wait_for(
                drive(f"http://127.0.0.1:{srv.port}/?playback=1&rate={rate}"), 150))
        finally:
            browser.close()

    assert res["errors"] == [], res["errors"]
    assert browser.errors == [], browser.errors  # no console errors, exceptions, failed loads
    # before the stream every value field shows "–", the A/B buttons exist and wait
    assert all(v == "–" for v in res["before"].values()), res["before"]
    assert res["ab_disabled"] == [True, True]
    assert seen["texts"] >= 5
    # the page's spectrum analysis
    sine = res["sine"]
    peak = int(np.argmax(sine["db"]))
    assert abs(sine["centreHz"][peak] - 1000) < 60 and abs(sine["db"][peak] + 6.0) < 1.5, sine

    # protocol version 2 at the context's rate, both directions
    ctx_rate = int(res["rate"])
    if rate == "native":
        assert ctx_rate != RATE, "the browser ran the context at 24 kHz anyway"
    else:
        assert ctx_rate == RATE
    assert res["ready"]["version"] == 2 and res["ready"]["client_sample_rate"] == ctx_rate
    assert res["decReady"]["version"] == 2 and res["decReady"]["client_sample_rate"] == ctx_rate
    frames = f32(res["frames"]).reshape(-1, tok.latent_dim)
    pcm = f32(res["pcm"])
    print(f"context {ctx_rate} Hz, {pcm.size / ctx_rate:.2f} s sent, {frames.shape[0]} frames; "
          f"fields during the stream: {res['during']}, after: {res['after']}; ink {res['ink']}")
    assert frames.shape[0] >= 150 and res["flushed"] == frames.shape[0]
    # the page's frames are the server's resampling + tokenization of exactly the PCM it sent
    ref = tok.encode(resampled(pcm, ctx_rate, RATE))
    assert frames.shape == ref.shape
    assert np.abs(frames - ref).max() <= 1e-4
    # ... and that PCM is the (looped) speech file, from wherever the fake device started
    seg = resampled(pcm, ctx_rate, RATE)[RATE // 2:]  # skip the device's warm-up
    assert np.abs(seg).max() > 0.05, "captured silence"
    corr = best_correlation(seg[:min(seg.size, ref_file.size)], ref_file)
    print(f"correlation with the file: {corr:.3f}")
    assert corr > 0.5, corr
    # per-frame latency from the header and the client's clock (none for the flushed frames)
    lat = np.array(res["latency"], dtype=float)
    assert lat.size == frames.shape[0] and np.isfinite(lat[:-3]).all() and (lat[:-3] > 0).all()
    assert np.all(np.array(res["server"]) >= 0)
    # the decode connection returned Tokenizer.decode of the latents, at the context's rate
    decoded = f32(res["decoded"])
    want = resampled(tok.decode(frames), RATE, ctx_rate)
    assert decoded.shape == want.shape
    assert np.abs(decoded - want).max() <= 1e-4

    # what the page showed during the stream: finite numbers, drawn canvases
    during = res["during"]
    assert 0 < number(during["f-e2e"]) < 5000 and 0 <= number(during["f-server"]) < 5000
    assert number(during["f-frames"]) >= 150 and number(during["f-fps"]) > 0
    assert during["f-rate"].startswith(f"{ctx_rate} Hz")
    assert res["spec"]["input"] > 500 and res["spec"]["reconstruction"] > 400, res["spec"]
    ink = res["ink"]
    assert ink["spec-in"] > 0.2 and ink["spec-out"] > 0.05, ink
    assert ink["heat"] > 0.5 and ink["spark"] > 0.005, ink
    assert res["heat1"] != res["heat2"], "the latents heat map did not scroll"
    # A/B: A played, B replaced it and played to its end (the last 5 s)
    assert res["ab_a"][0] == "original" and res["ab_a"][1].startswith("playing A"), res["ab_a"]
    assert res["ab_b"][0] == "reconstruction" and res["ab_b"][2].startswith("playing B")
    assert abs(res["ab_b"][1] - 5.0) < 0.05, res["ab_b"]
    assert res["ab"]["plays"] == 2 and res["ab"]["ended"] >= 1
    # voice activity: probabilities per frame, speaking and silent as the looped file goes on
    if HAS_VAD:
        assert isinstance(res["ready"]["vad"], dict)
        prob = np.array(res["prob"])
        assert prob.size == frames.shape[0] and ((prob >= 0) & (prob <= 1)).all()
        assert prob.max() > 0.5 and prob.min() < 0.35
        kinds = [m["type"] for m in res["events"]]
        assert kinds[:2] == ["speech_start", "speech_end"], kinds
        assert {"speaking", "silent"} <= seen["vad"], seen["vad"]
        assert 0 <= number(during["f-prob"]) <= 1 and number(during["f-segments"]) >= 1
        assert ink["vadstrip"] > 0.1, ink
    else:
        assert during["vad-state"] == "not available on this server"
    assert all(v != "–" for k, v in res["after"].items() if k not in ("f-fps", "f-ab")), \
        res["after"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_browser_demo_file_source(tiny_tokenizer, speech_wav, tmp_path):
    """No microphone: an audio file chosen on the page is streamed, and its end stops the
    stream."""
    tok = tiny_tokenizer
    short = tmp_path / "short.wav"
    wav, _ = load_audio(speech_wav, 16000)
    write_audio(short, wav[:int(1.5 * 16000)], 16000)

    async def drive(url: str):
        await browser.attach()
        try:
            await browser.call("Page.navigate", url=url)
            await browser.wait_for("!!(window.f3demo && document.readyState === 'complete')", 20)
            doc = await browser.call("DOM.getDocument")
            node = await browser.call("DOM.querySelector", nodeId=doc["root"]["nodeId"],
                                      selector="#file")
            await browser.call("DOM.setFileInputFiles", files=[str(short)],
                               nodeId=node["nodeId"])
            await browser.js("document.getElementById('source').value = 'file'")
            await browser.js("document.getElementById('start').click()")
            await browser.wait_for("f3demo.done", 40)  # the file's end stops the stream
            text = await browser.js("document.body.innerText")
            res = await browser.js("({frames: f3demo.framesBase64(), pcm: f3demo.pcmBase64(), "
                                   "rate: f3demo.contextRate, errors: f3demo.errors, "
                                   "flushed: f3demo.flushed})")
            await browser.call("Runtime.evaluate", expression="0")
            return text, res
        finally:
            await browser.ws.close()

    with server_thread(tok) as srv:
        browser = open_browser(tmp_path, None)
        try:
            text, res = asyncio.run(asyncio.wait_for(
                drive(f"http://127.0.0.1:{srv.port}/?vad=0"), 90))
        finally:
            browser.close()
    assert res["errors"] == [] and browser.errors == [], (res["errors"], browser.errors)
    assert_clean_text(text, "after the file")
    pcm = f32(res["pcm"])
    rate = int(res["rate"])
    # the whole file was sent (decoded and resampled to the context's rate by the browser)
    assert 0 <= pcm.size - int(1.5 * rate) <= 256, (pcm.size, rate)
    sent = resampled(pcm, rate, RATE)
    assert best_correlation(sent, load_audio(short, RATE)[0]) > 0.9
    frames = f32(res["frames"]).reshape(-1, tok.latent_dim)
    ref = tok.encode(resampled(pcm, rate, RATE))
    assert frames.shape == ref.shape and res["flushed"] == frames.shape[0]
    assert np.abs(frames - ref).max() <= 1e-4
