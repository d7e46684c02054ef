"""``f3stream mic`` through a real audio device: a private PulseAudio daemon with null sinks.

The test plays a known signal into the null sink ``f3src`` while ``f3stream mic`` records its
monitor through ALSA's pulse plugin (PortAudio -> ALSA -> PulseAudio), so the whole capture path
runs as it does with a microphone. Needs the Debian packages ``pulseaudio pulseaudio-utils
libasound2-plugins libportaudio2``; skipped (with the reason) when the daemon cannot start.
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from f3stream.mic import PlaybackBuffer, quantize_int16
from f3stream.resampling import StreamResampler

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "f3stream" / "assets" / "sample.wav"
SR = 24000
PLAY_SECONDS = 2.5


# -- no device needed --------------------------------------------------------------------------
@pytest.mark.parametrize("rates", [(48000, 24000), (44100, 24000), (16000, 24000),
                                   (24000, 48000)])
def test_resampler_chunked_equals_one_shot_and_keeps_a_tone(rates):
    fin, fout = rates
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(fin // 2) * 0.1).astype(np.float32)
    r = StreamResampler(fin, fout)
    whole = np.concatenate([r.process(x), r.flush()])
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(0, 700))            # includes empty chunks
        parts.append(r.process(x[i:i + n]))
        i += n
    parts.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole.size == round(x.size * fout / fin)  # aligned: no delay in the output
    # a 1 kHz tone keeps its frequency and unit gain
    y = r.process(np.sin(2 * np.pi * 1000 * np.arange(fin) / fin))[500:-500]
    t = (np.arange(y.size) + 500) / fout
    assert abs(2 * np.mean(y * np.exp(-2j * np.pi * 1000 * t))) == pytest.approx(1.0, abs=2e-3)


def test_capture_time_counts_what_the_resampler_holds_back(tiny_tokenizer):
    """At 48 kHz the resampler returns each block's output ~7 ms late; a model-rate sample's
    capture time is still that of the captured sample at its position."""
    from f3stream.mic import MicPipeline

    pipe = MicPipeline(tiny_tokenizer, 48000, representations=False)
    block, t0 = 960, 100.0
    x = np.random.default_rng(3).uniform(-0.5, 0.5, 12 * block).astype(np.float32)
    for i in range(12):  # block i's last sample was captured at t0 + its index / 48000
        pipe._process(x[i * block:(i + 1) * block], t0 + ((i + 1) * block - 1) / 48000)
    last = pipe._n_fed - 1
    assert pipe._n_fed < 12 * block // 2  # output was held back
    assert pipe._capture_time(last) == pytest.approx(t0 + last / 24000, abs=1e-4)


def test_quantized_audio_survives_a_16_bit_wav_exactly(tmp_path):
    from f3stream.audio import load_audio, write_audio

    x = quantize_int16(np.random.default_rng(1).uniform(-1.2, 1.2, 5000))
    write_audio(tmp_path / "q.wav", x, SR)
    y, _ = load_audio(tmp_path / "q.wav", SR)
    np.testing.assert_array_equal(x, y)


def test_playback_buffer_prefills_then_pads_and_counts_underruns():
    b = PlaybackBuffer(prefill=100)
    b.write(np.ones(60, np.float32))
    assert not b.read(10).any() and b.underruns == 0      # still prefilling
    b.write(np.full(60, 2.0, np.float32))
    out = b.read(150)
    assert out[:60].tolist() == [1.0] * 60 and out[60:120].tolist() == [2.0] * 60
    assert not out[120:].any() and b.underruns == 1
    assert b.played == 120                                 # padding is not counted


def test_drain_counts_what_the_closed_device_never_played():
    from f3stream.mic.playback import drain_playback

    class _StalledStream:          # a device whose callback no longer pulls
        latency = 0.0
        aborted = closed = False

        def abort(self):
            self.aborted = True

        def close(self):
            self.closed = True

    b = PlaybackBuffer(prefill=0)
    b.write(np.ones(500, np.float32))
    b.read(200)
    stream = _StalledStream()
    t0 = time.monotonic()
    drain_playback(b, stream, SR)
    assert 1.9 < time.monotonic() - t0 < 5                # waited for the 2 s drain, no more
    assert stream.aborted and stream.closed
    assert b.played == 200 and b.abandoned == 300


def test_resampling_reader_delivers_exactly_what_the_callback_asks():
    from f3stream.mic.playback import ResamplingReader as _ResamplingReader

    src = PlaybackBuffer(prefill=0)
    src.write(np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32))
    reader = _ResamplingReader(src, StreamResampler(SR, 48000), SR, 48000)
    out = np.concatenate([reader.read(n) for n in (1, 441, 1024, 37) * 40])
    assert out.size == 1503 * 40 and np.abs(out[200:]).max() > 0.9


def test_pipeline_drops_blocks_instead_of_blocking_and_matches_offline(tiny_tokenizer):
    """A full queue drops (and counts) blocks; what was kept tokenizes as offline does."""
    from f3stream.mic import MicPipeline

    tok = tiny_tokenizer
    pipe = MicPipeline(tok, 48000, representations=True, decode=True, max_queue_blocks=4)
    blocks = np.random.default_rng(2).uniform(-0.5, 0.5, (7, 1000)).astype(np.float32)
    t0 = time.monotonic()
    for b in blocks:                     # worker not started yet: the queue fills up
        pipe.submit(b, time.monotonic())
    assert time.monotonic() - t0 < 0.5 and pipe.stats.dropped_blocks == 3
    pipe.start()
    res = pipe.finish()
    assert res.audio.size == 2000  # the resampler's output is aligned: no delay to add
    assert res.frames.n_frames == math.ceil(res.audio.size / tok.hop_length)
    off = tok.tokenize(res.audio)
    np.testing.assert_allclose(res.frames.latents, off.latents, atol=1e-5)
    np.testing.assert_allclose(res.frames.representations, off.representations, atol=1e-5)
    np.testing.assert_allclose(res.reconstruction, tok.decode(off.latents), atol=1e-5)
    # timed: the frames made live; finish() made the others, from the resampler's held-back
    # tail (~7 ms at 48 kHz completes frame 2 here) and the flush's zero padding
    assert len(pipe.stats.e2e_ms) == len(pipe.stats.compute_ms) == res.frames.n_frames - 2


def _run_cli(args: list[str], env: dict | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "f3stream", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bogus_device_is_one_line_error_exit_2(tmp_path):
    res = _run_cli(["mic", "--device", "no-such-device-f3", "--seconds", "1",
                    "--out", str(tmp_path / "out")], env=_thread_env())
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("f3stream: error: "), res.stderr
    assert "no-such-device-f3" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_portaudio_is_one_line_error_exit_2(monkeypatch, capsys):
    """sounddevice raises OSError at import when libportaudio is absent."""
    import importlib.abc

    from f3stream.cli import main

    class NoPortAudio(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    assert main(["mic", "--list-devices"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PortAudio library not found" in err[0]


# -- a real device: private PulseAudio ---------------------------------------------------------
def _thread_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """Starts a private PulseAudio (temp HOME/XDG_RUNTIME_DIR, so it works as root too) with
    null sinks ``f3src`` (test signal in; its monitor is the default source) and ``f3out``
    (default sink: where --playback goes). Yields the client environment; stops the daemon."""
    missing = [b for b in ("pulseaudio", "pactl", "paplay", "parec") if not shutil.which(b)]
    if missing:
        pytest.skip(f"PulseAudio is not installed (missing {', '.join(missing)}; apt-get "
                    "install pulseaudio pulseaudio-utils libasound2-plugins)")
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"sounddevice/PortAudio unavailable: {e}")
    root = tmp_path_factory.mktemp("pulse")
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    env = _thread_env({"HOME": str(root), "XDG_RUNTIME_DIR": str(runtime),
                       "XDG_CONFIG_HOME": str(root / "cfg"),
                       "PULSE_SERVER": f"unix:{runtime}/pulse/native"})
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    log = root / "pulseaudio.log"
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes",
         "--use-pid-file=no", f"--log-target=file:{log}",
         "-L", "module-native-protocol-unix",
         "-L", "module-null-sink sink_name=f3src rate=24000 channels=1",
         "-L", "module-null-sink sink_name=f3out rate=24000 channels=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if daemon.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-400:] if log.exists() else ""
                pytest.skip(f"PulseAudio did not start (exit {daemon.poll()}): {text}")
            if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for cmd in (["set-default-source", "f3src.monitor"], ["set-default-sink", "f3out"]):
            subprocess.run(["pactl", *cmd], env=env, check=True, capture_output=True)
        listing = subprocess.run(  # without torch: quicker than `f3stream mic --list-devices`
            [sys.executable, "-c", "import sounddevice; print(sounddevice.query_devices())"],
            env=env, capture_output=True, text=True, timeout=30)
        if listing.returncode != 0 or "pulse" not in listing.stdout:
            pytest.skip("PortAudio does not see ALSA's 'pulse' device (apt-get install "
                        f"libasound2-plugins): {listing.stdout}{listing.stderr}"[:500])
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


class _Mic:
    """``f3stream mic`` as a subprocess whose stdout and stderr are each drained by a thread.

    Both pipes are read while the process runs: ALSA prints a line to stderr for every
    under/overrun, and an unread stderr pipe that fills (64 KiB) would block the process.
    The command runs with faulthandler on SIGUSR1, so a process that does not exit in time
    is asked for every thread's stack before it is killed, and the test failure shows where
    it hung."""

    LAUNCH = ("import faulthandler, signal, sys; "
              "faulthandler.register(signal.SIGUSR1, all_threads=True); "
              "from f3stream.cli import main; sys.exit(main(sys.argv[1:]))")

    def __init__(self, args: list[str], env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", self.LAUNCH, "mic", *args],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
                if text in line:
                    return line
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        self.proc.kill()
        self.proc.wait()
        self._readers[1].join(5)
        pytest.fail(f"no {text!r} from f3stream mic; stderr: {''.join(self.stderr)}")

    def wait_for_audio(self) -> None:
        """Until a status line shows frames: the device is delivering audio (PulseAudio streams
        take a few hundred ms to start), so the whole played signal lands in the capture."""
        self.wait_for("capturing from")
        while self.wait_for("frames/s").rstrip().endswith(" 0 frames"):
            pass

    def finish(self, timeout: float = 40) -> tuple[int, str, str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)   # every thread's stack to stderr
            time.sleep(2)
            self.proc.kill()
            self.proc.wait()
            self._readers[1].join(5)
            pytest.fail(f"f3stream mic did not exit within {timeout:g} s; its threads:\n"
                        + "".join(self.stderr)[-6000:])
        for t in self._readers:  # the pipes close with the process: the readers finish
            t.join(5)
        return rc, "".join(self.stdout), "".join(self.stderr)


@pytest.fixture(scope="module")
def played(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first PLAY_SECONDS of the bundled speech sample, as the file paplay plays."""
    from f3stream.audio import load_audio, write_audio

    wav, _ = load_audio(SAMPLE, SR)
    x = quantize_int16(wav[:int(PLAY_SECONDS * SR)])
    path = write_audio(tmp_path_factory.mktemp("signal") / "played.wav", x, SR)
    return path, x


