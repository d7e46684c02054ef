"""What an abusive client costs ``f3stream serve``: server memory, CPU and a healthy stream's
latency while one connection misbehaves (docs/server.md, "Limits and what happens at them").

Starts the server in a subprocess with its defaults, runs one healthy real-time client
(pcm16, 20 ms chunks, latents) for the whole run, and one attacker in another process that
speaks raw websocket frames and never reads what the server sends:

* ``ping_flood``: says hello, then sends ping frames (125-byte payloads) as fast as it can.
* ``slow_reader``: says hello (float32, latents and representations), then sends audio as fast
  as it can; the server's send queue fills and it closes the connection with 4008. Measured:
  what the server still reads and spends on the connection after that decision.

Reported per scenario: the server's RSS (peak, at the end), its CPU seconds, whether and when
the attacker's connection was closed, the bytes the attacker got into the server, and the
healthy client's frames lost and latency (client side and the header's server side).

    python benchmarks/server_limits.py --duration 20 > report.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

# f3stream (and torch) are imported in main(), not here: the attacker's process imports this
# module too, and torch's import would take a core from the server for seconds at its start.

from wsframes import BINARY, PING, TEXT, ws_frame  # noqa: E402  (this folder is on sys.path)


def attacker(port: int, scenario: str, duration: float, sent, started_at, closed_at) -> None:
    """Runs in its own process: a raw websocket client that never reads after the upgrade."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    if scenario == "ping_flood":
        hello = {"type": "hello", "version": 1, "sample_rate": 24000, "format": "pcm16"}
        blob = ws_frame(PING, b"p" * 125) * 2000
    else:
        hello = {"type": "hello", "version": 1, "sample_rate": 24000, "format": "float32",
                 "return": "both"}
        audio = (np.random.RandomState(0).randn(960) * 0.1).astype("<f4").tobytes()
        blob = ws_frame(BINARY, audio) * 64
    sock.sendall(ws_frame(TEXT, json.dumps(hello).encode()))
    started_at.value = time.time()
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            sock.sendall(blob)
            with sent.get_lock():
                sent.value += len(blob)
    except OSError:
        closed_at.value = time.time()
    finally:
        sock.close()


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds user + system) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, cpu


def metrics(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=5) as f:
        return json.loads(f.read())


async def scenario_run(scenario: str, port: int, pid: int, duration: float) -> dict:
    from server_load import Barrier, one_client

    from f3stream.stats import percentile

    url = f"ws://127.0.0.1:{port}"
    start = Barrier(1)
    healthy = asyncio.get_running_loop().create_task(
        one_client(url, 0, duration, 20.0, "latents", 0.0, start))
    ctx = mp.get_context("spawn")  # a fresh interpreter, not a fork of this one's event loop
    sent, started_at, closed_at = ctx.Value("q", 0), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    rss0, cpu0 = proc_stats(pid)
    proc = ctx.Process(target=attacker,
                       args=(port, scenario, duration, sent, started_at, closed_at))
    proc.start()
    rss_peak, decided = rss0, None
    while proc.is_alive():
        await asyncio.sleep(0.25)
        rss, cpu = proc_stats(pid)
        rss_peak = max(rss_peak, rss)
        if scenario == "slow_reader" and decided is None:
            m = await asyncio.to_thread(metrics, port)
            if m["errors"].get("slow_reader"):
                decided = {"t": time.time(), "sent": sent.value, "cpu": cpu}
    proc.join()
    rss_end, cpu_end = proc_stats(pid)
    res = await healthy
    t0, closed = started_at.value, closed_at.value or None
    report = {
        "scenario": scenario, "duration_s": duration,
        "server_rss_mib": {"start": round(rss0, 1), "peak": round(rss_peak, 1),
                           "end": round(rss_end, 1)},
        "server_cpu_s": round(cpu_end - cpu0, 2),
        "attacker_bytes_sent": sent.value,
        "attacker_closed_after_s": round(closed - t0, 2) if closed else None,  # from its hello
        "healthy_frames_lost": res["expected"] - res["received"],
        "healthy_error": res["error"],
        "healthy_latency_ms": {"p50": percentile(res["latency"], 50),
                               "p99": percentile(res["latency"], 99),
                               "max": max(res["latency"], default=None)},
        "healthy_server_latency_ms": {"p50": percentile(res["server_latency"], 50),
                                      "p99": percentile(res["server_latency"], 99)},
        "server_errors": (await asyncio.to_thread(metrics, port))["errors"],
    }
    if scenario == "slow_reader":
        report["slow_reader_closed_after_s"] = round(decided["t"] - t0, 2) if decided else None
        if decided:
            end = closed or time.time()
            report["after_close_decision"] = {  # bytes: what the attacker still got sent,
                # i.e. what the server read then, plus at most what the socket buffers hold
                "bytes_read_by_server": sent.value - decided["sent"],
                "server_cpu_s": round(cpu_end - decided["cpu"], 2),
                "connection_open_s": round(end - decided["t"], 2),
            }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each attack")
    p.add_argument("--scenario", action="append", choices=("ping_flood", "slow_reader"),
                   help="repeatable (default: both)")
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--label", default="", help="copied into the report (e.g. the commit)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from server_load import start_server, stop_server

    from f3stream.server import eventloop

    server_args = argparse.Namespace(threads=1, clients=4, model_workers=2, loop="auto",
                                     checkpoint=args.checkpoint, backend=None,
                                     gil_switch_interval=None)
    reports = []
    for scenario in args.scenario or ["ping_flood", "slow_reader"]:
        proc, port = start_server(server_args)
        try:
            reports.append(eventloop.run(asyncio.wait_for(
                scenario_run(scenario, port, proc.pid, args.duration), args.duration * 3 + 60),
                "auto"))
        finally:
            stop_server(proc)
    print(json.dumps({"label": args.label, "date": time.strftime("%Y-%m-%d"),
                      "load_average_at_end": os.getloadavg(), "runs": reports}, indent=2))


if __name__ == "__main__":
    main()
