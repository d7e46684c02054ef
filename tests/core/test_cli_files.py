"""`f3stream encode / decode / reconstruct` on files (issue 13): block by block, so memory does
not grow with the file, with outputs equal to the whole-file computation; a truncated file is
an error, not a silently shorter result."""

import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

import f3stream.audiofile
import f3stream.cli
import f3stream.tokenizer
from f3stream.audio import write_audio
from f3stream.audiofile import AudioFileReader
from f3stream.cli import main
from f3stream.errors import AudioInputError
from f3stream.frames import EncodedFrames
from f3stream.tokens_io import load_tokens, save_tokens

SR = 24000


@pytest.fixture(scope="module")
def ckpt(tiny_tokenizer, tmp_path_factory):
    return tiny_tokenizer.save(tmp_path_factory.mktemp("ckpt") / "tiny")


def stereo_file(path, seconds, rate=44100, seed=0, subtype="PCM_16", fmt=None):
    x = 0.2 * np.random.default_rng(seed).standard_normal((round(seconds * rate), 2))
    sf.write(path, x.astype(np.float32), rate, subtype=subtype, format=fmt)
    return path


def whole_file(path, rate=SR):
    """The reference: the whole file read at once, mixed down and run through one streaming
    resampler in a single call (its output does not depend on how the input is cut)."""
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return soxr.ResampleStream(file_rate, rate, 1, dtype="float32").resample_chunk(mono,
                                                                                 last=True)


@pytest.fixture
def small_blocks(monkeypatch):
    """Many blocks in a few seconds of audio: 1000-frame reads, 16-frame model groups."""
    monkeypatch.setattr(f3stream.audiofile, "READ_BLOCK_FRAMES", 1000)
    monkeypatch.setattr(f3stream.tokenizer, "BLOCK_FRAMES", 16)


def run(*argv):
    assert main([str(a) for a in argv]) == 0


# -- outputs equal the whole-file result ---------------------------------------------------------
def test_reader_blocks_join_to_the_whole_file():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = stereo_file(f"{d}/in.wav", 2.3, 44100)
        with AudioFileReader(path, block_frames=777) as f:
            blocks = list(f.blocks(SR))
            assert (f.sample_rate, f.channels, f.frames) == (44100, 2, round(2.3 * 44100))
        assert len(blocks) > 100
        np.testing.assert_array_equal(np.concatenate(blocks), whole_file(path))


def test_encode_in_small_blocks_equals_the_whole_file(tiny_tokenizer, ckpt, tmp_path,
                                                      small_blocks):
    path = stereo_file(tmp_path / "in.wav", 3.3, 44100)
    run("encode", path, "--out", tmp_path / "t.npz", "--checkpoint", ckpt)
    got = load_tokens(tmp_path / "t.npz")
    ref = tiny_tokenizer.tokenize(whole_file(path))
    assert got.n_frames == ref.n_frames == 83  # ceil(3.3 * 25): several 16-frame groups
    np.testing.assert_array_equal(got.latents, ref.latents)
    np.testing.assert_array_equal(got.representations, ref.representations)
    assert (got.sample_rate, got.frame_rate) == (SR, 25)

    run("encode", path, "--out", tmp_path / "l.npz", "--checkpoint", ckpt,
        "--no-representations")
    only = load_tokens(tmp_path / "l.npz")
    assert only.representations is None
    np.testing.assert_array_equal(only.latents, ref.latents)


def test_decode_in_small_blocks_equals_the_whole_file(tiny_tokenizer, ckpt, tmp_path,
                                                      small_blocks):
    z = tiny_tokenizer.encode(whole_file(stereo_file(tmp_path / "in.wav", 3.3)))
    save_tokens(tmp_path / "t.npz", EncodedFrames(0, z, tiny_tokenizer.represent(z)), SR, 25)
    run("decode", tmp_path / "t.npz", "--out", tmp_path / "out.wav", "--checkpoint", ckpt)
    write_audio(tmp_path / "ref.wav", tiny_tokenizer.decode(z), SR)
    assert (tmp_path / "out.wav").read_bytes() == (tmp_path / "ref.wav").read_bytes()


def test_reconstruct_in_small_blocks_equals_the_whole_file(tiny_tokenizer, ckpt, tmp_path,
                                                           small_blocks, capsys):
    path = stereo_file(tmp_path / "in.wav", 3.3, 48000)
    run("reconstruct", path, "--out", tmp_path / "out.flac", "--checkpoint", ckpt)
    assert "through 83 frames" in capsys.readouterr().out
    wav = whole_file(path)
    write_audio(tmp_path / "ref.flac", tiny_tokenizer.decode(tiny_tokenizer.encode(wav)), SR)
    assert (tmp_path / "out.flac").read_bytes() == (tmp_path / "ref.flac").read_bytes()


def test_encode_file_equals_the_command(tiny_tokenizer, ckpt, tmp_path):
    path = stereo_file(tmp_path / "in.wav", 1.7, 16000)
    run("encode", path, "--out", tmp_path / "t.npz", "--checkpoint", ckpt)
    np.testing.assert_array_equal(tiny_tokenizer.encode_file(path).latents,
                                  load_tokens(tmp_path / "t.npz").latents)


# -- memory does not grow with the file ---------------------------------------------------------
def _traced_peak(argv) -> int:
    tracemalloc.start()
    try:
        run(*argv)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("command", ["encode", "decode", "reconstruct"])
