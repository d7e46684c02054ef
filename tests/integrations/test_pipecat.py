"""The pipecat integration (f3stream.integrations.pipecat) in real pipecat pipelines run by
pipecat's own worker and runner: input audio frames in, latent frames out equal to
Tokenizer.encode of the same audio (resampled by the same streaming resampler), decoded audio
out equal to Tokenizer.decode; the same through a live `f3stream serve`, including what
happens when that server goes away."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from helpers import randn_noise, run, serving

pytest.importorskip("pipecat", reason="pipecat-ai is not installed: pip install "
                    "'f3stream[pipecat]' (part of '.[dev]')")
pytest.importorskip("websockets")

from pipecat.frames.frames import (EndFrame, ErrorFrame, Frame,  # noqa: E402
                                   InputAudioRawFrame, InterruptionFrame,
                                   OutputAudioRawFrame)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from f3stream.integrations.pipecat import (DecoderProcessor, EncoderProcessor,  # noqa: E402
                                           LatentFrame, RemoteEncoderProcessor)
from f3stream.resampling import StreamResampler  # noqa: E402
from f3stream.server.server import F3Server  # noqa: E402

LSB = 1 / 32768


class Recorder(FrameProcessor):
    """Keeps every frame that passes in one direction and passes it on."""

    def __init__(self, direction: FrameDirection):
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append(frame)
        await self.push_frame(frame, direction)

    def of(self, cls: type) -> list:
        return [f for f in self.frames if isinstance(f, cls)]


async def run_pipeline(processors, feed, *, out_rate: int = 24000, timeout: float = 60.0):
    """Runs ``Pipeline([upstream recorder, *processors, downstream recorder])`` with a
    PipelineWorker under a WorkerRunner while ``feed(worker, down)`` queues frames (it must
    end with an EndFrame); returns (downstream recorder, upstream recorder)."""
    up, down = Recorder(FrameDirection.UPSTREAM), Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(Pipeline([up, *processors, down]), enable_rtvi=False,
                            idle_timeout_secs=None, cancel_on_idle_timeout=False,
                            params=PipelineParams(audio_out_sample_rate=out_rate))
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def feeding():
        await asyncio.wait_for(started.wait(), 10)
        await feed(worker, down)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feeding()), timeout)
    assert worker.has_finished()
    return down, up


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def audio_frames(pcm: np.ndarray, rate: int, sizes, channels: int = 1):
    """``pcm`` ([n] or [n, channels] int16) cut into InputAudioRawFrames of the given sizes
    (cycled)."""
    out, a, i = [], 0, 0
    while a < pcm.shape[0]:
        n = sizes[i % len(sizes)]
        out.append(InputAudioRawFrame(audio=pcm[a:a + n].tobytes(), sample_rate=rate,
                                      num_channels=channels))
        a, i = a + n, i + 1
    return out


def feeder(frames):
    async def feed(worker, down):
        await worker.queue_frames([*frames, EndFrame()])
    return feed


def offline_resampled(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    r = StreamResampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])


def joined(frames: list[LatentFrame]) -> tuple[np.ndarray, np.ndarray | None]:
    """The latents (and representations) of consecutive frames, checking their indices."""
    assert frames, "no latent frames"
    index = frames[0].frame_index
    for f in frames:
        assert f.frame_index == index, (f.frame_index, index)
        index += f.n_frames
    reps = None if frames[0].representations is None else np.concatenate(
        [f.representations for f in frames])
    return np.concatenate([f.latents for f in frames]), reps


# -- in-process -------------------------------------------------------------------------------
def test_encoder_and_decoder_at_24k_equal_encode_and_decode(tiny_tokenizer):
    """20 ms frames and odd sizes in, latents + representations out equal to
    Tokenizer.tokenize, the audio passed through untouched, and the decoder's audio equal to
    Tokenizer.decode of those latents."""
    tok = tiny_tokenizer
    pcm = pcm16(randn_noise(0, 24000 + 1234))
    frames = audio_frames(pcm, 24000, [480, 480, 1000, 7, 2400])
    enc = EncoderProcessor(tok, representations=True)
    dec = DecoderProcessor(tok, pass_latents=True)
    down, up = run(run_pipeline([enc, dec], feeder(frames)), timeout=None)

    ref = tok.tokenize(pcm)
    lat, reps = joined(down.of(LatentFrame))
    assert lat.shape == ref.latents.shape and reps.shape == ref.representations.shape
    assert np.abs(lat - ref.latents).max() <= 1e-5
    assert np.abs(reps - ref.representations).max() <= 1e-5
    latents = down.of(LatentFrame)
    assert latents[0].frame_index == 0 and latents[-1].final and not latents[0].final
    assert not any(f.interruptible for f in latents)  # the user's latents survive a barge-in
    assert all(f.input_time is not None for f in latents[:-1])
    assert latents[-1].end_s == pytest.approx(ref.latents.shape[0] / 25)
    assert enc.frames_out == dec.frames_in == ref.latents.shape[0]

    passed = down.of(InputAudioRawFrame)
    assert [f.audio for f in passed] == [f.audio for f in frames]

    out = down.of(OutputAudioRawFrame)
    assert {f.sample_rate for f in out} == {24000} and {f.num_channels for f in out} == {1}
    audio = np.concatenate([np.frombuffer(f.audio, "<i2") for f in out]) / 32768
    ref_audio = np.clip(tok.decode(lat), -1, 32767 / 32768)
    assert audio.shape == ref_audio.shape == (ref.latents.shape[0] * 960,)
    assert np.abs(audio - ref_audio).max() <= LSB
    assert not up.of(ErrorFrame)
    assert isinstance(down.frames[-1], EndFrame)  # the flushed frames came before it


@pytest.mark.parametrize("rate, channels, seed", [(8000, 1, 1), (16000, 2, 2), (44100, 1, 3),
                                                  (11025, 1, 4)])
def test_encoder_resamples_any_rate_as_the_library_does(tiny_tokenizer, rate, channels, seed):
    tok = tiny_tokenizer
    rng = np.random.RandomState(seed)
    x = randn_noise(seed, int(rng.randint(rate // 2, 2 * rate)) * channels).reshape(-1, channels)
    pcm = pcm16(x)
    sizes = [int(s) for s in rng.randint(1, rate // 10, size=4)] + [rate // 50]
    enc = EncoderProcessor(tok, pass_audio=False, offload=False)
    down, _ = run(run_pipeline([enc], feeder(audio_frames(pcm, rate, sizes, channels))),
                  timeout=None)
    assert not down.of(InputAudioRawFrame)
    mono = (pcm.astype(np.float32) / 32768).mean(axis=1, dtype=np.float32)
    ref = tok.encode(offline_resampled(mono, rate, 24000))
    lat, _ = joined(down.of(LatentFrame))
    assert lat.shape == ref.shape and np.abs(lat - ref).max() <= 1e-4


@pytest.mark.parametrize("rate", [16000, 48000])
def test_decoder_output_at_the_pipeline_rate(tiny_tokenizer, rate):
    tok = tiny_tokenizer
    lat = tok.encode(randn_noise(7, 15000))
    latent_frames = [LatentFrame(latents=lat[a:a + n], representations=None, frame_index=a)
                     for a, n in zip(range(0, lat.shape[0], 3), [3] * lat.shape[0])]
    dec = DecoderProcessor(tok)  # sample_rate None: PipelineParams.audio_out_sample_rate
    down, _ = run(run_pipeline([dec], feeder(latent_frames), out_rate=rate), timeout=None)
    assert not down.of(LatentFrame)
    out = down.of(OutputAudioRawFrame)
    assert {f.sample_rate for f in out} == {rate} and dec.output_rate == rate
    audio = np.concatenate([np.frombuffer(f.audio, "<i2") for f in out]) / 32768
    ref = np.clip(offline_resampled(tok.decode(lat), 24000, rate), -1, 32767 / 32768)
    assert audio.shape == ref.shape and np.abs(audio - ref).max() <= LSB


def test_decoder_starts_afresh_after_an_interruption(tiny_tokenizer):
    """A barge-in (InterruptionFrame) while the bot talks: the next reply's audio is
    Tokenizer.decode of that reply alone, not the continuation of the interrupted one."""
    tok = tiny_tokenizer
    first, reply = tok.encode(randn_noise(8, 9600)), tok.encode(randn_noise(9, 7000))

    async def feed(worker, down):
        await worker.queue_frame(LatentFrame(latents=first, representations=None,
                                             frame_index=0))
        for _ in range(500):
            if down.of(OutputAudioRawFrame):
                break
            await asyncio.sleep(0.01)
        n_before = len(down.of(OutputAudioRawFrame))
        await worker.queue_frame(InterruptionFrame())
        for _ in range(500):
            if down.of(InterruptionFrame):
                break
            await asyncio.sleep(0.01)
        feed.n_before = n_before
        await worker.queue_frames([LatentFrame(latents=reply, representations=None,
                                               frame_index=0), EndFrame()])

    down, _ = run(run_pipeline([DecoderProcessor(tok)], feed), timeout=None)
    out = down.of(OutputAudioRawFrame)
    after = [f for f in down.frames[down.frames.index(down.of(InterruptionFrame)[0]):]
             if isinstance(f, OutputAudioRawFrame)]
    assert out[:feed.n_before] and after
    audio = np.concatenate([np.frombuffer(f.audio, "<i2") for f in after]) / 32768
    ref = np.clip(tok.decode(reply), -1, 32767 / 32768)
    assert audio.shape == ref.shape and np.abs(audio - ref).max() <= LSB


# -- against a live f3stream serve -------------------------------------------------------------
@pytest.mark.parametrize("rate, representations", [(16000, False), (24000, True),
                                                   (11025, False)])
def test_remote_encoder_equals_encode(tiny_tokenizer, rate, representations):
    """16 kHz: resampled by the server (protocol v2, pcm16); 11025 Hz, a rate the protocol
    does not take: resampled in the processor and sent at 24 kHz in float32."""
    tok = tiny_tokenizer
    pcm = pcm16(randn_noise(rate, rate + 777))
    frames = audio_frames(pcm, rate, [rate // 50, 333])

    async def main():
        async with serving(tok) as (_, url):
            enc = RemoteEncoderProcessor(url, representations=representations)
            down, up = await run_pipeline([enc], feeder(frames))
            return enc, down, up

    enc, down, up = run(main(), timeout=None)
    assert not up.of(ErrorFrame) and enc.connections == 1
    ref = tok.tokenize(offline_resampled(pcm / 32768, rate, 24000),
                       representations=representations)
    lat, reps = joined(down.of(LatentFrame))
    assert lat.shape == ref.latents.shape and np.abs(lat - ref.latents).max() <= 1e-4
    if representations:
        assert np.abs(reps - ref.representations).max() <= 1e-4
    assert down.of(LatentFrame)[-1].final
    assert [f.audio for f in down.of(InputAudioRawFrame)] == [f.audio for f in frames]
    assert isinstance(down.frames[-1], EndFrame)


async def wait_for_frames(down, n: int, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if sum(f.n_frames for f in down.of(LatentFrame)) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} latent frames arrived")


def test_remote_encoder_reconnects_when_the_server_closes_the_connection(tiny_tokenizer):
    """The server's idle timeout closes the connection between two bursts of audio: the next
    audio reconnects, the new stream's frames continue the indices and say they restarted."""
    tok = tiny_tokenizer
    a, b = pcm16(randn_noise(11, 960 * 10)), pcm16(randn_noise(12, 5000))

    async def main():
        async with serving(tok, idle_timeout=0.3) as (srv, url):
            enc = RemoteEncoderProcessor(url)

            async def feed(worker, down):
                await worker.queue_frames(audio_frames(a, 24000, [480]))
                await wait_for_frames(down, 10)
                await asyncio.sleep(0.6)  # the server closes the idle connection (4010)
                await worker.queue_frames([*audio_frames(b, 24000, [480]), EndFrame()])

            down, up = await run_pipeline([enc], feed)
            return enc, down, up

    enc, down, up = run(main(), timeout=None)
    assert not up.of(ErrorFrame)
    assert enc.connections == 2 and enc.frames_lost == 0
    frames = down.of(LatentFrame)
    lat, _ = joined(frames)
    ref = np.concatenate([tok.encode(a), tok.encode(b)])  # the second stream: fresh state
    assert lat.shape == ref.shape and np.abs(lat - ref).max() <= 1e-5
    restarted = [f.frame_index for f in frames if f.restarted]
    assert restarted == [10]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_encoder_reports_a_server_that_went_away(tiny_tokenizer):
    """The server shuts down mid-stream (its graceful flush delivers the frames so far); the
    next audio finds it gone, the reconnection attempts fail, and a clear ErrorFrame goes
    upstream; the audio still passes through and the pipeline ends normally."""
    tok = tiny_tokenizer
    a, b = pcm16(randn_noise(21, 960 * 6 + 100)), pcm16(randn_noise(22, 4800))

    async def main():
        srv = await F3Server(tok).start("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{srv.port}"
        enc = RemoteEncoderProcessor(url, reconnect_attempts=2, reconnect_delay=0.05)

        async def feed(worker, down):
            await worker.queue_frames(audio_frames(a, 24000, [480]))
            await wait_for_frames(down, 6)
            await srv.shutdown()
            await worker.queue_frames([*audio_frames(b, 24000, [480]), EndFrame()])

        down, up = await run_pipeline([enc], feed)
        return enc, down, up, url

    enc, down, up, url = run(main(), timeout=None)
    errors = up.of(ErrorFrame)
    assert len(errors) == 1, errors
    msg = errors[0].error
    assert url in msg and "went away" in msg and "3 attempt(s)" in msg, msg
    assert "f3stream serve" in msg and errors[0].processor is enc
    assert not enc.is_usable
    lat, _ = joined(down.of(LatentFrame))  # the shutdown flushed the first stream's frames
    ref = tok.encode(a)
    assert lat.shape == ref.shape and np.abs(lat - ref).max() <= 1e-5
    assert len(down.of(InputAudioRawFrame)) == len(audio_frames(a, 24000, [480])) + 10
    assert isinstance(down.frames[-1], EndFrame)


def test_remote_encoder_reports_an_unreachable_server(tiny_tokenizer):
    url = f"ws://127.0.0.1:{free_port()}"
    enc = RemoteEncoderProcessor(url, reconnect_attempts=1, reconnect_delay=0.01)
    frames = audio_frames(pcm16(randn_noise(3, 4800)), 16000, [320])
    down, up = run(run_pipeline([enc], feeder(frames)), timeout=None)
    errors = up.of(ErrorFrame)
    assert len(errors) == 1 and "is unreachable" in errors[0].error and url in errors[0].error
    assert "2 attempt(s)" in errors[0].error
    assert not down.of(LatentFrame) and len(down.of(InputAudioRawFrame)) == len(frames)
