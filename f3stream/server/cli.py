"""The ``f3stream serve`` and ``f3stream stream`` subcommands.

Registered into the main parser by :func:`add_subcommands`; ``websockets`` is imported only when
one of them runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

from ..commandline import add_command, add_model_options, load_tokenizer
from ..errors import F3StreamError
from ..threads import limit_threads
from . import eventloop
from .protocol import MAX_TEXT_CHARS

DEFAULT_URL = "ws://127.0.0.1:8765"


class LiveCLIError(F3StreamError):
    """A serve/stream problem reported as one ``f3stream: error:`` line."""


def _need_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise LiveCLIError("this command needs the 'websockets' package: pip install "
                           "'f3stream[server]'") from None


def serve_backend(device: str) -> str:
    """The server's default engine: numba on the CPU when installed (its kernels release the
    GIL and batch without state copies: the fastest server step here), else torch."""
    from ..backends import get_backend

    if device == "cpu" and get_backend("numba").installed():
        return "numba"
    return "torch"


def cmd_serve(args: argparse.Namespace) -> int:
    _need_websockets()
    loop_name, _ = eventloop.loop_factory(args.loop)  # a missing uvloop fails before loading
    from .server import ServerConfig, run_server

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ServerConfig(max_sessions=args.max_sessions, max_message_bytes=args.max_message_bytes,
                       idle_timeout=args.idle_timeout,
                       max_session_seconds=args.max_session_seconds,
                       send_queue=args.send_queue, token=args.token,
                       allowed_origins=args.allowed_origin or None,
                       gil_switch_interval=args.gil_switch_interval,
                       model_workers=args.model_workers)
    tok = load_tokenizer(args, default_backend=serve_backend(args.model_device))
    backend = tok.backend
    warmup = getattr(tok.engine, "warmup", None)
    if warmup is not None:  # compile before listening, not inside the first client's frame
        if not args.quiet:
            print("f3stream serve: preparing the numba kernels (about 30 s the first time, "
                  "then cached)", file=sys.stderr, flush=True)
        warmup()
    limit_threads(args.threads)  # after warmup: numba loads its BLAS when it first compiles

    # The model, torch and numba live as long as the process: keep their objects out of the
    # cyclic GC, whose full passes over them paused a loaded event loop for ~100 ms at a time.
    gc.freeze()

    def ready(server) -> None:
        print(f"f3stream serve: listening on ws://{args.host}:{server.port} (protocol v1, "
              f"{backend} engine, {loop_name} loop; "
              f"health http://{args.host}:{server.port}/health, metrics /metrics and "
              "/metrics.json); "
              "Ctrl-C flushes open sessions and stops", flush=True)

    eventloop.run(run_server(tok, args.host, args.port, cfg, ready), loop_name)
    print("f3stream serve: stopped", flush=True)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    _need_websockets()
    from ..audio import load_audio
    from ..tokens_io import save_tokens
    from .client import ServerError, stream_audio
    from ..stats import percentile

    inp, out = Path(args.input), Path(args.out)
    wav, file_sr = load_audio(inp, args.sample_rate)
    try:
        res = asyncio.run(stream_audio(args.url, wav, chunk_ms=args.chunk_ms,
                                       realtime=not args.as_fast_as_possible,
                                       returns=args.returns, format=args.format,
                                       payload_dtype=args.payload_dtype, token=args.token,
                                       sample_rate=args.sample_rate))
    except ServerError as e:
        raise LiveCLIError(f"server refused the stream: {e}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise LiveCLIError(f"cannot stream to {args.url}: {e or type(e).__name__}") from None
    except Exception as e:  # websockets' InvalidURI / InvalidHandshake / ConnectionClosed
        if type(e).__module__.startswith("websockets"):
            raise LiveCLIError(f"cannot stream to {args.url}: {e}") from None
        raise
    frames = res.as_encoded_frames()
    save_tokens(out, frames, res.sample_rate, res.frame_rate)
    summary = {"frames": res.n_frames, "messages": res.messages,
               "audio_seconds": round(wav.size / args.sample_rate, 3),
               "latency_ms_p50": percentile(res.latency_ms, 50),
               "latency_ms_p99": percentile(res.latency_ms, 99),
               "server_latency_ms_p50": percentile(res.server_latency_ms, 50),
               "server_latency_ms_p99": percentile(res.server_latency_ms, 99),
               "out": str(out)}
    if args.json:
        print(json.dumps(summary))
    else:
        resampled = f" (resampled from {file_sr} Hz)" if file_sr != args.sample_rate else ""
        print(f"streamed {inp}{resampled}: {res.n_frames} frames in {res.messages} messages")
        p50, p99 = summary["latency_ms_p50"], summary["latency_ms_p99"]
        if p50 is not None:
            print(f"  frame latency (last sample sent -> frame received): p50 {p50:.1f} ms, "
                  f"p99 {p99:.1f} ms")
        print(f"  wrote {out}")
    return 0


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in [low, high]. Out-of-range limits used to start a
    server that refused every client (``--max-sessions 0``) or listened elsewhere (``--port
    99999``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


def positive_seconds(text: str) -> float:
    """An argparse ``type=``: a finite time > 0 (``--idle-timeout 0`` closed every session at
    once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def register(subs) -> None:
    """Registers ``serve`` and ``stream`` (their usage errors are one line)."""
    p = add_command(subs, "serve", "run the live websocket server (protocol v1)",
                    "Serves live tokenization over websockets (docs/protocol.md): clients stream "
                    "24 kHz audio and get each 40 ms frame's latents/representations back, or "
                    "stream latents and get audio. Concurrent sessions are batched into one "
                    "model step. GET /health answers JSON, /metrics Prometheus text, "
                    "/metrics.json JSON. SIGINT/SIGTERM flush open sessions and stop. The "
                    "server's default --backend is numba on the CPU when it is installed (else "
                    "torch).",
                    "  f3stream serve --port 8765 --token SECRET\n", cmd_serve)
    add_model_options(p, backend_default="numba on the CPU when installed, else torch")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    p.add_argument("--port", type=int_at_least(0, 65535), default=8765,
                   help="TCP port (default: 8765; 0 = any)")
    p.add_argument("--max-sessions", type=int_at_least(1), default=256, metavar="N",
                   help="concurrent sessions; more are refused with too_many_sessions "
                        "(default: 256)")
    p.add_argument("--max-message-bytes", type=int_at_least(MAX_TEXT_CHARS), default=1 << 20,
                   metavar="BYTES",
                   help="largest message accepted; bigger closes with 1009 (default: 1 MiB; "
                        f"at least {MAX_TEXT_CHARS}, so that a hello always fits)")
    p.add_argument("--idle-timeout", type=positive_seconds, default=30.0, metavar="S",
                   help="close a session silent for this long (default: 30)")
    p.add_argument("--max-session-seconds", type=positive_seconds, default=4 * 3600.0,
                   metavar="S", help="most audio one session may stream (default: 14400)")
    p.add_argument("--send-queue", type=int_at_least(1), default=500, metavar="N",
                   help="outgoing frames buffered per client before it is closed as a slow "
                        "reader (default: 500 = 20 s)")
    p.add_argument("--token", default=None,
                   help="require this token in the hello, and as 'Authorization: Bearer "
                        "TOKEN' for GET /metrics and /metrics.json (/health stays open)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                   help="accept browser connections only from this Origin (repeatable); "
                        "clients that send no Origin are accepted")
    p.add_argument("--threads", type=int_at_least(1), default=1, metavar="N",
                   help="CPU threads of each model step: torch's and the BLAS under the numba "
                        "engine (default: 1, which leaves the other cores to the event loop; "
                        "measured best on 2 cores)")
    p.add_argument("--model-workers", type=int_at_least(1), default=2, metavar="N",
                   help="model rounds computing at once, on disjoint sessions (default: 2: "
                        "input that arrives during a round starts on the other core)")
    p.add_argument("--loop", choices=eventloop.LOOPS, default="auto",
                   help="event loop: uvloop (less CPU per message), the standard asyncio "
                        "loop, or auto = uvloop when installed (default: auto)")
    p.add_argument("--gil-switch-interval", type=positive_seconds, default=0.0005, metavar="S",
                   help=argparse.SUPPRESS)  # see ServerConfig.gil_switch_interval
    p.add_argument("--quiet", action="store_true", help="log warnings only")

    p = add_command(subs, "stream", "stream an audio file to a server, save the tokens",
                    "Streams an audio file (mixed down and resampled to 24 kHz locally) to an "
                    "'f3stream serve' server in real time (or as fast as possible), writes the "
                    "returned tokens as .npz (the 'f3stream encode' format) and reports frames "
                    "and latency.",
                    "  f3stream stream speech.wav --url ws://127.0.0.1:8765 --out tokens.npz\n",
                    cmd_stream)
    p.add_argument("input", metavar="FILE", help="audio file to stream")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default: {DEFAULT_URL})")
    p.add_argument("--out", metavar="FILE.npz", default="tokens.npz",
                   help="output token file (default: tokens.npz)")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="do not pace the audio in real time")
    p.add_argument("--chunk-ms", type=float, default=20.0, metavar="MS",
                   help="audio per message (default: 20)")
    p.add_argument("--return", dest="returns", choices=("latents", "both"), default="both",
                   help="latents only, or latents and representations (default: both)")
    p.add_argument("--format", choices=("pcm16", "float32"), default="float32",
                   help="wire format of the audio (default: float32)")
    p.add_argument("--payload-dtype", choices=("float32", "float16"), default="float32",
                   help="wire dtype of the returned frames (default: float32)")
    p.add_argument("--sample-rate", type=int, default=24000, help=argparse.SUPPRESS)
    p.add_argument("--token", default=None, help="token the server requires")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


__all__ = ["cmd_serve", "cmd_stream", "register"]
