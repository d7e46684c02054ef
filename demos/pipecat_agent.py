#!/usr/bin/env python3
"""A small voice agent built with pipecat around f3stream: speech in, latents, an agent step
that listens and answers in latent space, latents back to speech.

    audio in (wav file or microphone, any rate)
      -> EncoderProcessor (in-process) or RemoteEncoderProcessor (--url: an `f3stream serve`)
      -> ParrotAgent: per 40 ms frame speech or silence; at the end of each user turn it
         answers with that turn's latents (a parrot: the place for a latent LM or a speech LLM)
      -> DecoderProcessor -> audio out (wav file or speaker)

    python demos/pipecat_agent.py speech.wav --out reply.wav
    python demos/pipecat_agent.py speech.wav --url ws://127.0.0.1:8765 --out reply.wav
    python demos/pipecat_agent.py --mic --speaker --seconds 20        # needs sounddevice

The agent tells speech from silence by the input audio's level over each latent frame's 40 ms,
not by the latents' energy: the bottleneck normalises every frame over its 64 channels (each
frame's norm is exactly 8), so the latents carry the level in their pattern, not their size.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

try:
    from loguru import logger

    logger.remove()  # before pipecat's first import logs its banner; see --log-level
    logger.add(sys.stderr, level="WARNING")
    from pipecat.frames.frames import (CancelFrame, EndFrame, ErrorFrame, Frame,
                                       InputAudioRawFrame, OutputAudioRawFrame, StartFrame)
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("pipecat_agent: error: pipecat is not installed: pip install 'f3stream[pipecat]'")

from f3stream.backends import BACKENDS
from f3stream.integrations.pipecat import (DecoderProcessor, EncoderProcessor, LatentFrame,
                                           RemoteEncoderProcessor)
from f3stream.integrations.pipecat.frames import audio_frame_samples

FRAME_RATE = 25  # latent frames per second


class ParrotAgent(FrameProcessor):
    """Listens to the user's latent frames and, when a turn ends (``hangover_s`` of silence
    after at least ``min_turn_s`` of speech), answers with the turn's latents, pushed as one
    :class:`LatentFrame` of the bot's own stream. The user's audio stops here, so only the
    bot's answers reach the decoder and the output.

    Speech or silence per frame: the level (dBFS) of the input audio over the frame's 40 ms
    against ``threshold_db``; ``report`` gets a line per turn (and per 2 s of frames, a strip
    of ``#`` speech / ``.`` silence, with ``verbose``).
    """

    def __init__(self, *, threshold_db: float = -40.0, hangover_s: float = 0.4,
                 min_turn_s: float = 0.2, preroll_frames: int = 2, verbose: bool = False,
                 report=print, **kwargs):
        super().__init__(**kwargs)
        self.threshold_db = threshold_db
        self.hangover = max(1, round(hangover_s * FRAME_RATE))
        self.min_turn = max(1, round(min_turn_s * FRAME_RATE))
        self.verbose = verbose
        self.report = report
        self._preroll: deque[np.ndarray] = deque(maxlen=preroll_frames)
        self._tail = preroll_frames  # silent frames kept after a turn's last speech
        self.turns = 0
        self.bot_frames = 0
        self.speech_frames = 0
        self._reset_audio()
        self._turn: list[np.ndarray] | None = None

    def _reset_audio(self) -> None:
        self.levels: list[float] = []    # dBFS of each 40 ms of input audio
        self._pending = np.zeros(0, np.float32)
        self._rate = 0
        self._strip = ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._measure(frame)  # consumed: the user's audio does not go to the output
        elif isinstance(frame, LatentFrame) and direction == FrameDirection.DOWNSTREAM:
            for j in range(frame.n_frames):
                await self._step(frame.latents[j], frame.frame_index + j)
        elif isinstance(frame, EndFrame):
            await self._end_turn(final=True)
            if self.verbose and self._strip:
                self._print_strip()
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, StartFrame):
                self._reset_audio()
            await self.push_frame(frame, direction)

    def _measure(self, frame: InputAudioRawFrame) -> None:
        x = audio_frame_samples(frame)
        if frame.sample_rate != self._rate:  # a new rate: frames are counted afresh from here
            self._rate, self._pending = frame.sample_rate, np.zeros(0, np.float32)
        hop = self._rate / FRAME_RATE
        buf = np.concatenate([self._pending, x])
        n = int(buf.size // hop)
        for k in range(n):
            seg = buf[round(k * hop):round((k + 1) * hop)]
            self.levels.append(10 * math.log10(float(np.mean(seg * seg)) + 1e-12))
        self._pending = buf[round(n * hop):]

    def _level(self, k: int) -> float:
        if k < len(self.levels):
            return self.levels[k]
        p = self._pending  # the stream's last, partial frame
        return 10 * math.log10(float(np.mean(p * p)) + 1e-12) if p.size else -120.0

    async def _step(self, row: np.ndarray, k: int) -> None:
        speech = self._level(k) > self.threshold_db
        self.speech_frames += speech
        if self.verbose:
            if not self._strip:
                self._strip_start = k
            self._strip += "#" if speech else "."
            if len(self._strip) == 2 * FRAME_RATE:
                self._print_strip()
        if self._turn is None:
            if speech:
                self._turn_start = k - len(self._preroll)
                self._turn, self._silent, self._turn_speech = [*self._preroll, row], 0, 1
                self._preroll.clear()
            else:
                self._preroll.append(row)
            return
        self._turn.append(row)
        self._silent = 0 if speech else self._silent + 1
        self._turn_speech += speech
        if self._silent >= self.hangover:
            await self._end_turn()

    def _print_strip(self) -> None:
        self.report(f"  {self._strip_start / FRAME_RATE:6.2f} s |{self._strip}")
        self._strip = ""

    async def _end_turn(self, final: bool = False) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        turn = turn[:len(turn) - max(0, self._silent - self._tail)]  # the hangover, trimmed
        start, end = self._turn_start / FRAME_RATE, (self._turn_start + len(turn)) / FRAME_RATE
        if self._turn_speech < self.min_turn:
            self.report(f"  ({start:.2f}-{end:.2f} s: too short for a turn, ignored)")
            return
        self.turns += 1
        self.report(f"user turn {self.turns}: {start:.2f}-{end:.2f} s, {len(turn)} frames"
                    f"{' (stream ended)' if final else ''} -> parroting it back")
        await self.push_frame(LatentFrame(latents=np.stack(turn).astype(np.float32),
                                          representations=None, frame_index=self.bot_frames))
        self.bot_frames += len(turn)


class WavSink(FrameProcessor):
    """Writes the output audio frames to a 16-bit wav (created even when nothing is said)."""

    def __init__(self, path: Path, sample_rate: int, **kwargs):
        super().__init__(**kwargs)
        self.path, self.sample_rate = Path(path), sample_rate
        self.samples = 0
        self._file = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            self._open(frame.sample_rate)
            pcm = np.frombuffer(frame.audio, "<i2")
            self._file.write(pcm)
            self.samples += pcm.size
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._open(self.sample_rate)
            self._file.close()
        await self.push_frame(frame, direction)

    def _open(self, rate: int) -> None:
        if self._file is None:
            import soundfile

            self.sample_rate = rate
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = soundfile.SoundFile(self.path, "w", samplerate=rate, channels=1,
                                             subtype="PCM_16")


class SpeakerSink(FrameProcessor):
    """Plays the output audio frames on the default output device (sounddevice)."""

    def __init__(self, sample_rate: int, device: str | None = None, **kwargs):
        super().__init__(**kwargs)
        import sounddevice

        self.sample_rate = sample_rate
        self.samples = 0
        self._stream = sounddevice.RawOutputStream(samplerate=sample_rate, channels=1,
                                                   dtype="int16", device=device)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._stream.start()
        elif isinstance(frame, OutputAudioRawFrame):
            await asyncio.to_thread(self._stream.write, frame.audio)
            self.samples += len(frame.audio) // 2
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await asyncio.to_thread(self._stream.stop)
            self._stream.close()
        await self.push_frame(frame, direction)


def file_frames(path: Path, frame_ms: float = 20.0):
    """A sound file cut into InputAudioRawFrames at its own rate and channel count."""
    import soundfile

    pcm, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    step = max(1, int(rate * frame_ms / 1000))
    frames = [InputAudioRawFrame(audio=pcm[a:a + step].tobytes(), sample_rate=rate,
                                 num_channels=pcm.shape[1]) for a in range(0, len(pcm), step)]
    return frames, rate, pcm.shape[1], len(pcm) / rate


async def mic_frames(seconds: float, device: str | None = None, frame_ms: float = 20.0):
    """InputAudioRawFrames from an input device (default: the system's) at the device's own
    rate, for ``seconds``."""
    import sounddevice

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    rate = int(sounddevice.query_devices(device, kind="input")["default_samplerate"])

    def callback(data, n, t, status):  # PortAudio's thread: hand the block to the loop
        loop.call_soon_threadsafe(queue.put_nowait, bytes(data))

    with sounddevice.RawInputStream(samplerate=rate, channels=1, dtype="int16", device=device,
                                    blocksize=int(rate * frame_ms / 1000), callback=callback):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = await asyncio.wait_for(queue.get(), 1.0)
            except asyncio.TimeoutError:
                continue
            yield InputAudioRawFrame(audio=data, sample_rate=rate, num_channels=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="A pipecat voice agent around f3stream: audio in -> latents -> a parrot "
                    "agent that answers each user turn with its latents -> audio out.")
    p.add_argument("input", nargs="?", help="input sound file (any rate, mono or stereo)")
    p.add_argument("--mic", action="store_true", help="listen to the microphone instead")
    p.add_argument("--seconds", type=float, default=10.0, help="how long --mic listens")
    p.add_argument("--out", default="agent-reply.wav", help="output wav (default %(default)s)")
    p.add_argument("--speaker", action="store_true", help="play the answers instead of --out")
    p.add_argument("--device", help="sounddevice name or index of the microphone and speaker "
                   "(default: the system's)")
    p.add_argument("--out-rate", type=int, default=24000, help="output rate (Hz)")
    p.add_argument("--url", help="tokenize on an `f3stream serve` at this ws:// URL")
    p.add_argument("--token", help="the server's token (with --url)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one)")
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--realtime", action="store_true",
                   help="feed a file at its real-time pace (as a microphone would)")
    p.add_argument("--threshold-db", type=float, default=-40.0,
                   help="level above which a 40 ms frame is speech (dBFS)")
    p.add_argument("--hangover", type=float, default=0.4,
                   help="silence that ends a user turn (s)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print speech (#) / silence (.) for every frame")
    p.add_argument("--log-level", default="WARNING", help="pipecat's log level")
    args = p.parse_args(argv)
    if bool(args.input) == args.mic:
        p.error("give an input file or --mic (one of them)")
    if args.input and not Path(args.input).is_file():
        p.error(f"no such file: {args.input}")
    if args.mic or args.speaker:
        try:
            import sounddevice

            for kind, wanted in (("input", args.mic), ("output", args.speaker)):
                if wanted:
                    sounddevice.query_devices(args.device, kind=kind)
        except Exception as e:  # no PortAudio, no such device
            p.error(f"no audio device for --mic/--speaker: {e}")
    return args


async def run_agent(args: argparse.Namespace) -> int:
    from f3stream import Tokenizer

    tok = Tokenizer.load(args.checkpoint, backend=args.backend)  # the decoder's, at least
    encoder = (RemoteEncoderProcessor(args.url, token=args.token) if args.url
               else EncoderProcessor(tok))
    agent = ParrotAgent(threshold_db=args.threshold_db, hangover_s=args.hangover,
                        verbose=args.verbose)
    decoder = DecoderProcessor(tok, sample_rate=args.out_rate)
    sink = (SpeakerSink(args.out_rate, args.device) if args.speaker
            else WavSink(Path(args.out), args.out_rate))
    worker = PipelineWorker(Pipeline([encoder, agent, decoder, sink]), enable_rtvi=False,
                            idle_timeout_secs=None, cancel_on_idle_timeout=False,
                            params=PipelineParams(audio_out_sample_rate=args.out_rate))
    errors: list[str] = []

    @worker.event_handler("on_pipeline_error")
    async def on_error(worker, frame: ErrorFrame):
        errors.append(frame.error)
        print(f"pipecat_agent: error: {frame.error}", file=sys.stderr)

    if args.mic:
        source = mic_frames(args.seconds, args.device)
        what = f"the microphone for {args.seconds:g} s"
    else:
        frames, rate, channels, seconds = file_frames(Path(args.input))
        source = frames
        what = f"{args.input} ({seconds:.2f} s at {rate} Hz, {channels} channel(s))"
    print(f"listening to {what}")

    async def feed():
        if isinstance(source, list):
            t0 = time.monotonic()
            for i, f in enumerate(source):
                if args.realtime:
                    await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
                await worker.queue_frame(f)
        else:
            await worker.queue_frames(source)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=args.mic)
    await runner.add_workers(worker)
    t0 = time.perf_counter()
    await asyncio.gather(runner.run(), feed())
    wall = time.perf_counter() - t0
    out = "the speaker" if args.speaker else args.out
    print(f"{encoder.frames_out} latent frames ({tok.latent_dim}-dim, {FRAME_RATE}/s) in; "
          f"{agent.speech_frames} of them speech; {agent.turns} user turn(s) answered with "
          f"{agent.bot_frames} frames; {sink.samples / args.out_rate:.2f} s of audio at "
          f"{args.out_rate} Hz to {out}; {wall:.2f} s")
    return 1 if errors else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    return asyncio.run(run_agent(args))


if __name__ == "__main__":
    sys.exit(main())
