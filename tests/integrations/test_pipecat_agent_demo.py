"""demos/pipecat_agent.py end to end, as a user runs it: a short 16 kHz file with two
utterances goes through the pipecat pipeline (tokenizer, parrot agent, decoder) with the
bundled checkpoint, and the agent's answers come out as a 24 kHz wav within seconds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="pipecat-ai is not installed: pip install "
                    "'f3stream[pipecat]' (part of '.[dev]')")

import soundfile as sf  # noqa: E402

from f3stream.audio import load_audio, resample, write_audio  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demos" / "pipecat_agent.py"
SAMPLE = REPO / "f3stream" / "assets" / "sample.wav"


def run_demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_help():
    r = run_demo("--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--mic" in r.stdout and "--url" in r.stdout and "--out" in r.stdout


def test_two_utterances_in_two_answers_out(tmp_path):
    wav, _ = load_audio(SAMPLE, 24000)
    quiet = np.zeros(int(1.2 * 24000), np.float32)
    signal = np.concatenate([wav[:int(1.6 * 24000)], quiet, wav[2 * 24000:int(3.2 * 24000)],
                             quiet[:int(0.3 * 24000)]])       # the second turn runs to the end
    src = write_audio(tmp_path / "in.wav", resample(signal, 24000, 16000), 16000)
    out = tmp_path / "reply.wav"
    r = run_demo(str(src), "--out", str(out), "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    turns = re.findall(r"user turn (\d+): ([\d.]+)-([\d.]+) s, (\d+) frames", r.stdout)
    assert [t[0] for t in turns] == ["1", "2"], r.stdout
    assert float(turns[0][1]) < 0.2 and 1.4 < float(turns[0][2]) < 1.9
    assert 2.6 < float(turns[1][1]) < 3.0 and "(stream ended)" in r.stdout
    assert "|" in r.stdout and "#" in r.stdout  # the per-frame speech strip
    frames = sum(int(t[3]) for t in turns)
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.channels == 1
    assert info.frames == frames * 960  # every answer frame decoded, the decoder tail too
    audio, _ = sf.read(str(out), dtype="float32")
    assert np.sqrt(np.mean(audio ** 2)) > 1e-3
    m = re.search(r"to .*reply\.wav; ([\d.]+) s", r.stdout)
    assert m and float(m.group(1)) < 20, r.stdout  # the pipeline itself, not the model load