@pytest.fixture(scope="module")
def tok():
    import f3stream

    return f3stream.load()


def _play(path: Path, env: dict) -> None:
    subprocess.run(["paplay", "-d", "f3src", str(path)], env=env, check=True, timeout=20,
                   capture_output=True)


def _best_correlation(captured: np.ndarray, ref: np.ndarray) -> float:
    """Normalised cross-correlation at the best lag (1.0: an exact, delayed copy)."""
    from scipy.signal import fftconvolve

    assert captured.size >= ref.size, "capture shorter than the played signal"
    c = fftconvolve(captured.astype(np.float64), ref[::-1].astype(np.float64), mode="valid")
    lag = int(np.argmax(np.abs(c)))
    seg = captured[lag:lag + ref.size].astype(np.float64)
    return float(abs(c[lag]) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))


def _check_outputs(out: Path, tok, ref: np.ndarray) -> tuple[np.ndarray, object]:
    from f3stream.audio import load_audio
    from f3stream.tokens_io import load_tokens

    captured, _ = load_audio(out / "captured.wav", SR)
    tokens = load_tokens(out / "tokens.npz")
    assert tokens.sample_rate == SR and tokens.frame_rate == 25
    assert tokens.n_frames == math.ceil(captured.size / tok.hop_length) >= 75
    assert _best_correlation(captured, ref) > 0.9
    offline = tok.tokenize(captured)
    assert np.abs(offline.latents - tokens.latents).max() <= 1e-5
    assert np.abs(offline.representations - tokens.representations).max() <= 1e-5
    return captured, tokens


