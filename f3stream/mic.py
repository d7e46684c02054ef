"""``f3stream mic``: live microphone -> tokens (-> live reconstruction), with a status line.

Pipeline (three threads, none of them waits on another for long):

* PortAudio's audio callback copies each captured block into a bounded queue with
  ``put_nowait``. It never blocks: when the queue is full (the model cannot keep up) the block
  is dropped and counted, so a slow machine shows ``dropped N`` instead of hanging the device.
* A worker thread resamples to the model's rate when the device cannot capture at it
  (:class:`~f3stream.resampling.StreamResampler`, libsoxr's streaming resampler, the one files
  and the server use; docs/benchmarks.md compares it with the FIR it replaced), quantises to
  the 16-bit grid (so ``captured.wav`` holds exactly the samples the tokenizer saw), and pushes
  one 40 ms frame at a time through an :class:`~f3stream.session.EncoderSession`, timing each
  frame. With playback it also decodes each frame and hands the PCM to the output stream's
  callback.
* The main thread redraws one status line (~10x per second on a terminal) and stops on Ctrl-C
  or ``--seconds``; then the session is flushed and tokens/audio are written atomically.

End-to-end latency is measured from the capture time of a frame's last sample to the moment
that frame's latents and representations are ready. The capture time is PortAudio's ADC
timestamp mapped onto ``time.monotonic``, clamped to the time of the callback that delivered
the sample (the host API may report none, or, like ALSA's pulse plugin, one in the future), so
the figure is a lower bound that always includes queueing and compute.
"""

from __future__ import annotations

import argparse
import math
import queue
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .alignment import Regrouper
from .commandline import add_command, add_model_options, load_tokenizer
from .errors import F3StreamError
from .frames import EncodedFrames, join_frames
from .resampling import StreamResampler, stream_latency_ms
from .stats import percentile

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

INT16_SCALE = 32768.0
STATUS_HZ = 10.0           # status-line refreshes per second on a terminal
PLAIN_STATUS_S = 1.0       # when stdout is not a terminal: one status line per second
NO_AUDIO_GRACE_S = 10.0    # --seconds N gives up N + this many seconds after the start


class MicError(F3StreamError):
    """No usable audio device / PortAudio, or the capture failed: one ``f3stream: error:``
    line and exit status 2, never a traceback."""


# -- audio backend access ----------------------------------------------------------------------
def import_sounddevice() -> Any:
    """Imports ``sounddevice``, turning a missing package or PortAudio library into
    :class:`MicError` (the module raises OSError at import when libportaudio is absent)."""
    try:
        import sounddevice as sd
    except ImportError:
        raise MicError("the mic command needs the 'sounddevice' package: pip install "
                       "'f3stream[mic]'") from None
    except OSError as e:
        raise MicError(f"cannot use audio devices: {e} (install the system package "
                       "libportaudio2, e.g. apt-get install libportaudio2)") from None
    return sd


def _device_arg(device: str | None) -> int | str | None:
    """``--device 3`` is an index, anything else a (sub)string of a device name."""
    if device is None:
        return None
    return int(device) if device.strip().lstrip("-").isdigit() else device


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())


def resolve_input(sd: Any, device: str | None, want_rate: int, strict: bool = False
                  ) -> tuple[int, str, int]:
    """Returns (device index, device name, capture rate): ``want_rate`` if the device accepts
    it for mono float32 capture, else (unless ``strict``) the device's default rate, which the
    pipeline then resamples."""
    return _resolve(sd, device, want_rate, "input", strict)


def resolve_output(sd: Any, device: str | None, want_rate: int) -> tuple[int, str, int]:
    """Like :func:`resolve_input` for the playback device."""
    return _resolve(sd, device, want_rate, "output")


