"""Bounded load test of ``f3stream serve``: N concurrent real-time clients on loopback.

Starts the server in a subprocess (so clients and server do not share an event loop), runs N
clients that each stream noise in real time in 20 ms chunks for DURATION seconds, and reports
frames lost (expected minus received; must be 0), client-side frame latency (the send of the
chunk that completed a frame -> that frame's arrival) and the server's own receive -> send
latency from the frame headers. Streaming starts once every client is connected; client i
completes its frames i/N of a frame after client 0 (uniform phases, as independent callers
have), or all at the same instant with --aligned.

    python benchmarks/server_load.py --clients 100 --duration 20 --return latents
    python benchmarks/server_load.py --clients 100 --duration 20 --direction decode
    python benchmarks/server_load.py --clients 100 --duration 20 --vad   # + voice activity
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
from conditions import Sampler

from f3stream.backends import BACKENDS
from f3stream.server import eventloop
from f3stream.server.client import AsyncClient
from f3stream.stats import percentile

SR, HOP = 24000, 960


FRAME_S = HOP / SR


class Barrier:
    """Streaming starts once every client is connected: the figures are steady-state ones,
    not the ramp of N handshakes (which the client process does on the same cores)."""

    def __init__(self, n: int):
        self.n = n
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.n -= 1
        if self.n == 0:
            # what exists now (torch, numpy, the clients' audio) lives to the end: keep it out
            # of the cyclic GC, whose full passes over it stalled every client for ~130 ms
            gc.freeze()
            self.event.set()
        await self.event.wait()


def first_send_time(phase: float) -> float:
    """The first instant from now on that lies ``phase`` past a frame boundary of the shared
    clock. Sending on this grid (not from whenever the connection happened to open) keeps the
    clients' phases where the caller put them: connections open in bursts, and clocking each
    client from its own handshake lined their frames up into bursts."""
    now = time.perf_counter()
    return now + (phase - now) % FRAME_S


async def one_decode_client(url: str, seed: int, duration: float, phase: float,
                            start: "Barrier") -> dict:
    """Sends one latent frame every 40 ms (as an agent generating speech would) and receives
    the decoded audio; a frame counts as received when its 960 samples have arrived."""
    rng = np.random.RandomState(seed)
    n = int(duration * SR / HOP)
    z = rng.randn(n, 64).astype(np.float32)
    async with AsyncClient(url, direction="decode") as c:
        await start.wait()
        t0 = first_send_time(phase)
        late = 0
        for i in range(n):
            delay = t0 + i * HOP / SR - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -HOP / SR:
                late += 1
            await c.send_latents(z[i:i + 1])
        await c.close(timeout=60)
        res = c.result()
        err = c.error
    samples = 0 if res.audio is None else res.audio.size
    return {"expected": n, "received": samples // HOP, "latency": res.latency_ms,
            "server_latency": res.server_latency_ms, "late_sends": late,
            "error": str(err) if err else None}


async def one_client(url: str, seed: int, duration: float, chunk_ms: float, returns: str,
                     phase: float, start: "Barrier", vad: bool = False) -> dict:
    """Streams noise (with ``vad``, the VAD's cost does not depend on what it hears)."""
    rng = np.random.RandomState(seed)
    n = int(duration * SR)
    wav = (rng.randn(n) * 0.1).astype(np.float32)
    step = int(SR * chunk_ms / 1000)
    async with AsyncClient(url, returns=returns, format="pcm16", vad=vad) as c:
        await start.wait()
        t0 = first_send_time(phase)
        late = 0
        for i, a in enumerate(range(0, n, step)):
            delay = t0 + i * chunk_ms / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -chunk_ms / 1000:
                late += 1
            await c.send_audio(wav[a:a + step])
        await c.close(timeout=60)
        res = c.result()
        err = c.error
    return {"expected": math.ceil(n / HOP), "received": res.n_frames,
            "latency": res.latency_ms, "server_latency": res.server_latency_ms,
            "late_sends": late, "error": str(err) if err else None,
            "speech_probs": 0 if res.speech_prob is None else res.speech_prob.size}


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (serve flushes its sessions and exits), then kill after 30 s."""
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_server(args) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "f3stream", "serve", "--port", "0", "--quiet",
           "--threads", str(args.threads), "--max-sessions", str(args.clients + 10),
           "--model-workers", str(args.model_workers)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.gil_switch_interval is not None:
        cmd += ["--gil-switch-interval", str(args.gil_switch_interval)]
    cmd += ["--loop", args.loop]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # serve's own defaults
    line = proc.stdout.readline()
    m = re.search(r"ws://[\d.]+:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(m.group(1))


async def run(args, port: int) -> dict:
    url = f"ws://127.0.0.1:{port}"
    # client i completes its frames i/N of a frame after the others' (uniform phases, as
    # independent callers have), or all at the same instant with --aligned (the worst burst)
    phases = [0.0 if args.aligned else i / args.clients * FRAME_S for i in range(args.clients)]
    start = Barrier(args.clients)
    if args.direction == "decode":
        clients = [one_decode_client(url, i, args.duration, phases[i], start)
                   for i in range(args.clients)]
    else:
        clients = [one_client(url, i, args.duration, args.chunk_ms, args.returns, phases[i],
                              start, args.vad) for i in range(args.clients)]
    results = await asyncio.gather(*clients)
    lat = [x for r in results for x in r["latency"]]
    slat = [x for r in results for x in r["server_latency"]]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=5) as f:
        metrics = json.loads(f.read())
    return {
        "clients": args.clients, "duration_s": args.duration, "direction": args.direction,
        "return": args.returns if args.direction == "encode" else "audio",
        "vad": args.vad,
        "chunk_ms": args.chunk_ms, "phases": "aligned" if args.aligned else "uniform",
        "server_threads": args.threads, "model_workers": args.model_workers,
        "backend": args.backend,
        "gil_switch_interval": args.gil_switch_interval,
        "loop": eventloop.loop_factory(args.loop)[0],
        "load_average_at_end": os.getloadavg(),
        "frames_expected": sum(r["expected"] for r in results),
        "frames_received": sum(r["received"] for r in results),
        "frames_lost": sum(r["expected"] - r["received"] for r in results),
        "client_errors": [r["error"] for r in results if r["error"]],
        "late_client_sends": sum(r["late_sends"] for r in results),
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                       "max": max(lat) if lat else None},
        "server_latency_ms": {"p50": percentile(slat, 50), "p99": percentile(slat, 99),
                              "max": max(slat) if slat else None},
        "server_mean_batch_sessions": metrics.get("mean_batch_sessions"),
        "server_model_step_ms": metrics.get("model_step_ms"),
        # with --vad: frames that came with a speech probability, and the VAD model's work
        "frames_with_speech_prob": sum(r.get("speech_probs", 0) for r in results),
        "server_vad": metrics.get("vad"),
        "server_engine": metrics.get("engine"),  # engine, gemm plan, BLAS kernels
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of audio per client")
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--direction", choices=("encode", "decode"), default="encode",
                   help="encode: audio in, tokens out; decode: one latent frame per 40 ms in, "
                        "audio out")
    p.add_argument("--vad", action="store_true",
                   help="clients ask for voice activity (hello \"vad\": true, protocol v2)")
    p.add_argument("--return", dest="returns", default="latents",
                   choices=("latents", "representations", "both"))
    p.add_argument("--aligned", action="store_true",
                   help="all clients complete their frames at the same instant (worst-case "
                        "bursts) instead of at phases spread evenly over a frame")
    p.add_argument("--threads", type=int, default=1,
                   help="server threads per model step (serve --threads)")
    p.add_argument("--model-workers", type=int, default=2,
                   help="serve --model-workers (default: 2, serve's default)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="server model backend (default: the server's default)")
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--loop", choices=eventloop.LOOPS, default="auto",
                   help="event loop of the server and of the clients (default: auto = uvloop "
                        "when installed)")
    p.add_argument("--gil-switch-interval", type=float, default=None,
                   help="passed to the server (default: the server's default)")
    args = p.parse_args()
    load_before = os.getloadavg()
    proc, port = start_server(args)
    sampler = Sampler(proc.pid).start(load_before)  # load, CPU of server / clients / others
    try:
        report = eventloop.run(asyncio.wait_for(run(args, port), args.duration * 3 + 60),
                               args.loop)
    finally:
        conditions = sampler.stop()
        stop_server(proc)
    report["conditions"] = conditions
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
