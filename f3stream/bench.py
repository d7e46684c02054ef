"""``f3stream bench``: latency, real-time factor, memory and cold start of every backend.

Why a built-in command: the figures that matter for streaming (per-frame latency at batch 1,
how many real-time streams one core sustains) depend on the machine, so users should be able to
measure them where they deploy, with the same code that produced the published table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS, get_backend
from .commandline import add_command, add_model_options
from .errors import F3StreamError
from .fileio import atomic_write_bytes
from .stats import percentile
from .threads import limit_threads

DEFAULT_BACKENDS = BACKENDS   # every backend of the registry


def _engine_options(backend: str, threads: int) -> dict[str, int]:
    """The engines that take options take ``threads`` (ONNX Runtime's own thread pool); the
    others run on the threads :func:`limit_threads` sets."""
    return {"threads": threads} if get_backend(backend).takes_options else {}


def _load(checkpoint: str | None, backend: str, threads: int):
    from .tokenizer import Tokenizer

    return Tokenizer.load(checkpoint, "cpu", backend, **_engine_options(backend, threads))


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"p50_ms": float(percentile(a, 50)), "p99_ms": float(percentile(a, 99)),
            "mean_ms": float(a.mean())}


def _speech(tok, seconds: float) -> np.ndarray:
    """The bundled speech sample, looped to ``seconds``."""
    from .audio import load_audio

    wav, _ = load_audio(Path(__file__).parent / "assets" / "sample.wav", tok.sample_rate)
    n = int(seconds * tok.sample_rate)
    return np.resize(wav, n).astype(np.float32)


def measure_backends(backends: list[str], checkpoint: str | None, seconds: float = 10.0,
                     frames: int = 300, threads: int = 1) -> dict[str, dict[str, Any]]:
    """Step latency (batch 1, through the session API), offline RTFs, state sizes and batched
    capacity. Backends are *interleaved* frame by frame and run by run, so on a shared or
    throttled machine they all see the same conditions and their ratios stay meaningful."""
    toks = {b: _load(checkpoint, b, threads) for b in backends}
    limit_threads(threads)
    any_tok = next(iter(toks.values()))
    hop = any_tok.hop_length
    audio = _speech(any_tok, max(seconds, (frames + 20) * hop / any_tok.sample_rate))
    sessions = {b: (t.session(), t.decoder_session()) for b, t in toks.items()}
    enc_t: dict[str, list[float]] = {b: [] for b in toks}
    dec_t: dict[str, list[float]] = {b: [] for b in toks}
    for i in range(10 + frames):
        chunk = audio[i * hop:(i + 1) * hop]
        for b, (enc, dec) in sessions.items():
            t0 = time.perf_counter()
            out = enc.push(chunk)
            t1 = time.perf_counter()
            dec.push(out.latents)
            t2 = time.perf_counter()
            if i >= 10:  # the first frames warm up JIT, allocator and caches
                enc_t[b].append(t1 - t0)
                dec_t[b].append(t2 - t1)
    clip = audio[:int(seconds * any_tok.sample_rate)]
    rtf_enc: dict[str, list[float]] = {b: [] for b in toks}
    rtf_dec: dict[str, list[float]] = {b: [] for b in toks}
    for _ in range(2):
        for b, tok in toks.items():
            t0 = time.perf_counter()
            latents = tok.tokenize(clip).latents
            t1 = time.perf_counter()
            tok.decode(latents)
            t2 = time.perf_counter()
            rtf_enc[b].append((t1 - t0) / seconds)
            rtf_dec[b].append((t2 - t1) / seconds)
    batched = batched_streams(toks)
    frame_s = 1.0 / any_tok.frame_rate
    out: dict[str, dict[str, Any]] = {}
    for b in toks:
        enc, dec = sessions[b]
        per_stream = float(np.mean(enc_t[b]) + np.mean(dec_t[b]))
        out[b] = {
            "backend": b,
            "encode_step": _percentiles(enc_t[b]),  # 1 frame in: latents + representations
            "decode_step": _percentiles(dec_t[b]),  # 1 frame of latents in: 40 ms of audio
            "encode_represent_rtf": min(rtf_enc[b]),  # offline, `seconds` of audio
            "decode_rtf": min(rtf_dec[b]),
            "encoder_state_bytes": enc.state_nbytes,
            "decoder_state_bytes": dec.state_nbytes,
            "streams_per_core": int(frame_s // per_stream),  # encode+decode, batch 1, serial
            "encode_streams_per_core": int(frame_s // float(np.mean(enc_t[b]))),
            "batched_streams_per_core": batched[b]["streams"],
            "batched_tick_ms": batched[b]["tick_ms_by_batch"],
            "frames": frames, "seconds": seconds,
        }
    return out


def batched_streams(toks: dict, max_streams: int = 256, budget_s: float | None = None,
                    repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Streams one core keeps real-time when their frames are stepped together (one batched
    encode+represent+decode per 40 ms tick, as ``Tokenizer.step_sessions`` batches): doubles
    the batch until a tick no longer fits in ``budget_s`` (default: one frame period)."""
    any_tok = next(iter(toks.values()))
    hop = any_tok.hop_length
    budget = budget_s if budget_s is not None else 1.0 / any_tok.frame_rate
    audio = _speech(any_tok, 4.0)
    res = {b: {"streams": 0, "tick_ms_by_batch": {}, "budget_ms": budget * 1e3} for b in toks}

    def ticks(backends: list[str], n: int) -> None:
        # pooled states stepped in place, as a server's state pools are
        states = {b: (toks[b].engine.init_encode_state(n, True),
                      toks[b].engine.init_decode_state(n)) for b in backends}
        rows = np.arange(n)
        times: dict[str, list[float]] = {b: [] for b in backends}
        for i in range(repeats + 2):
            wav = np.repeat(audio[None, i * hop:(i + 1) * hop], n, axis=0)
            for b in backends:
                eng = toks[b].engine
                enc, dec = states[b]
                t0 = time.perf_counter()
                z, _ = eng.encode_rows(wav, enc, rows)
                eng.decode_rows(z, dec, rows)
                times[b].append(time.perf_counter() - t0)
        for b in backends:
            tick = float(np.median(times[b][2:]))
            res[b]["tick_ms_by_batch"][str(n)] = tick * 1e3
            if tick <= budget:
                res[b]["streams"] = max(res[b]["streams"], n)

    live, n = list(toks), 1
    while live and n <= max_streams:  # doubling, all backends interleaved
        ticks(live, n)
        live = [b for b in live if res[b]["streams"] == n]
        n *= 2
    for b in toks:  # then bisect between the last batch that fit and the first that did not
        lo = res[b]["streams"]
        hi = min(2 * lo, max_streams + 1) if lo else 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ticks([b], mid)
            lo, hi = (mid, hi) if res[b]["streams"] >= mid else (lo, mid)
    return res


_COLD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch
torch.set_num_threads({threads})
import f3stream
tok = f3stream.load({checkpoint!r}, "cpu", {backend!r}{options})
t1 = time.perf_counter()
z = tok.session().push(np.zeros(tok.hop_length, np.float32)).latents
wav = tok.decoder_session().push(z)
t2 = time.perf_counter()
print(json.dumps({{"load_s": t1 - t0, "first_frame_s": t2 - t1, "total_s": t2 - t0,
                  "latent_shape": list(z.shape), "audio_samples": int(wav.size),
                  "finite": bool(np.isfinite(z).all() and np.isfinite(wav).all())}}))
"""


def measure_cold_start(backend: str, checkpoint: str | None, threads: int = 1,
                       empty_caches: bool = False) -> dict[str, float]:
    """A fresh process: import + load + first encoded and decoded frame. With ``empty_caches``
    the Numba kernel cache and the ONNX export cache start empty (a first run after install)."""
    options = "".join(f", {k}={v!r}" for k, v in _engine_options(backend, threads).items())
    code = _COLD.format(threads=threads, checkpoint=checkpoint, backend=backend,
                        options=options)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        if empty_caches:
            env.update(NUMBA_CACHE_DIR=tmp, F3STREAM_CACHE_DIR=tmp)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=600)
    if res.returncode:
        raise F3StreamError(f"cold-start run of backend {backend} failed: "
                            f"{res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_mimi(frames: int = 100, threads: int = 1, toks: dict | None = None
                 ) -> dict[str, Any] | None:
    """Kyutai Mimi (random weights, same architecture) stepped on its 80 ms frames; None when
    the optional ``moshi`` package is not installed. With ``toks`` (backend -> Tokenizer),
    each Mimi frame is followed by the same 80 ms through every f3stream backend, so the
    speed ratios compare both under the same machine load."""
    try:
        import torch
        from moshi.models import loaders
    except ImportError:
        return None
    limit_threads(threads)
    t0 = time.perf_counter()
    model = loaders.get_mimi(None, device="cpu").eval()
    build_s = time.perf_counter() - t0
    frame = int(model.frame_size)
    toks = toks or {}
    audio = None
    if toks:
        any_tok = next(iter(toks.values()))
        if any_tok.sample_rate != model.sample_rate:
            toks = {}
        else:
            audio = _speech(any_tok, (frames + 10) * frame / model.sample_rate)
    x = torch.zeros(1, 1, frame)
    sessions = {b: (t.session(), t.decoder_session()) for b, t in toks.items()}
    enc_t, dec_t = [], []
    f3_t: dict[str, list[float]] = {b: [] for b in toks}
    with torch.no_grad(), model.streaming(1):
        for i in range(frames + 5):
            if audio is not None:
                x = torch.from_numpy(audio[i * frame:(i + 1) * frame]).view(1, 1, -1)
            t0 = time.perf_counter()
            codes = model.encode(x)
            t1 = time.perf_counter()
            decoded = model.decode(codes)
            t2 = time.perf_counter()
            if i >= 5:
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
            for b, (enc, dec) in sessions.items():
                t3 = time.perf_counter()
                dec.push(enc.push(audio[i * frame:(i + 1) * frame]).latents)
                if i >= 5:
                    f3_t[b].append(time.perf_counter() - t3)
    frame_s = frame / model.sample_rate
    per = float(np.mean(enc_t) + np.mean(dec_t))
    out = {"frame_ms": 1e3 * frame_s, "encode_step": _percentiles(enc_t),
           "decode_step": _percentiles(dec_t), "rtf": per / frame_s,
           "streams_per_core": int(frame_s // per), "build_s": build_s, "frames": frames,
           "weights": "random (moshi.models.loaders.get_mimi(None))",
           # what the last step computed: [batch, codebooks, frames] codes, frame_size samples
           "codes_shape": list(codes.shape), "decoded_samples": int(decoded.shape[-1]),
           "decoded_finite": bool(torch.isfinite(decoded).all()),
           "interleaved_f3_rtf": {b: float(np.mean(t)) / frame_s for b, t in f3_t.items()}}
    return out


def run_bench(backends: list[str], checkpoint: str | None = None, seconds: float = 10.0,
              frames: int = 300, threads: int = 1, cold_start: bool = True,
              first_run: bool = False, mimi: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(threads),
                              "checkpoint": checkpoint or "bundled", "backends": {},
                              # a shared machine's load moves every figure: record it
                              "load_average_before": list(os.getloadavg())}
    measured = measure_backends(backends, checkpoint, seconds, frames, threads)
    for b in backends:
        r = measured[b]
        if cold_start:
            r["cold_start"] = measure_cold_start(b, checkpoint, threads)
        if first_run:
            r["first_run"] = measure_cold_start(b, checkpoint, threads, empty_caches=True)
        report["backends"][b] = r
    if mimi:
        toks = {b: _load(checkpoint, b, threads) for b in backends}
        m = measure_mimi(max(20, frames // 3), threads, toks)
        if m is not None:
            report["mimi"] = m
            for b, rtf in m["interleaved_f3_rtf"].items():
                report["backends"][b]["speedup_vs_mimi"] = m["rtf"] / rtf
    from .threads import blas_info

    report["blas"] = blas_info()  # the kernels numba's products ran on
    if "numba" in backends:  # and how it split them (measured once per process, cached)
        from .backends.numba import gemm_plan

        report["gemm_plan"] = list(gemm_plan())
    report["load_average_after"] = list(os.getloadavg())
    return report


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = ""
    if "load_average_before" in report:
        load = (f" Load average (1 min) {report['load_average_before'][0]:.1f} before, "
                f"{report.get('load_average_after', [float('nan')])[0]:.1f} after.")
    lines = [f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} "
             f"thread(s); torch {m['torch']}, Python {m['python']}.{load}", "",
             "| backend | encode step p50 / p99 (ms) | decode step p50 / p99 (ms) | "
             "encode+represent RTF | decode RTF | state enc / dec (KiB) | cold start (s) | "
             "streams / core (serial / batched) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["backends"].items():
        e, d = r["encode_step"], r["decode_step"]
        cold = r.get("cold_start", {}).get("total_s")
        lines.append(
            f"| {name} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {d['p50_ms']:.2f} / "
            f"{d['p99_ms']:.2f} | {r['encode_represent_rtf']:.4f} | {r['decode_rtf']:.4f} | "
            f"{r['encoder_state_bytes'] / 1024:.0f} / {r['decoder_state_bytes'] / 1024:.0f} | "
            f"{'-' if cold is None else f'{cold:.2f}'} | {r['streams_per_core']} / "
            f"{r['batched_streams_per_core']} |")
    if "mimi" in report:
        mm = report["mimi"]
        lines += ["", f"Kyutai Mimi peer ({mm['weights']}, {mm['frame_ms']:g} ms frames): "
                      f"encode {mm['encode_step']['p50_ms']:.1f} ms + decode "
                      f"{mm['decode_step']['p50_ms']:.1f} ms per frame (p50), RTF "
                      f"{mm['rtf']:.3f}, {mm['streams_per_core']} streams / core."]
        lines += [f"- f3stream {n} is {r['speedup_vs_mimi']:.0f}x faster per second of audio "
                  "(encode+represent+decode, streaming, batch 1, interleaved with Mimi)"
                  for n, r in report["backends"].items() if "speedup_vs_mimi" in r]
    lines += ["", "Steps are 1 frame (40 ms) at batch 1 through the session API; the encode "
                  "step includes the representation encoder. RTF = compute time / audio "
                  "duration (offline, lower is faster). Streams / core, serial = 40 ms / (mean "
                  "encode + mean decode step of one session); batched = the largest number of "
                  "sessions whose frames, stepped together (encode+represent+decode at batch N, "
                  "median of 5 ticks), still take under 40 ms. Cold start = new process: "
                  "import, load, first frame (caches warm)."]
    return "\n".join(lines) + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise F3StreamError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if args.threads < 1:
        raise F3StreamError("--threads must be >= 1")
    report = run_bench(backends, args.checkpoint, args.seconds, args.frames, args.threads,
                       cold_start=not args.no_cold_start, first_run=args.first_run,
                       mimi=not args.no_mimi)
    report["command"] = "f3stream bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    out = Path(args.out)
    md = to_markdown(report)
    atomic_write_bytes(out / "bench.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out / "bench.md", md.encode())
    print(md, end="")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


def register(subs) -> None:
    """Registers ``f3stream bench``."""
    p = add_command(subs, "bench", "measure latency, real-time factor, memory per backend",
                    "Measures per-frame step latency at batch 1 (p50/p99), offline encode+"
                    "represent and decode real-time factors, state bytes per session, "
                    "cold-start time and how many real-time streams one core sustains, for each "
                    "backend; writes bench.json and bench.md into --out.",
                    "  f3stream bench --threads 1 --out bench-results\n", cmd_bench)
    add_model_options(p, device=None, backend=False)  # --checkpoint; --backends below
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help="comma-separated backends to measure (default: "
                        f"{','.join(DEFAULT_BACKENDS)})")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch / BLAS / ONNX Runtime (default: 1)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="audio length for the offline RTF runs (default: 10)")
    p.add_argument("--frames", type=int, default=300,
                   help="frames stepped one at a time for the latency percentiles (default: 300)")
    p.add_argument("--out", metavar="DIR", default="f3stream-bench",
                   help="output directory for bench.json and bench.md (default: ./f3stream-bench)")
    p.add_argument("--no-cold-start", action="store_true",
                   help="skip the fresh-process cold-start runs")
    p.add_argument("--first-run", action="store_true",
                   help="also time a fresh process with empty Numba / ONNX caches")
    p.add_argument("--no-mimi", action="store_true",
                   help="skip the Kyutai Mimi peer even if 'moshi' is installed")