def test_memory_does_not_grow_with_the_file(command, ckpt, tmp_path, monkeypatch):
    """Peak Python/numpy memory (tracemalloc) for 20 s and 60 s of 48 kHz stereo (both
    longer than one 10 s model block): the 40 s more are 15 MB of float32 file data, 3.8 MB
    at 24 kHz, 3.8 MB of decoded audio; streaming adds only the longer file's latents to
    decode (64 x 4 bytes per frame: 0.25 MB)."""
    monkeypatch.setattr(f3stream.cli, "QUALITY_SECONDS", 2)  # reconstruct keeps this much
    peaks = []
    for i, seconds in enumerate((1, 20, 60)):  # the first run only imports and warms up
        wav = stereo_file(tmp_path / f"{seconds}.wav", seconds, 48000, seed=i)
        tokens, out = tmp_path / f"{seconds}.npz", tmp_path / f"{seconds}.out.wav"
        if command == "decode":
            run("encode", wav, "--out", tokens, "--checkpoint", ckpt)
        argv = {"encode": ["encode", wav, "--out", tokens],
                "decode": ["decode", tokens, "--out", out],
                "reconstruct": ["reconstruct", wav, "--out", out]}[command]
        peaks.append(_traced_peak(argv + ["--checkpoint", ckpt]))
    assert peaks[2] - peaks[1] < 1 << 20, [f"{p / 2**20:.1f} MiB" for p in peaks]


# -- truncated files (item 7) --------------------------------------------------------------------
FORMATS = [("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"), ("WAVEX", "PCM_24", "wav"),
           ("RF64", "PCM_16", "wav"), ("W64", "PCM_16", "w64"), ("AIFF", "PCM_16", "aiff"),
           ("AU", "PCM_16", "au")]


@pytest.mark.parametrize("fmt,subtype,suffix", FORMATS)
@pytest.mark.parametrize("keep", [1000, 0.6])
def test_truncated_file_is_an_error(tmp_path, fmt, subtype, suffix, keep):
    full = stereo_file(tmp_path / f"full.{suffix}", 1.0, 24000, subtype=subtype, fmt=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(AudioInputError, match=r"cut\.\w+ is truncated: its header announces "
                                              r"\d+ (bytes|frames).* but the file holds \d+"):
        AudioFileReader(cut)
    with AudioFileReader(full) as f:  # the complete file is fine
        assert f.frames == 24000


def test_truncated_wav_on_the_command_line(ckpt, tmp_path, capsys):
    """Issue 13: a 1000-byte cut of a valid wav encoded without a word."""
    full = stereo_file(tmp_path / "full.wav", 1.0, 24000)
    (tmp_path / "cut.wav").write_bytes(full.read_bytes()[:1000])
    for command in ("encode", "reconstruct"):
        out = tmp_path / f"out.{command}"
        assert main([command, str(tmp_path / "cut.wav"), "--out", str(out) + ".wav",
                     "--checkpoint", str(ckpt)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("f3stream: error: ") and err.count("\n") == 1
        assert "cut.wav is truncated: its header announces 96000 bytes of 'data' but the file " \
               "holds 956" in err
        assert not list(tmp_path.glob("out.*"))


def _wav_with_sizes(path, riff=None, data=None):
    raw = bytearray(stereo_file(path, 0.5, 24000).read_bytes())
    at = raw.index(b"data")
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    if data is not None:
        raw[at + 4:at + 8] = struct.pack("<I", data)
    path.write_bytes(bytes(raw))
    return path


def test_complete_files_with_unusual_headers_are_read(tmp_path):
    """Not truncated: the 'unknown length' sizes of streaming writers, and chunks after the
    data (e.g. a LIST chunk, with the RIFF size covering it)."""
    for path in (_wav_with_sizes(tmp_path / "a.wav", riff=0xFFFFFFFF, data=0xFFFFFFFF),
                 _wav_with_sizes(tmp_path / "b.wav", data=0xFFFFFFFF)):
        with AudioFileReader(path) as f:
            assert sum(b.size for b in f.blocks(SR)) == 12000
    listed = tmp_path / "c.wav"
    raw = bytearray(stereo_file(listed, 0.5, 24000).read_bytes()) + b"LIST\x04\x00\x00\x00INFO"
    raw[4:8] = struct.pack("<I", len(raw) - 8)
    listed.write_bytes(bytes(raw))
    with AudioFileReader(listed) as f:
        assert sum(b.size for b in f.blocks(SR)) == 12000


def test_empty_and_unreadable_files(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), SR)
    with pytest.raises(AudioInputError, match="empty.wav is empty"):
        AudioFileReader(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 8)
    with pytest.raises(AudioInputError, match="cannot read audio file"):
        AudioFileReader(tmp_path / "junk.wav")
    with pytest.raises(AudioInputError, match="not found"):
        AudioFileReader(tmp_path / "missing.wav")


def test_peak_memory_benchmark_runs(ckpt, tmp_path):
    """benchmarks/peak_memory.py end to end, small (the hour-long figures are in
    docs/benchmarks.md): it makes its input, runs the command, reports a peak RSS."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "peak_memory.py"
    out = subprocess.run([sys.executable, str(script), "--seconds", "2", "--rate", "48000",
                          "--workdir", str(tmp_path), "--checkpoint", str(ckpt),
                          "--commands", "encode", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["input"] == {"seconds": 2.0, "rate": 48000, "channels": 2,
                               "bytes": (tmp_path / "input-2s-48000hz-2ch.wav").stat().st_size}
    run = result["runs"]["encode"]
    assert run["rc"] == 0 and run["peak_rss_mib"] > 50
    assert load_tokens(tmp_path / "tokens.npz").n_frames == 50
