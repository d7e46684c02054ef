"""Bounded soak of ``f3stream serve``: connection churn plus two abusive clients, for minutes.

Starts the server in a subprocess with ``serve``'s defaults and keeps ``--clients`` streams
going for ``--duration`` seconds. Each of those client slots connects, streams noise in real
time (pcm16, 20 ms chunks, latents back) for a random 5-20 s, then either closes cleanly
(flush + close: a *healthy* stream, whose frames are counted) or vanishes abruptly (TCP abort
mid-stream, a fraction ``--abrupt``), and reconnects. Beside them, each in its own process:

* a **flooder**: says hello, then sends ping frames as fast as it can without reading the
  pongs, until the server cuts it off (documented: the connection is aborted, TCP reset, no
  close frame; counted as ``slow_reader``); it pauses ``--flood-pause`` s and floods again;
* a **non-reader**: says hello and streams audio (``--nonreader-speed`` x real time) but never
  reads; its send queue fills and the server closes it (documented: 4008 ``slow_reader``
  queued behind what the client does not read, input no longer read, TCP aborted at the 2 s
  close deadline); it pauses and does it again.

Reported (``--out`` JSON, a summary on stderr): healthy streams' frames lost (expected minus
received: must be 0) and latency (p50 / p99 / max, overall and per window), clean and
abrupt sessions, how often and how fast each abuser was cut off, the server's error counters,
its RSS over time and its growth after ``--warmup``, and what the figures depend on (load
average, CPU of server / clients / other processes, BLAS kernels, gemm plan:
``benchmarks/conditions.py``).

    python benchmarks/soak.py --clients 100 --duration 600 --out soak.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

# f3stream (and torch) are imported where needed, not here: the abusers run this file too,
# as small processes of their own.

SR, HOP = 24000, 960
FRAME_S = HOP / SR
from wsframes import BINARY, PING, TEXT, ws_frame  # noqa: E402  (this folder is on sys.path)


def raw_connect(port: int, returns: str) -> socket.socket:
    """A websocket connection that reads nothing after the upgrade (a 4 KiB receive
    buffer), with a hello for pcm16 audio and ``returns`` back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = sock.recv(1)
        if not b:
            raise ConnectionError("closed during the upgrade")
        head += b
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    hello = {"type": "hello", "version": 1, "sample_rate": SR, "format": "pcm16",
             "return": returns}
    sock.sendall(ws_frame(TEXT, json.dumps(hello).encode()))
    return sock


