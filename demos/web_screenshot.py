"""A screenshot of the browser demo during a running stream (docs/demo-page.png), and the
headless-Chromium driver that tests/web/test_web_demo.py uses too.

    python demos/web_screenshot.py [--out docs/demo-page.png] [--wav FILE] [--seconds 10]

It starts `f3stream serve`'s server in-process with the bundled checkpoint, starts headless
Chromium with a fake microphone that plays a speech file (default: the alsa-utils voice
prompts, real recorded speech, with pauses, so voice activity has turns to show; else the
bundled espeak-ng sample), opens the demo page, streams 2 s to warm the server up, presses
Start again, and captures the page after `--seconds` of streaming (default 10), while the
voice activity says "speaking". The PNG is reduced to a palette of colours so that it stays
small.

Chromium is driven through the DevTools protocol over a websocket (no extra packages).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
ALSA = Path("/usr/share/sounds/alsa")


def find_chromium() -> str | None:
    return os.environ.get("F3STREAM_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser") or shutil.which("google-chrome")


class ChromiumUnavailable(RuntimeError):
    """Chromium is not installed or did not start."""


@contextlib.contextmanager
def serve_in_thread(tok, config=None):
    """The websocket server on an ephemeral loopback port, in its own event loop thread (the
    caller blocks on the browser). Yields the started server (``.port``)."""
    from f3stream.server.server import F3Server, ServerConfig

    loop = asyncio.new_event_loop()
    started: dict = {}

    async def boot():
        started["srv"] = await F3Server(tok, config or ServerConfig()).start("127.0.0.1", 0)

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(boot(), loop).result(60)
    srv = started["srv"]
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


class Chromium:
    """Headless Chromium with one page, driven via the DevTools protocol. ``wav``: the fake
    microphone plays (and loops) that file. Console messages of level error, uncaught
    exceptions and failed loads are collected in ``errors``."""

    def __init__(self, workdir: Path, wav: Path | None = None, width: int = 1100,
                 height: int = 900, binary: str | None = None):
        binary = binary or find_chromium()
        if binary is None:
            raise ChromiumUnavailable("chromium not installed (apt-get install chromium)")
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
        self.log = Path(workdir) / "chromium.log"
        media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        if wav is not None:
            media.append(f"--use-file-for-fake-audio-capture={wav}")
        # a log file, not a pipe: Chromium's chatter would fill a pipe and block it
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},{height}",
                 f"--user-data-dir={profile}", *media,
                 "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
                 "--remote-debugging-address=127.0.0.1", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log)
        port_file = profile / "DevToolsActivePort"  # written once the port is bound
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                err = self.log.read_text(errors="replace")[-500:]
                raise ChromiumUnavailable(f"chromium did not start: {err}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self.ws = None
        self.ids = iter(range(1, 1 << 30))
        self.errors: list[str] = []   # console errors, exceptions, failed loads
        self.console: list[str] = []  # every console message, "level: text"

    async def attach(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        await self.call("Runtime.enable")
        await self.call("Log.enable")

    def _event(self, msg: dict):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            self.console.append(f"{p['type']}: {text}")
            if p["type"] in ("error", "assert"):
                self.errors.append(f"console.{p['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append("exception: " + d.get("exception", {}).get("description",
                                                                            d.get("text", "")))
        elif method == "Log.entryAdded":
            e = p["entry"]
            self.console.append(f"{e['level']}: {e['text']} {e.get('url', '')}")
            if e["level"] == "error":
                self.errors.append(f"log: {e['text']} {e.get('url', '')}")

    async def call(self, method: str, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:  # events are recorded, other replies skipped
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            if "method" in msg:
                self._event(msg)

    async def js(self, expr: str):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expr: str, timeout: float, every: float = 0.2, poll=None):
        """Waits until ``expr`` is truthy in the page; ``poll`` (async, optional) runs each
        round, e.g. to sample what the page shows meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            if poll is not None:
                await poll()
            if await self.js(expr):
                return
            if time.monotonic() > deadline:
                state = await self.js("JSON.stringify({n: window.f3demo && f3demo.frames.length,"
                                      " errors: window.f3demo && f3demo.errors, "
                                      "text: document.body.innerText})")
                raise AssertionError(f"timed out waiting for {expr}: {state}")
            await asyncio.sleep(every)

    async def screenshot(self) -> bytes:
        """The whole page as PNG bytes."""
        h = await self.js("Math.ceil(document.body.getBoundingClientRect().bottom) + 12")
        w = await self.js("document.documentElement.scrollWidth")
        r = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        return base64.b64decode(r["data"])

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def speech_file(out: Path) -> Path:
    """The alsa-utils prompts with 0.8 s pauses (real voices; evaluation material, never used
    for training), or the bundled espeak-ng sample; mono 48 kHz 16-bit."""
    import numpy as np

    from f3stream.audio import load_audio, write_audio

    rate = 48000
    names = ["Front_Center", "Front_Left", "Front_Right", "Rear_Left", "Rear_Right"]
    files = [ALSA / f"{n}.wav" for n in names if (ALSA / f"{n}.wav").is_file()]
    files = files or [REPO / "f3stream" / "assets" / "sample.wav"]
    gap = np.zeros(int(0.8 * rate), np.float32)
    parts = []
    for f in files:
        wav, _ = load_audio(f, rate)
        parts += [0.7 * wav / max(1e-6, float(np.abs(wav).max())), gap]
    return write_audio(out, np.concatenate(parts), rate)


