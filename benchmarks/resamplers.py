"""Streaming resamplers compared: the microphone demo's former hand-written polyphase FIR
(``StreamingResampler``, taken from ``f3stream/mic.py`` at commit 46d0a8a, the *before*) and
libsoxr's ``ResampleStream`` (``f3stream.resampling.StreamResampler``, the *after*).

For each rate pair: passband error (the worst |gain| in dB of tones from 100 Hz to 90 % of the
lower Nyquist frequency), aliasing (the loudest output, in dB relative to the input tone, of
tones between the output's Nyquist frequency and the input's, which a downsampler must remove),
latency (input that must follow an impulse before its output returns) and speed (CPU time per
20 ms block, streamed). Run in the repository (it reads the *before* from git) with
``nice -n 19 python benchmarks/resamplers.py [--json out]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from f3stream.resampling import StreamResampler

PAIRS = [(48000, 24000), (44100, 24000), (16000, 24000), (24000, 48000), (24000, 44100)]


BEFORE = "46d0a8a"  # the last commit whose f3stream/mic.py has the hand-written FIR


@lru_cache(maxsize=1)
def _before_mic() -> types.ModuleType:
    """f3stream/mic.py as it was at BEFORE, loaded as a module of the package."""
    src = subprocess.run(["git", "show", f"{BEFORE}:f3stream/mic.py"], check=True,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    mod = types.ModuleType("f3stream._mic_before")
    mod.__package__ = "f3stream"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{BEFORE}:f3stream/mic.py", "exec"), mod.__dict__)
    return mod


def fir(a: int, b: int):
    r = _before_mic().StreamingResampler(a, b)
    return r.process, r.flush


def soxr_stream(a: int, b: int):
    r = StreamResampler(a, b)
    return r.process, r.flush


MAKERS: dict[str, Callable] = {"fir (before)": fir, "soxr (after)": soxr_stream}


def run_all(make, a: int, b: int, x: np.ndarray, block: int) -> np.ndarray:
    process, flush = make(a, b)
    parts = [process(x[i:i + block]) for i in range(0, x.size, block)]
    return np.concatenate(parts + [flush()])


def tone_gain_db(make, a: int, b: int, f: float) -> float:
    n = a  # 1 s
    x = (0.5 * np.sin(2 * np.pi * f * np.arange(n) / a)).astype(np.float32)
    y = run_all(make, a, b, x, a // 50)
    mid = y[b // 4: 3 * b // 4]  # away from the edges
    return 20 * np.log10(max(np.sqrt(np.mean(mid ** 2)), 1e-12) / (0.5 / np.sqrt(2)))


def latency_ms(make, a: int, b: int) -> float:
    """Input that must follow an impulse (after 1 s of silence) before the output sample where
    its response peaks is returned: the filter's group delay plus what the resampler holds
    back."""
    x = np.zeros(2 * a, np.float32)
    x[a] = 1.0
    peak = int(np.argmax(run_all(make, a, b, x, a)))
    process, _ = make(a, b)
    got = process(x[:a + 1]).size
    after = 0
    while got <= peak:
        got += process(np.zeros(1, np.float32)).size
        after += 1
    return after / a * 1000


def us_per_block(make, a: int) -> float:
    x = np.random.RandomState(0).randn(10 * a).astype(np.float32) * 0.1
    block = a // 50
    process, _ = make(a, 24000 if a != 24000 else 48000)
    t = time.process_time()
    for i in range(0, x.size, block):
        process(x[i:i + block])
    return (time.process_time() - t) / (x.size / block) * 1e6


def measure(make, a: int, b: int) -> dict[str, float]:
    lo = min(a, b) / 2
    passband = [tone_gain_db(make, a, b, f) for f in np.linspace(100, 0.9 * lo, 40)]
    out = {"passband_worst_db": round(float(max(abs(g) for g in passband)), 3),
           "latency_ms": round(latency_ms(make, a, b), 2)}
    if a > b:  # downsampling: tones above the output's Nyquist frequency must vanish
        alias = [tone_gain_db(make, a, b, f) for f in np.linspace(1.05 * lo, 0.98 * a / 2, 40)]
        out["aliasing_worst_db"] = round(float(max(alias)), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    res: dict[str, dict] = {}
    for name, make in MAKERS.items():
        for a, b in PAIRS:
            m = measure(make, a, b)
            m["us_per_20ms_block"] = round(us_per_block(lambda x, y: make(a, b), a), 1)
            res[f"{name} {a}->{b}"] = m
            print(f"{name:13s} {a:>5d} -> {b:>5d}: {m}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
