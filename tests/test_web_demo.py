"""The browser demo (f3stream/web, served by the server at / and /demo/...) end to end in
headless Chromium: a fake microphone plays a speech file, the page streams it over protocol
v1 and gets latents back, optionally decodes them on a second connection.

The page records exactly the PCM it sent (window.f3demo), so the frames it received are
compared with an offline tokenization of that PCM, and the PCM itself is checked against the
file (the fake device loops the file from an arbitrary point). Chromium is driven through the
DevTools protocol over a websocket; skipped when Chromium is not installed or cannot start."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")

from websockets.asyncio.client import connect  # noqa: E402

from f3stream.audio import load_audio, write_audio  # noqa: E402
from f3stream.server.server import F3Server, ServerConfig  # noqa: E402

CHROMIUM = os.environ.get("F3STREAM_CHROMIUM") or shutil.which("chromium") or \
    shutil.which("chromium-browser") or shutil.which("google-chrome")
RATE = 24000


@contextlib.contextmanager
def server_thread(tok):
    """The server on an ephemeral loopback port, in its own event loop thread (the test
    itself blocks on the browser)."""
    loop = asyncio.new_event_loop()
    started: dict = {}

    async def boot():
        started["srv"] = await F3Server(tok, ServerConfig()).start("127.0.0.1", 0)

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(boot(), loop).result(30)
    srv = started["srv"]
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def http_get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    d = tmp_path_factory.mktemp("speech")
    raw = d / "raw.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "the quick brown fox jumps over the lazy "
                    "dog, then streams its voice to the server"], check=True, timeout=60)
    wav, _ = load_audio(raw, RATE)
    return write_audio(d / "speech.wav", 0.8 * wav / np.abs(wav).max(), RATE)


class Browser:
    """Headless Chromium + one page, driven via the DevTools protocol."""

    def __init__(self, tmp: Path, wav: Path):
        profile = tmp / "profile"
        profile.mkdir()
        self.log = tmp / "chromium.log"
        # a log file, not a pipe: Chromium's chatter would fill a pipe and block it
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                 "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
                 "--remote-debugging-address=127.0.0.1", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log)
        port_file = profile / "DevToolsActivePort"  # written once the port is bound
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                err = self.log.read_text(errors="replace")[-500:]
                pytest.skip(f"chromium did not start: {err}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self.ws = None
        self.ids = iter(range(1, 1 << 30))

    async def attach(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)

    async def call(self, method: str, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:  # skip events and other replies
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expr: str):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expr: str, timeout: float):
        deadline = time.monotonic() + timeout
        while not await self.js(expr):
            if time.monotonic() > deadline:
                state = await self.js("JSON.stringify({n: f3demo.frames.length, "
                                      "errors: f3demo.errors, status: "
                                      "document.getElementById('status').textContent})")
                raise AssertionError(f"timed out waiting for {expr}: {state}")
            await asyncio.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<f4").copy()


def best_correlation(seg: np.ndarray, ref: np.ndarray) -> float:
    """Max normalized cross-correlation of ``seg`` against the looped ``ref`` over all lags."""
    reps = int(np.ceil((seg.size + ref.size) / ref.size)) + 1
    tiled = np.tile(ref, reps)
    n = 1 << int(np.ceil(np.log2(tiled.size + seg.size)))
    xc = np.fft.irfft(np.fft.rfft(tiled, n) * np.conj(np.fft.rfft(seg, n)), n)[:ref.size]
    energy = np.concatenate([[0.0], np.cumsum(tiled.astype(np.float64) ** 2)])
    win = energy[seg.size:seg.size + ref.size] - energy[:ref.size]
    return float(np.max(xc / (np.linalg.norm(seg) * np.sqrt(np.maximum(win, 1e-12)))))


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
@pytest.mark.parametrize("rate", ["24000", "native"])  # native: the worklet resamples
def test_browser_demo_end_to_end(tiny_tokenizer, speech_wav, tmp_path, rate):
    tok = tiny_tokenizer
    ref_file, _ = load_audio(speech_wav, RATE)

    async def drive(url: str):
        await browser.attach()
        try:
            return await steps(url)
        finally:
            await browser.ws.close()

    async def steps(url: str):
        await browser.call("Page.navigate", url=url)
        await browser.wait_for("!!(window.f3demo && document.readyState === 'complete')", 20)
        await browser.js("document.getElementById('start').click()")
        await browser.wait_for("f3demo.frames.length >= 75 || f3demo.errors.length > 0", 30)
        await browser.js("document.getElementById('stop').click()")
        await browser.wait_for("f3demo.done", 20)
        return await browser.js("({frames: f3demo.framesBase64(), pcm: f3demo.pcmBase64(), "
                                "decoded: f3demo.decodedBase64(), errors: f3demo.errors, "
                                "flushed: f3demo.flushed, rate: f3demo.contextRate, "
                                "latency: f3demo.latencyMs, server: f3demo.serverLatencyMs, "
                                "status: document.getElementById('status').textContent})")

    with server_thread(tok) as srv:
        browser = Browser(tmp_path, speech_wav)
        try:
            res = asyncio.run(asyncio.wait_for(
                drive(f"http://127.0.0.1:{srv.port}/?playback=1&rate={rate}"), 60))
        finally:
            browser.close()

    assert res["errors"] == [], res["errors"]
    frames = f32(res["frames"]).reshape(-1, tok.latent_dim)
    pcm = f32(res["pcm"])
    print(f"context {res['rate']} Hz, {pcm.size / RATE:.2f} s sent, {frames.shape[0]} frames; "
          f"status:\n{res['status']}")
    if rate == "native":
        assert res["rate"] != RATE, "the browser ran the context at 24 kHz anyway"
    else:
        assert res["rate"] == RATE
    assert frames.shape[0] >= 75 and res["flushed"] == frames.shape[0]
    # the page's frames are the server's tokenization of exactly the PCM it sent
    ref = tok.tokenize(pcm).latents
    assert frames.shape == ref.shape
    assert np.abs(frames - ref).max() <= 1e-4
    # ... and that PCM is the (looped) speech file, from wherever the fake device started
    seg = pcm[RATE // 2:]  # skip the first samples (device / resampler warm-up)
    assert np.abs(seg).max() > 0.05, "captured silence"
    corr = best_correlation(seg[:min(seg.size, ref_file.size)], ref_file)
    print(f"correlation with the file: {corr:.3f}")
    assert corr > 0.5, corr
    # per-frame latency came from the header and the client's clock
    lat = np.array(res["latency"], dtype=float)
    assert lat.size == frames.shape[0] and np.isfinite(lat[:-1]).all() and (lat[:-1] > 0).all()
    assert np.all(np.array(res["server"]) >= 0)
    # playback path: the decode connection returned Tokenizer.decode of the received latents
    decoded = f32(res["decoded"])
    want = tok.decode(frames)
    assert decoded.shape == want.shape
    assert np.abs(decoded - want).max() <= 1e-4
