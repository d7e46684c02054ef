"""``f3stream mic``: the command (registered by f3stream.cli). It opens the devices, runs the
audio callbacks and the status loop on the main thread around a :class:`MicPipeline`, and writes
tokens.npz, captured.wav (and reconstruction.wav) and a summary when stopped."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..commandline import add_command, add_model_options, load_tokenizer
from ..resampling import StreamResampler, stream_latency_ms
from .devices import import_sounddevice, list_devices, resolve_input, resolve_output
from .errors import MicError, one_line
from .pipeline import MicPipeline, MicResult
from .playback import PlaybackBuffer, ResamplingReader, drain_playback
from .status import StatusPrinter, pct

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

NO_AUDIO_GRACE_S = 10.0    # --seconds N gives up N + this many seconds after the start


def _check_out_dir(out: Path) -> None:
    """Fails before the model loads, not after the capture, when ``--out`` cannot be a
    directory (it, or its nearest existing ancestor, is a file)."""
    for p in [out, *out.absolute().parents]:
        if p.exists():
            if not p.is_dir():
                raise MicError(f"cannot write into {out}: {p} is not a directory")
            break


def cmd_mic(args: argparse.Namespace) -> int:
    """Runs ``f3stream mic``: captures until Ctrl-C or ``--seconds``, then saves; 0 on success,
    raises :class:`MicError` (one error line, exit status 2) otherwise."""
    sd = import_sounddevice()
    if args.list_devices:
        print(list_devices())
        return 0
    if args.seconds is not None and not args.seconds > 0:
        raise MicError(f"--seconds must be positive, got {args.seconds:g}")
    out_dir = Path(args.out)
    _check_out_dir(out_dir)

    from ..tokens_io import save_tokens
    from ..audio import write_audio

    if args.capture_rate is not None and args.capture_rate <= 0:
        raise MicError(f"--capture-rate must be positive, got {args.capture_rate}")
    if args.queue_blocks < 1 or not args.block_ms > 0:
        raise MicError("--queue-blocks must be >= 1 and --block-ms positive")
    tok = load_tokenizer(args)
    in_index, in_name, in_rate = resolve_input(sd, args.device, args.capture_rate
                                               or tok.sample_rate, strict=bool(args.capture_rate))
    out_index = out_name = out_rate = None
    if args.playback:
        out_index, out_name, out_rate = resolve_output(sd, args.output_device, tok.sample_rate)
    _warm_up(tok, not args.no_representations)

    playback = PlaybackBuffer(prefill=2 * tok.hop_length) if args.playback else None
    pipe = MicPipeline(tok, in_rate, representations=not args.no_representations,
                       decode=args.save_reconstruction, playback=playback,
                       max_queue_blocks=args.queue_blocks)
    blocksize = max(1, int(round(in_rate * args.block_ms / 1000.0)))

    def on_input(indata, frames, time_info, status) -> None:
        now = time.monotonic()
        if status.input_overflow:
            pipe.stats.overflows += 1
        adc = float(time_info.inputBufferAdcTime)
        t_last = now
        if adc > 0.0:   # PortAudio's clock -> ours, via the callback's own timestamp
            # clamped: a sample cannot be captured after the callback delivering it, yet some
            # host APIs (ALSA's pulse plugin) report ADC times ~1 block in the future
            t_last = min(now, adc + (now - float(time_info.currentTime))
                         + (frames - 1) / in_rate)
        pipe.submit(indata[:, 0].copy(), t_last)

    out_stream = None
    out_resampler = (StreamResampler(tok.sample_rate, out_rate)
                     if args.playback and out_rate != tok.sample_rate else None)
    if args.playback:
        play_buf = playback
        if out_resampler is not None:  # resample in the callback's pull: keep a second FIFO
            play_buf = ResamplingReader(playback, out_resampler, tok.sample_rate, out_rate)

        def on_output(outdata, frames, time_info, status) -> None:
            outdata[:, 0] = play_buf.read(frames)

    try:
        in_stream = sd.InputStream(device=in_index, samplerate=in_rate, channels=1,
                                   dtype="float32", blocksize=blocksize, latency="low",
                                   callback=on_input)
        if args.playback:
            out_stream = sd.OutputStream(device=out_index, samplerate=out_rate, channels=1,
                                         dtype="float32", latency="low", callback=on_output)
    except (sd.PortAudioError, ValueError) as e:
        raise MicError(f"cannot open audio device: {one_line(e)}") from None

    how = (f"{in_rate} Hz" if in_rate == tok.sample_rate else
           f"{in_rate} Hz, resampled to {tok.sample_rate} Hz (soxr, adds "
           f"{stream_latency_ms(in_rate, tok.sample_rate):g} ms)")
    printer = StatusPrinter()
    pipe.start()
    stopped_by = "time limit"
    t_start = time.monotonic()
    # Ctrl-C sets a flag that the capture loop polls, instead of raising KeyboardInterrupt
    # wherever the main thread happens to be: an exception raised inside a finalizer or a
    # callback is printed and dropped, and then the loop never ended (seen in a full test run:
    # 40 s after SIGINT the main thread was still polling).
    ctrl_c = threading.Event()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.set())
    try:
        with in_stream:
            if out_stream is not None:
                out_stream.start()
            t_start = time.monotonic()
            print(f"f3stream mic: capturing from [{in_index}] {in_name} ({how}), "
                  f"{tok.hop_length}-sample frames at {tok.frame_rate} Hz on {tok.device}"
                  + (f"; playing the reconstruction on [{out_index}] {out_name} "
                     f"({out_rate} Hz)" if args.playback else "")
                  + (f"; stops after {args.seconds:g} s of audio" if args.seconds
                     else "; Ctrl-C stops"), flush=True)
            while pipe.alive and not ctrl_c.is_set():
                now = time.monotonic()
                if args.seconds is not None and (
                        pipe.samples_in >= args.seconds * in_rate
                        or now - t_start >= args.seconds + NO_AUDIO_GRACE_S):
                    break
                printer.maybe(pipe.stats, now)
                ctrl_c.wait(0.02)
    except KeyboardInterrupt:    # defensive: raised by other code (the handler above only sets the flag)
        stopped_by = "Ctrl-C"
    except sd.PortAudioError as e:
        raise MicError(f"audio capture failed: {one_line(e)}") from None
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        printer.done()
    if ctrl_c.is_set():
        stopped_by = "Ctrl-C"
    elapsed = time.monotonic() - t_start

    sr = tok.sample_rate
    try:  # the take is written before the output device is closed: closing cannot lose it
        result = pipe.finish()
        if result.audio.size == 0:
            raise MicError(f"no audio arrived from [{in_index}] {in_name} in {elapsed:.1f} s")
        tokens_path = save_tokens(out_dir / "tokens.npz", result.frames, sr, tok.frame_rate)
        captured_path = write_audio(out_dir / "captured.wav", result.audio, sr)
        recon_path = None
        if result.reconstruction is not None:
            recon_path = write_audio(out_dir / "reconstruction.wav", result.reconstruction, sr)
    finally:
        if out_stream is not None:
            drain_playback(playback, out_stream, tok.sample_rate)
    _summary(result, elapsed, stopped_by, playback, tokens_path, captured_path, recon_path, sr)
    return 0



def _warm_up(tok: "Tokenizer", representations: bool) -> None:
    """One throw-away frame so the first live frame's latency is not the model's cold start."""
    s = tok.session(representations=representations)
    z = s.push(np.zeros(tok.hop_length, np.float32)).latents
    tok.decoder_session().push(z)


def _summary(result: MicResult, elapsed: float, stopped_by: str,
             playback: PlaybackBuffer | None, tokens_path: Path, captured_path: Path,
             recon_path: Path | None, sr: int) -> None:
    """The lines printed after the files are written: what was captured, the latency
    percentiles over the whole run, the drop counters and the paths."""
    s = result.stats
    reps = result.frames.representations
    print(f"f3stream mic: stopped ({stopped_by}) after {elapsed:.1f} s: captured "
          f"{result.audio.size / sr:.2f} s -> {result.frames.n_frames} frames "
          f"(latents [{result.frames.n_frames}, {result.frames.latents.shape[1]}]"
          + (f", representations [{reps.shape[0]}, {reps.shape[1]}]" if reps is not None
             else "") + ")")
    print(f"  per-frame compute p50 {pct(s.compute_ms, 50):.1f} ms, p99 "
          f"{pct(s.compute_ms, 99):.1f} ms; end-to-end p50 {pct(s.e2e_ms, 50):.1f} ms, "
          f"p99 {pct(s.e2e_ms, 99):.1f} ms"
          + (f"; decode p50 {pct(s.decode_ms, 50):.1f} ms" if s.decode_ms else ""))
    print(f"  dropped input blocks {s.dropped_blocks}, input overflows {s.overflows}"
          + (f", playback underruns {playback.underruns}" if playback is not None else ""))
    if playback is not None:
        print(f"  played back {playback.played / sr:.2f} s of the reconstruction"
              + (f"; {playback.abandoned / sr:.2f} s still queued when the device closed "
                 "(not played)" if playback.abandoned else ""))
    print(f"  wrote {tokens_path}")
    print(f"        {captured_path} (exactly the samples the tokenizer saw)")
    if recon_path is not None:
        print(f"        {recon_path}")


def register(subs: Any) -> None:
    """Registers ``f3stream mic``. Its ``--device`` is the input audio device, so the model's
    compute device is ``--model-device`` here."""
    p = add_command(
        subs, "mic", "live microphone -> tokens, with a live status line",
        "Captures the microphone (24 kHz mono if the device supports it, otherwise its "
        "default rate, resampled on the fly), tokenizes it frame by frame (40 ms) in a "
        "worker thread and shows the input level, frames/s, per-frame compute latency and "
        "end-to-end latency. --playback plays the live reconstruction. On Ctrl-C or after "
        "--seconds it writes tokens.npz and captured.wav (plus reconstruction.wav) into "
        "--out.",
        "  f3stream mic --list-devices\n"
        "  f3stream mic --seconds 10 --out take1\n"
        "  f3stream mic --device pulse --playback\n", cmd_mic)
    p.add_argument("--device", metavar="DEV", default=None,
                   help="input device: index or part of its name (default: the system "
                        "default input); see --list-devices")
    p.add_argument("--output-device", metavar="DEV", default=None,
                   help="playback device for --playback (default: the system default output)")
    p.add_argument("--list-devices", action="store_true",
                   help="print the audio devices and exit")
    p.add_argument("--seconds", type=float, metavar="N", default=None,
                   help="stop by itself after N seconds of captured audio (default: run "
                        "until Ctrl-C)")
    p.add_argument("--playback", action="store_true",
                   help="play the live reconstruction (decoder session) on the output device "
                        "and save reconstruction.wav")
    p.add_argument("--save-reconstruction", action="store_true",
                   help="decode live and save reconstruction.wav without playing it")
    p.add_argument("--out", metavar="DIR", default="f3stream-mic",
                   help="output directory for tokens.npz, captured.wav, reconstruction.wav "
                        "(default: ./f3stream-mic)")
    p.add_argument("--no-representations", action="store_true",
                   help="compute and save only the latents")
    p.add_argument("--capture-rate", type=int, default=None, metavar="HZ",
                   help="capture at this rate and resample to the model's rate on the fly "
                        "(default: the model's rate when the device supports it, else the "
                        "device's default rate)")
    p.add_argument("--block-ms", type=float, default=20.0, metavar="MS",
                   help="capture block size in milliseconds (default: 20)")
    p.add_argument("--queue-blocks", type=int, default=200, metavar="N",
                   help="blocks buffered between the audio callback and the tokenizer before "
                        "new blocks are dropped (default: 200)")
    add_model_options(p, device="--model-device")