def shrink_png(png: bytes, colours: int = 128) -> bytes:
    """A palette PNG of ``colours`` colours (the page is flat colours and two spectrograms)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, "PNG", optimize=True)
    return out.getvalue()


async def capture(port: int, browser: Chromium, seconds: float, query: str) -> bytes:
    await browser.attach()
    try:
        await browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/?{query}")
        await browser.wait_for("!!(window.f3demo && document.readyState === 'complete')", 20)
        # a first, short stream warms the server up (compiled kernels, the VAD model), so the
        # captured one shows its steady latency
        await browser.js("document.getElementById('start').click()")
        await browser.wait_for("f3demo.frames.length >= 50 || f3demo.errors.length > 0", 60)
        await browser.js("document.getElementById('stop').click()")
        await browser.wait_for("f3demo.done", 20)
        await browser.js("document.getElementById('start').click()")
        await browser.wait_for("f3demo.ready !== null || f3demo.errors.length > 0", 30)
        t0 = time.monotonic()
        await browser.wait_for(f"f3demo.sentSamples >= {seconds} * f3demo.contextRate "
                               "|| f3demo.errors.length > 0", seconds + 30)
        with contextlib.suppress(AssertionError):  # show a turn while it is spoken, if any
            await browser.wait_for("f3demo.speaking === true", 6, every=0.05)
        png = await browser.screenshot()
        errors = await browser.js("f3demo.errors")
        shown = await browser.js("[...document.querySelectorAll('dl.stats dt')].map((dt) => "
                                 "dt.textContent + ': ' + dt.nextElementSibling.textContent)")
        print(f"captured after {time.monotonic() - t0:.1f} s of streaming; the page showed:")
        print("  " + "\n  ".join(shown))
        await browser.js("document.getElementById('stop').click()")
        await browser.wait_for("f3demo.done", 20)
        if errors or browser.errors:
            raise RuntimeError(f"the page reported errors: {errors} {browser.errors}")
        return png
    finally:
        await browser.ws.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "demo-page.png")
    ap.add_argument("--wav", type=Path, help="what the fake microphone plays (default: the "
                    "alsa-utils prompts, else the bundled sample)")
    ap.add_argument("--seconds", type=float, default=10.0, help="stream this long first")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one)")
    ap.add_argument("--backend", default="numba", help="torch, numba or onnx (default numba, "
                    "as `f3stream serve`)")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--query", default="playback=0", help="the page's URL parameters")
    ap.add_argument("--colours", type=int, default=128, help="palette size; 0: keep RGB")
    args = ap.parse_args(argv)

    import f3stream

    tok = f3stream.load(args.checkpoint, backend=args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        wav = args.wav or speech_file(Path(tmp) / "speech.wav")
        with serve_in_thread(tok) as srv:
            browser = Chromium(Path(tmp), wav, width=args.width, height=900)
            try:
                png = asyncio.run(asyncio.wait_for(
                    capture(srv.port, browser, args.seconds, args.query), args.seconds + 120))
            finally:
                browser.close()
    if args.colours:
        png = shrink_png(png, args.colours)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