def test_mic_records_the_played_signal_and_tokens_match_offline(pulse, played, tok, tmp_path):
    path, ref = played
    out = tmp_path / "take"
    mic = _Mic(["--device", "pulse", "--seconds", "5", "--save-reconstruction",
                "--out", str(out)], pulse)
    mic.wait_for_audio()
    _play(path, pulse)
    rc, stdout, stderr = mic.finish()
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert "(24000 Hz)" in stdout and "frames/s" in stdout and "compute" in stdout
    assert "stopped (time limit)" in stdout and "dropped input blocks" in stdout
    compute, e2e = re.search(r"compute p50 ([\d.]+) ms.*end-to-end p50 ([\d.]+) ms",
                             stdout).groups()
    assert float(e2e) >= float(compute)      # capture -> ready includes the compute
    _, tokens = _check_outputs(out, tok, ref)
    from f3stream.audio import load_audio

    recon, _ = load_audio(out / "reconstruction.wav", SR)
    expected = np.clip(tok.decode(tokens.latents), -1, 1)
    assert recon.shape == expected.shape
    assert np.abs(recon - expected).max() <= 1.5 / 32768


# 2026-12-02: in three runs of the full default suite (one on a quiet machine) `f3stream mic
# --playback` did not exit within 40 s of SIGINT, while this test passed alone. Since then
# the output stream is aborted after the drain wait instead of stopped (ALSA's drain does not
# return on a stalled device) and the take is written before the device is closed; a hang
# would now fail with every thread's stack (see `_Mic`).
def test_mic_resamples_plays_back_and_saves_on_ctrl_c(pulse, played, tok, tmp_path):
    """Capture at 48 kHz (streaming resampler to 24 kHz), play the live reconstruction into
    the f3out sink (recorded from its monitor), stop with SIGINT as a user's Ctrl-C would."""
    path, ref = played
    out = tmp_path / "take"
    rec_path = tmp_path / "played_back.raw"
    with open(rec_path, "wb") as f:
        parec = subprocess.Popen(["parec", "-d", "f3out.monitor", "--raw", "--format=s16le",
                                  "--rate=24000", "--channels=1"], env=pulse, stdout=f)
    try:
        mic = _Mic(["--device", "pulse", "--capture-rate", "48000", "--playback",
                    "--out", str(out)], pulse)
        mic.wait_for_audio()
        _play(path, pulse)
        time.sleep(0.5)
        # where PulseAudio routes the mic's playback stream, for the failure message below
        streams = subprocess.run(["pactl", "list", "sink-inputs"], env=pulse,
                                 capture_output=True, text=True, timeout=10).stdout
        mic.proc.send_signal(signal.SIGINT)
        rc, stdout, stderr = mic.finish()
    finally:
        parec.terminate()
        parec.wait(5)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert "48000 Hz, resampled to 24000 Hz" in stdout and "stopped (Ctrl-C)" in stdout
    _, tokens = _check_outputs(out, tok, ref)
    recon = (out / "reconstruction.wav")
    assert recon.is_file()
    played_back = np.frombuffer(rec_path.read_bytes(), dtype="<i2")
    assert "played back" in stdout, stdout
    assert played_back.size > SR and np.abs(played_back).max() > 100, (
        f"nothing was played: parec took {played_back.size / SR:.1f} s of silence from "
        f"f3out.monitor\n--- f3stream mic stdout:\n{stdout}\n--- stderr:\n{stderr[-2000:]}"
        f"\n--- pactl list sink-inputs before Ctrl-C:\n{streams[-3000:]}")