def _resolve(sd: Any, device: str | None, want_rate: int, kind: str, strict: bool = False
             ) -> tuple[int, str, int]:
    dev = _device_arg(device)
    try:
        info = sd.query_devices(dev, kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        what = f"{kind} device {device!r}" if device is not None else f"default {kind} device"
        raise MicError(f"no usable {what}: {_one_line(e)} (see 'f3stream mic --list-devices')"
                       ) from None
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    if int(info[channels_key]) < 1:
        raise MicError(f"device {info['name']!r} has no {kind} channels "
                       "(see 'f3stream mic --list-devices')")
    index = int(info["index"])
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(index, channels=1, dtype="float32", samplerate=want_rate)
        return index, str(info["name"]), want_rate
    except (ValueError, sd.PortAudioError) as e:
        if strict:
            raise MicError(f"{kind} device {info['name']!r} cannot capture {want_rate} Hz mono "
                           f"float32: {_one_line(e)}") from None
    rate = int(round(float(info["default_samplerate"])))
    try:
        check(index, channels=1, dtype="float32", samplerate=rate)
    except (ValueError, sd.PortAudioError) as e:
        raise MicError(f"{kind} device {info['name']!r} accepts neither {want_rate} Hz nor its "
                       f"default {rate} Hz mono float32: {_one_line(e)}") from None
    return index, str(info["name"]), rate


def list_devices() -> str:
    """The device table as ``sounddevice`` prints it (``>`` default input, ``<`` output)."""
    sd = import_sounddevice()
    try:
        return str(sd.query_devices())
    except sd.PortAudioError as e:
        raise MicError(f"cannot list audio devices: {_one_line(e)}") from None


def quantize_int16(x: np.ndarray) -> np.ndarray:
    """Rounds to the 16-bit PCM grid (k / 32768): what a 16-bit WAV stores exactly, so the
    saved capture reproduces the tokenizer's input bit for bit."""
    q = np.clip(np.round(x.astype(np.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)
    return (q / INT16_SCALE).astype(np.float32)


# -- playback FIFO -----------------------------------------------------------------------------
class PlaybackBuffer:
    """A lock-protected sample FIFO between the worker (writes decoded PCM) and the output
    callback (reads). Reading starts once ``prefill`` samples are queued, so playback does not
    stutter from the first frame; afterwards a short read is padded with silence and counted."""

    def __init__(self, prefill: int):
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0
        self._prefill = prefill
        self._started = False
        self.underruns = 0

    def write(self, pcm: np.ndarray) -> None:
        if pcm.size:
            with self._lock:
                self._chunks.append(pcm.astype(np.float32, copy=False))
                self._size += pcm.size

    def read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            if not self._started:
                if self._size < self._prefill:
                    return out
                self._started = True
            got = 0
            while got < n and self._chunks:
                c = self._chunks[0]
                take = min(n - got, c.size)
                out[got:got + take] = c[:take]
                got += take
                if take == c.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = c[take:]
            self._size -= got
            if got < n:
                self.underruns += 1
        return out


# -- statistics --------------------------------------------------------------------------------
def _pct(values, q: float) -> float:
    """The package's percentile (:func:`f3stream.stats.percentile`, nearest rank), NaN when
    there are no values."""
    p = percentile(values, q)
    return math.nan if p is None else float(p)


def _ms(x: float) -> str:
    return "--" if math.isnan(x) else f"{x:.1f}"


@dataclass
class LiveStats:
    """Numbers the status line and the final summary show; written by the worker and the audio
    callback, read by the main thread (small scalars and deques: the GIL suffices)."""

    window: int = 250                                   # frames in the live percentiles (10 s)
    frames: int = 0
    dropped_blocks: int = 0
    overflows: int = 0
    level_power: float = 0.0                            # smoothed mean square of the input
    compute_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    ready_times: deque = field(default_factory=lambda: deque(maxlen=200))
    waiting: bool = True                                # no audio has arrived yet

    def level_dbfs(self) -> float:
        return 10.0 * math.log10(self.level_power) if self.level_power > 1e-12 else -120.0

    def frames_per_second(self, now: float) -> float:
        recent = [t for t in list(self.ready_times) if now - t <= 1.0]
        return float(len(recent))

    def line(self, now: float, width: int = 10) -> str:
        """E.g. ``in -21.3 dBFS [#######---] | 25.0 frames/s | p50/p99 compute 10.4/24.7 ms,
        e2e 12.2/31.0 ms | 65 frames`` (+ drop counters when any)."""
        if self.waiting:
            return "waiting for the first audio block from the device ..."
        db = self.level_dbfs()
        filled = int(round(width * min(1.0, max(0.0, (db + 60.0) / 60.0))))
        meter = "#" * filled + "-" * (width - filled)
        c, e = self.compute_ms[-self.window:], self.e2e_ms[-self.window:]
        parts = [f"in {db:6.1f} dBFS [{meter}]",
                 f"{self.frames_per_second(now):4.1f} frames/s",
                 f"p50/p99 compute {_ms(_pct(c, 50))}/{_ms(_pct(c, 99))} ms, "
                 f"e2e {_ms(_pct(e, 50))}/{_ms(_pct(e, 99))} ms"]
        if self.dropped_blocks or self.overflows:
            parts.append(f"dropped {self.dropped_blocks} overflows {self.overflows}")
        parts.append(f"{self.frames} frames")
        return " | ".join(parts)


# -- the pipeline ------------------------------------------------------------------------------
class MicPipeline:
    """Captured blocks in (from any thread, never blocking), tokens out (in a worker thread).

    ``submit`` is what the audio callback calls. ``finish`` drains the queue, flushes the
    session (zero-padding the last partial frame exactly as offline tokenization does) and
    returns the complete result.
    """

    def __init__(self, tok: "Tokenizer", capture_rate: int, representations: bool = True,
                 decode: bool = False, playback: PlaybackBuffer | None = None,
                 max_queue_blocks: int = 200):
        self.tok = tok
        self.hop = tok.hop_length
        self.rate = tok.sample_rate
        self.capture_rate = capture_rate
        self.resampler = (StreamResampler(capture_rate, self.rate)
                          if capture_rate != self.rate else None)
        self._n_resampler_in = 0                  # captured samples given to the resampler
        self.session = tok.session(representations=representations)
        self.decoder = tok.decoder_session() if decode or playback is not None else None
        self.playback = playback
        self.stats = LiveStats()
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue_blocks)
        self.captured: list[np.ndarray] = []
        self.parts: list[EncodedFrames] = []      # the frames so far, in order
        self.recon: list[np.ndarray] = []
        self._frames = Regrouper(self.hop, np.zeros(0, dtype=np.float32))  # whole frames
        self._n_fed = 0                           # model-rate samples fed so far
        self._times: deque = deque()              # (end position, capture time of end - 1)
        self.error: BaseException | None = None
        self.samples_in = 0                       # captured samples, dropped ones included
        self._thread = threading.Thread(target=self._run, name="f3stream-mic-worker",
                                        daemon=True)

    # called from the audio callback: must not block
    def submit(self, block: np.ndarray, t_last: float) -> None:
        self.samples_in += block.size
        try:
            self.queue.put_nowait((block, t_last))
        except queue.Full:
            self.stats.dropped_blocks += 1

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                self._process(*item)
        except BaseException as e:  # surfaced by the main thread as one error line
            self.error = e

    def _process(self, block: np.ndarray, t_last: float) -> None:
        if self.resampler is None:
            self._feed(quantize_int16(block), t_last, self._n_fed + block.size)
            return
        # the resampler holds output back (its latency), so the block's last captured sample
        # is at this model-rate position, beyond the output it returns now
        self._n_resampler_in += block.size
        end = self._n_resampler_in * self.rate // self.capture_rate
        self._feed(quantize_int16(self.resampler.process(block)), t_last, end)

    def _feed(self, x: np.ndarray, t_last: float, end: int) -> None:
        """``end``: the model-rate position just after the sample captured at ``t_last``."""
        self.stats.waiting = False
        if x.size == 0:
            return
        power = float(np.mean(np.square(x, dtype=np.float64)))
        alpha = min(1.0, x.size / (0.1 * self.rate))        # ~100 ms smoothing
        self.stats.level_power += alpha * (power - self.stats.level_power)
        self.captured.append(np.round(x * INT16_SCALE).astype(np.int16))  # exact, half size
        self._n_fed += x.size
        self._times.append((end, t_last))
        for frame in self._frames.units(x):
            self._frame(frame)

    def _capture_time(self, sample: int) -> float:
        """Capture time of model-rate sample ``sample`` (from the block that contained it)."""
        while len(self._times) > 1 and self._times[0][0] <= sample:
            self._times.popleft()
        end, t_last = self._times[0]
        return t_last - (end - 1 - sample) / self.rate

    def _frame(self, frame: np.ndarray) -> None:
        t0 = time.perf_counter()
        out = self.session.push(frame)
        t1 = time.perf_counter()
        ready = time.monotonic()
        last_sample = (out.start_frame + out.n_frames) * self.hop - 1
        self._keep(out)
        s = self.stats
        s.compute_ms.append(1000.0 * (t1 - t0))
        s.e2e_ms.append(1000.0 * (ready - self._capture_time(last_sample)))
        s.ready_times.append(ready)
        s.frames += out.n_frames
        if self.decoder is not None:
            t2 = time.perf_counter()
            pcm = self.decoder.push(out.latents)
            s.decode_ms.append(1000.0 * (time.perf_counter() - t2))
            self._emit(pcm)

    def _keep(self, out: EncodedFrames) -> None:
        if out.n_frames:
            self.parts.append(out)

    def _emit(self, pcm: np.ndarray) -> None:
        self.recon.append(pcm)
        if self.playback is not None:
            self.playback.write(pcm)

    def finish(self, timeout: float = 60.0) -> "MicResult":
        """Stops the worker after it has processed every queued block, then flushes."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)
        if self.error is not None:
            raise MicError(f"tokenizing the microphone stream failed: "
                           f"{type(self.error).__name__}: {_one_line(self.error)}")
        if self._thread.is_alive():
            raise MicError(f"the tokenizer worker did not finish within {timeout:g} s")
        if self.resampler is not None:
            tail = quantize_int16(self.resampler.flush())
            if tail.size:
                self.captured.append(np.round(tail * INT16_SCALE).astype(np.int16))
                for frame in self._frames.units(tail):  # the held-back tail completes frames
                    out = self.session.push(frame)
                    self._keep(out)
                    self.stats.frames += out.n_frames
                    if self.decoder is not None:
                        self._emit(self.decoder.push(out.latents))
        self.session.push(self._frames.take_pending())  # < 1 frame: completes nothing
        last = self.session.flush()                     # (zero-padded to a whole frame)
        self._keep(last)
        self.stats.frames += last.n_frames
        if self.decoder is not None:
            self._emit(self.decoder.push(last.latents))
            self._emit(self.decoder.flush())
        frames = join_frames(self.parts, self.tok.latent_dim,
                             self.tok.representation_dim if self.session.with_representations
                             else None)
        audio = (np.concatenate(self.captured).astype(np.float32) / INT16_SCALE
                 if self.captured else np.zeros(0, np.float32))
        recon = np.concatenate(self.recon) if self.decoder is not None and self.recon else None
        return MicResult(frames, audio, recon, self.stats)


@dataclass
class MicResult:
    frames: EncodedFrames             # the whole stream
    audio: np.ndarray                 # what the tokenizer saw, at the model's rate
    reconstruction: np.ndarray | None
    stats: LiveStats


# -- the command -------------------------------------------------------------------------------
class _StatusPrinter:
    """One in-place line on a terminal (carriage return + clear-to-end), plain lines once per
    second otherwise (logs, pipes, tests)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.period = 1.0 / STATUS_HZ if self.tty else PLAIN_STATUS_S
        self._next = 0.0
        self._drawn = False

    def maybe(self, stats: LiveStats, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.period
        line = stats.line(now)
        if self.tty:  # never wider than the terminal: a wrapped line cannot be redrawn
            cols = shutil.get_terminal_size((120, 24)).columns
            self.stream.write("\r" + line[:max(20, cols - 1)] + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _check_out_dir(out: Path) -> None:
    for p in [out, *out.absolute().parents]:
        if p.exists():
            if not p.is_dir():
                raise MicError(f"cannot write into {out}: {p} is not a directory")
            break


def cmd_mic(args: argparse.Namespace) -> int:
    sd = import_sounddevice()
    if args.list_devices:
        print(list_devices())
        return 0
    if args.seconds is not None and not args.seconds > 0:
        raise MicError(f"--seconds must be positive, got {args.seconds:g}")
    out_dir = Path(args.out)
    _check_out_dir(out_dir)

    from .tokens_io import save_tokens
    from .audio import write_audio

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
            play_buf = _ResamplingReader(playback, out_resampler, tok.sample_rate, out_rate)

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
        raise MicError(f"cannot open audio device: {_one_line(e)}") from None

    how = (f"{in_rate} Hz" if in_rate == tok.sample_rate else
           f"{in_rate} Hz, resampled to {tok.sample_rate} Hz (soxr, adds "
           f"{stream_latency_ms(in_rate, tok.sample_rate):g} ms)")
    printer = _StatusPrinter()
    pipe.start()
    stopped_by = "time limit"
    t_start = time.monotonic()
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
            try:
                while pipe.alive:
                    now = time.monotonic()
                    if args.seconds is not None and (
                            pipe.samples_in >= args.seconds * in_rate
                            or now - t_start >= args.seconds + NO_AUDIO_GRACE_S):
                        break
                    printer.maybe(pipe.stats, now)
                    time.sleep(0.02)
            except KeyboardInterrupt:
                stopped_by = "Ctrl-C"
    except KeyboardInterrupt:    # while the stream was starting or stopping
        stopped_by = "Ctrl-C"
    except sd.PortAudioError as e:
        raise MicError(f"audio capture failed: {_one_line(e)}") from None
    finally:
        printer.done()
    elapsed = time.monotonic() - t_start

    try:
        result = pipe.finish()
    finally:
        if out_stream is not None:
            _drain_playback(playback, out_stream, tok.sample_rate)
    if result.audio.size == 0:
        raise MicError(f"no audio arrived from [{in_index}] {in_name} in {elapsed:.1f} s")

    sr = tok.sample_rate
    tokens_path = save_tokens(out_dir / "tokens.npz", result.frames, sr, tok.frame_rate)
    captured_path = write_audio(out_dir / "captured.wav", result.audio, sr)
    recon_path = None
    if result.reconstruction is not None:
        recon_path = write_audio(out_dir / "reconstruction.wav", result.reconstruction, sr)
    _summary(result, elapsed, stopped_by, playback, tokens_path, captured_path, recon_path, sr)
    return 0


class _ResamplingReader:
    """Pulls model-rate PCM from a :class:`PlaybackBuffer` and resamples it to the output
    device's rate, keeping the surplus for the next callback."""

    def __init__(self, source: PlaybackBuffer, resampler: StreamResampler, in_rate: int,
                 out_rate: int):
        self.source, self.resampler = source, resampler
        self.ratio = in_rate / out_rate
        self._left = np.zeros(0, dtype=np.float32)

    def read(self, n: int) -> np.ndarray:
        while self._left.size < n:
            need = max(1, int(math.ceil((n - self._left.size) * self.ratio)) + 1)
            self._left = np.concatenate([self._left, self.resampler.process(
                self.source.read(need))])
        out, self._left = self._left[:n], self._left[n:]
        return out


def _drain_playback(playback: PlaybackBuffer | None, stream: Any, rate: int) -> None:
    """Lets the queued reconstruction finish playing (at most 2 s), then closes the stream."""
    if playback is None:
        return
    deadline = time.monotonic() + 2.0
    while playback._size > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        stream.stop()
        stream.close()
    except Exception:  # noqa: BLE001 - closing a broken device must not lose the saved files
        pass


def _warm_up(tok: "Tokenizer", representations: bool) -> None:
    """One throw-away frame so the first live frame's latency is not the model's cold start."""
    s = tok.session(representations=representations)
    z = s.push(np.zeros(tok.hop_length, np.float32)).latents
    tok.decoder_session().push(z)


def _summary(result: MicResult, elapsed: float, stopped_by: str,
             playback: PlaybackBuffer | None, tokens_path: Path, captured_path: Path,
             recon_path: Path | None, sr: int) -> None:
    s = result.stats
    reps = result.frames.representations
    print(f"f3stream mic: stopped ({stopped_by}) after {elapsed:.1f} s: captured "
          f"{result.audio.size / sr:.2f} s -> {result.frames.n_frames} frames "
          f"(latents [{result.frames.n_frames}, {result.frames.latents.shape[1]}]"
          + (f", representations [{reps.shape[0]}, {reps.shape[1]}]" if reps is not None
             else "") + ")")
    print(f"  per-frame compute p50 {_pct(s.compute_ms, 50):.1f} ms, p99 "
          f"{_pct(s.compute_ms, 99):.1f} ms; end-to-end p50 {_pct(s.e2e_ms, 50):.1f} ms, "
          f"p99 {_pct(s.e2e_ms, 99):.1f} ms"
          + (f"; decode p50 {_pct(s.decode_ms, 50):.1f} ms" if s.decode_ms else ""))
    print(f"  dropped input blocks {s.dropped_blocks}, input overflows {s.overflows}"
          + (f", playback underruns {playback.underruns}" if playback is not None else ""))
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