def abuser(role: str, port: int, until: float, pause: float, speed: float) -> dict:
    """Connects, abuses until the server cuts the connection (or ``until``), pauses,
    repeats. Returns per connection the seconds from hello to cut-off and how it ended."""
    conns = []
    blob = ws_frame(PING, b"p" * 125) * 500
    chunk = ws_frame(BINARY, (os.urandom(2) * (SR // 50)))  # 20 ms of pcm16 noise
    while time.time() < until - 1.0:
        try:
            # the non-reader asks for latents and representations (3.4 kB a frame), so its
            # 500-frame send queue, not the kernel's socket buffers, is what fills
            sock = raw_connect(port, "latents" if role == "flooder" else "both")
        except OSError as e:
            conns.append({"end": f"connect failed: {type(e).__name__}: {e}"})
            time.sleep(pause)
            continue
        t0, sent, end = time.time(), 0, "still open at the end"
        try:
            if role == "flooder":
                while time.time() < until:
                    sock.sendall(blob)
                    sent += len(blob)
            else:
                i = 0
                while time.time() < until:
                    delay = t0 + i * 0.02 / speed - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    sock.sendall(chunk)
                    sent += len(chunk)
                    i += 1
        except socket.timeout:
            end = "send blocked 30 s (not cut off)"
        except OSError as e:  # the server's abort: reset or broken pipe
            end = f"cut off ({type(e).__name__})"
        conns.append({"end": end, "after_s": round(time.time() - t0, 2), "bytes_sent": sent})
        sock.close()
        if end.startswith("cut off"):
            time.sleep(min(pause, max(0.0, until - time.time())))
    return {"role": role, "connections": conns,
            "cut_off": sum(c["end"].startswith("cut off") for c in conns)}


def start_abuser(role: str, port: int, until: float, args):
    import subprocess
    return subprocess.Popen([sys.executable, __file__, "--abuser", role, "--port", str(port),
                             "--until", str(until), "--flood-pause", str(args.flood_pause),
                             "--nonreader-speed", str(args.nonreader_speed)],
                            stdout=subprocess.PIPE, text=True)


# -- the churning clients (one event loop) -----------------------------------------------------
class Tally:
    def __init__(self):
        import array
        self.latency = array.array("d")          # healthy streams, client side, ms
        self.server_latency = array.array("d")
        self.windows: dict[int, list[float]] = {}  # window index -> healthy latencies
        self.clean = self.abrupt = self.expected = self.received = 0
        self.errors: list[str] = []              # healthy (clean-closing) streams only
        self.connect_failures: list[str] = []
        self.abrupt_frames = 0


async def slot(i: int, url: str, t_start: float, until: float, args, audio, tally: Tally,
               window_s: float) -> None:
    import asyncio
    import random

    from f3stream.server.client import AsyncClient

    rng = random.Random(1000 + i)
    phase = i / args.clients * FRAME_S   # frames complete at spread phases (server_load.py)
    step = SR // 50
    await asyncio.sleep(rng.uniform(0, 2.0))  # do not open every connection at once
    while True:
        remaining = until - time.perf_counter()
        if remaining < args.min_session + 1:
            return
        length = min(rng.uniform(args.min_session, args.max_session), remaining - 1)
        abrupt = rng.random() < args.abrupt
        if abrupt:
            length *= rng.uniform(0.2, 1.0)  # vanishes somewhere in the stream
        n = int(length * SR) // step * step
        off = rng.randrange(0, audio.size - n)
        c = AsyncClient(url, returns="latents", format="pcm16")
        try:
            await c.connect()
        except Exception as e:  # noqa: BLE001 - counted; a healthy server refuses nobody
            tally.connect_failures.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(1.0)
            continue
        now = time.perf_counter()
        t0 = now + (phase - now) % FRAME_S
        for k, a in enumerate(range(0, n, step)):
            delay = t0 + k * 0.02 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await c.send_audio(audio[off + a:off + a + step])
        if abrupt:
            c.ws.transport.abort()  # gone: no flush, no close frame
            await c.disconnect()
            tally.abrupt += 1
            tally.abrupt_frames += c.result().n_frames
        else:
            try:
                await c.close(timeout=60)
            except asyncio.TimeoutError:
                tally.errors.append("close timed out")
            res = c.result()
            expected = math.ceil(n / HOP)
            tally.clean += 1
            tally.expected += expected
            tally.received += res.n_frames
            tally.latency.extend(res.latency_ms)
            tally.server_latency.extend(res.server_latency_ms)
            tally.windows.setdefault(int((time.perf_counter() - t_start) // window_s),
                                     []).extend(res.latency_ms)
            if c.error is not None:
                tally.errors.append(f"{c.error.code}: {c.error}")
            await c.disconnect()
        await asyncio.sleep(rng.uniform(0.0, 0.5))


async def clients(port: int, args, until: float) -> tuple[Tally, dict]:
    import asyncio
    import gc
    import urllib.request

    import numpy as np

    url = f"ws://127.0.0.1:{port}"
    audio = (np.random.RandomState(0).randn(int((args.max_session + 5) * SR) * 2) * 3000
             ).astype(np.int16)
    tally = Tally()
    gc.freeze()  # what exists now lives to the end (as in server_load.py)
    t_start = time.perf_counter()
    await asyncio.gather(*(slot(i, url, t_start, until, args, audio, tally, args.window)
                           for i in range(args.clients)))

    def get() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=10) as f:
            return json.loads(f.read())
    return tally, await asyncio.to_thread(get)


def summarize(tally: Tally, metrics: dict, abusers: list[dict], conditions: dict,
              args) -> dict:
    from conditions import rss_growth

    from f3stream.stats import percentile

    def pct(v) -> dict:
        v = list(v)
        return {"p50": percentile(v, 50), "p99": percentile(v, 99),
                "max": max(v) if v else None,
                "messages": len(v)}  # one latency per frame message (a late round's
        # message carries several frames, so this counts fewer than the frames)

    windows = [{"from_s": k * args.window, **pct(v)} for k, v in sorted(tally.windows.items())]
    for w in windows:
        del w["max"]
    return {
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "clients": args.clients, "duration_s": args.duration,
        "session_s": [args.min_session, args.max_session], "abrupt_fraction": args.abrupt,
        "healthy": {"sessions": tally.clean, "frames_expected": tally.expected,
                    "frames_received": tally.received,
                    "frames_lost": tally.expected - tally.received,
                    "errors": tally.errors[:20], "error_count": len(tally.errors),
                    "latency_ms": pct(tally.latency),
                    "server_latency_ms": pct(tally.server_latency),
                    "latency_by_window": windows},
        "abrupt": {"sessions": tally.abrupt, "frames_received": tally.abrupt_frames},
        "connect_failures": tally.connect_failures[:20],
        "abusers": abusers,
        "server_errors": metrics.get("errors"),
        "server_sessions_total": metrics.get("sessions_total"),
        "server_sessions_open_at_end": metrics.get("sessions"),
        "server_mean_batch_sessions": metrics.get("mean_batch_sessions"),
        "server_model_step_ms": metrics.get("model_step_ms"),
        "server_engine": metrics.get("engine"),
        "server_rss_after_warmup": rss_growth(conditions["samples"], args.warmup),
        "conditions": conditions,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100, help="concurrent churning streams")
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default: 600)")
    p.add_argument("--min-session", type=float, default=5.0, help="shortest stream, s")
    p.add_argument("--max-session", type=float, default=20.0, help="longest stream, s")
    p.add_argument("--abrupt", type=float, default=0.3,
                   help="fraction of streams that vanish (TCP abort) instead of closing")
    p.add_argument("--no-flooder", action="store_true")
    p.add_argument("--no-nonreader", action="store_true")
    p.add_argument("--flood-pause", type=float, default=5.0,
                   help="seconds an abuser waits after being cut off (default: 5)")
    p.add_argument("--nonreader-speed", type=float, default=1.0,
                   help="the non-reader's audio rate, x real time (default: 1; at 1 its "
                        "500-frame send queue fills in about 20 s)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before RSS growth is measured (default: a fifth of the run, "
                        "at most 60)")
    p.add_argument("--window", type=float, default=None,
                   help="latency windows, s (default: a tenth of the run)")
    p.add_argument("--interval", type=float, default=None,
                   help="RSS / load sampling period, s (default: duration / 150, 0.5-5)")
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--out", default=None, help="write the JSON report here (also: stdout)")
    p.add_argument("--abuser", choices=("flooder", "nonreader"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.abuser:
        print(json.dumps(abuser(args.abuser, args.port, args.until, args.flood_pause,
                                args.nonreader_speed)))
        return
    if args.clients < 1 or args.duration < args.min_session + 3 or not (
            0 < args.min_session <= args.max_session) or not 0 <= args.abrupt <= 1:
        p.error("need --clients >= 1, 0 < --min-session <= --max-session, --duration >= "
                "--min-session + 3, 0 <= --abrupt <= 1")
    args.warmup = min(60.0, args.duration / 5) if args.warmup is None else args.warmup
    args.window = args.duration / 10 if args.window is None else args.window
    args.interval = (min(5.0, max(0.5, args.duration / 150)) if args.interval is None
                     else args.interval)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import asyncio

    from conditions import Sampler
    from server_load import start_server, stop_server

    from f3stream.server import eventloop

    load_before = os.getloadavg()
    server_args = argparse.Namespace(threads=1, clients=args.clients + 20, model_workers=2,
                                     loop="auto", checkpoint=args.checkpoint, backend=None,
                                     gil_switch_interval=None)
    proc, port = start_server(server_args)
    sampler = Sampler(proc.pid, args.interval).start(load_before)
    procs = []
    try:
        until_wall = time.time() + args.duration
        until = time.perf_counter() + args.duration
        if not args.no_flooder:
            procs.append(start_abuser("flooder", port, until_wall, args))
        if not args.no_nonreader:
            procs.append(start_abuser("nonreader", port, until_wall, args))
        tally, metrics = eventloop.run(asyncio.wait_for(clients(port, args, until),
                                                        args.duration + 180), "auto")
        abusers = [json.loads(pr.communicate(timeout=90)[0]) for pr in procs]
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
        conditions = sampler.stop()
        stop_server(proc)
    report = summarize(tally, metrics, abusers, conditions, args)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    h, rss = report["healthy"], report["server_rss_after_warmup"]
    print(f"healthy sessions {h['sessions']}, frames lost {h['frames_lost']}, latency p50 / "
          f"p99 {h['latency_ms']['p50']} / {h['latency_ms']['p99']} ms; abrupt "
          f"{report['abrupt']['sessions']}; abusers cut off "
          f"{[a['cut_off'] for a in abusers]}; server errors {report['server_errors']}; RSS "
          f"after warm-up {rss.get('first_third_mib')} -> {rss.get('last_third_mib')} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
