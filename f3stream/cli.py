"""The ``f3stream`` command line: demo, encode, decode, reconstruct, info.

Every user error (bad audio, bad token file, bad checkpoint, unreadable or unwritable path) is
reported as one line ``f3stream: error: <message>`` on stderr with exit status 2; Ctrl-C exits
with 130. All outputs are written atomically (a failed or interrupted run leaves no half file).
encode, decode and reconstruct read, compute and write block by block (``AudioFileReader``,
``Tokenizer.tokenize_stream``/``decode_stream``, ``TokensWriter``/``AudioFileWriter``), so their
memory does not grow with the file, and their outputs equal the whole-file computation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import f3stream

from .audio import load_audio, write_audio
from .audiofile import AudioFileReader, AudioFileWriter
from .checkpoint import WEIGHTS_FILE, default_checkpoint_dir, human_size
from .commandline import (CLIError, add_command, add_model_options, load_tokenizer,
                          one_line_usage_errors)
from .errors import F3StreamError
from .fileio import atomic_path
from .frames import EncodedFrames
from .tokenizer import Tokenizer
from .tokens_io import TokensWriter, load_tokens, save_tokens

EXIT_USAGE = 2        # user errors, like argparse's own usage errors
EXIT_INTERRUPTED = 130
QUALITY_SECONDS = 20  # reconstruct compares at most this much (60 s raised its peak by 135 MB)


def assets_dir() -> Path:
    return Path(f3stream.__file__).parent / "assets"


# -- helpers -----------------------------------------------------------------------------------
def _checkpoint_label(args: argparse.Namespace) -> str:
    if args.checkpoint is None:
        return f"{default_checkpoint_dir()} (bundled)"
    return str(args.checkpoint)


def _trained_status(info: dict[str, Any]) -> tuple[bool | None, str]:
    """(trained flag, one readable line) from a checkpoint's info."""
    trained = info.get("trained")
    desc = info.get("description")
    suffix = f": {desc}" if desc else ""
    if trained is True:
        return True, f"trained{suffix}"
    if trained is False:
        return False, f"UNTRAINED{suffix}"
    return None, f"unknown (the checkpoint does not say whether it is trained){suffix}"


def _check_audio_out(path: Path) -> None:
    """Fails early (before any model work) if ``write_audio`` cannot write this format."""
    import soundfile as sf

    fmt = path.suffix.lstrip(".").upper() or "WAV"
    if fmt not in sf.available_formats() or not sf.check_format(fmt, "PCM_16"):
        raise CLIError(f"cannot write {path}: '{path.suffix}' is not an audio format that can "
                       "hold 16-bit PCM; use .wav or .flac")


def _check_out(out: Path, inp: Path | None = None) -> None:
    """Fails early if ``out`` cannot be written (a parent is a file) or would overwrite ``inp``;
    ``atomic_path`` creates missing parent directories."""
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"cannot write {out}: {parent} is not a directory")
            break
    if out.is_dir():
        raise CLIError(f"cannot write {out}: it is a directory")
    if inp is not None and out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise CLIError(f"output {out} is the input file; choose another --out")


def quality_line(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> str:
    """Reconstruction quality in words: log-mel L1 always; PESQ-WB and STOI when the ``[eval]``
    extra is installed. (No SNR: a codec that does not reproduce the exact phase scores near
    0 dB however good it sounds.)"""
    from .evaluation.metrics import log_mel_l1

    n = min(reference.size, estimate.size)
    ref, est = reference[:n], np.clip(estimate[:n], -1.0, 1.0)
    parts = [f"mel distance {log_mel_l1(ref, est, sample_rate):.3f} (log-mel L1, 0 = identical)"]
    from .evaluation.errors import EvalError
    from .evaluation.metrics import pesq_wb, stoi

    try:
        p, s = pesq_wb(ref, est, sample_rate), stoi(ref, est, sample_rate)
    except EvalError:  # the optional [eval] extra is not installed
        parts.append("(pip install 'f3stream[eval]' for PESQ-WB/STOI)")
    else:
        if p is not None:
            parts.append(f"PESQ-WB {p:.2f} (1-4.6)")
        if s is not None:
            parts.append(f"STOI {s:.3f} (0-1)")
    return ", ".join(parts)


def _secs(n_samples: int, sample_rate: int) -> str:
    return f"{n_samples / sample_rate:.2f} s"


def _shape(x: np.ndarray | None) -> str:
    return "none" if x is None else "[" + ", ".join(str(d) for d in x.shape) + "]"


def _encode_wav(tok: Tokenizer, wav: np.ndarray, representations: bool) -> EncodedFrames:
    return tok.tokenize(wav, representations=representations, progress=True)


class _Head:
    """Counts the samples of the blocks passing through :meth:`through` and keeps the first
    ``keep`` of them: what a command reports about a stream it never holds whole."""

    def __init__(self, keep: int = 0):
        self.keep, self.n = keep, 0
        self._parts: list[np.ndarray] = []

    def through(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            if self.n < self.keep:
                self._parts.append(block[:self.keep - self.n].copy())
            self.n += block.size
            yield block

    @property
    def head(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)


# -- subcommands -------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    sample = assets_dir() / "sample.wav"
    text_file = assets_dir() / "sample.txt"
    out_dir = Path(args.out)
    tokens_path = out_dir / "tokens.npz"
    recon_path = out_dir / "reconstruction.wav"
    original_path = out_dir / "original.wav"
    for path in (tokens_path, recon_path, original_path):
        _check_out(path)

    tok = load_tokenizer(args)
    trained, status = _trained_status(tok.info)
    wav, file_sr = load_audio(sample, tok.sample_rate)
    sr = tok.sample_rate

    t0 = time.perf_counter()
    frames = _encode_wav(tok, wav, representations=True)
    t1 = time.perf_counter()
    recon = tok.decode(frames.latents, progress=True)
    t2 = time.perf_counter()

    save_tokens(tokens_path, frames, sr, tok.frame_rate)
    write_audio(recon_path, recon, sr)
    with atomic_path(original_path) as tmp:
        shutil.copyfile(sample, tmp)

    duration = wav.size / sr
    rtf = (t2 - t0) / duration
    quality = quality_line(wav, recon, sr)
    text = text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else ""
    resampled = f" (resampled from {file_sr} Hz)" if file_sr != sr else ""

    print("f3stream demo: the bundled speech sample, tokenized and reconstructed")
    print(f"  checkpoint : {_checkpoint_label(args)}")
    print(f"               {status}")
    print(f"  input      : {sample.name}, {_secs(wav.size, sr)} of mono audio at {sr} Hz"
          f"{resampled} ({wav.size} samples)")
    if text:
        print(f'  text       : "{text}"')
    print(f"  tokens     : {frames.n_frames} frames at {tok.frame_rate} Hz "
          f"({tok.hop_length} samples = {1000 / tok.frame_rate:g} ms per frame)")
    print(f"               latents {_shape(frames.latents)}, representations "
          f"{_shape(frames.representations)}")
    print(f"  time       : encode {t1 - t0:.2f} s + decode {t2 - t1:.2f} s on {tok.device}; "
          f"real-time factor {rtf:.3f} (lower is faster)")
    print(f"  quality    : {quality}")
    print(f"  wrote      : {tokens_path}")
    print(f"               {recon_path} ({_secs(recon.size, sr)} at {sr} Hz)")
    print(f"               {original_path}")
    if trained is False:
        print("WARNING: this checkpoint is UNTRAINED (a randomly initialised placeholder), so "
              "reconstruction.wav is noise, not speech, and the latents/representations carry "
              "no learned meaning. Pass --checkpoint DIR with trained weights for real results.")
    elif trained is None:
        print("NOTE: the checkpoint does not record whether it is trained; if "
              "reconstruction.wav sounds like noise, it is not.")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    inp = Path(args.input)
    out = Path(args.out) if args.out else inp.with_suffix(".npz")
    _check_out(out, inp)
    reps = not args.no_representations
    with AudioFileReader(inp) as audio:  # a bad file fails before the model loads
        tok = load_tokenizer(args)
        sr = tok.sample_rate
        t0 = time.perf_counter()
        wav = _Head()
        with TokensWriter(out, sr, tok.frame_rate, tok.latent_dim,
                          tok.representation_dim if reps else None) as writer:
            for frames in tok.tokenize_stream(wav.through(audio.blocks(sr)), reps, progress=True,
                                              total_samples=audio.n_samples(sr)):
                writer.write(frames)
            elapsed = time.perf_counter() - t0
    resampled = f", resampled from {audio.sample_rate} Hz" if audio.sample_rate != sr else ""
    print(f"encoded {inp} ({_secs(wav.n, sr)} at {sr} Hz mono{resampled}) in {elapsed:.2f} s")
    print(f"  {writer.n_frames} frames at {tok.frame_rate} Hz: latents "
          f"[{writer.n_frames}, {tok.latent_dim}], representations "
          f"{f'[{writer.n_frames}, {tok.representation_dim}]' if reps else 'none'}")
    print(f"  wrote {out}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    inp = Path(args.tokens)
    out = Path(args.out) if args.out else inp.with_suffix(".wav")
    _check_audio_out(out)
    _check_out(out, inp)
    tokens = load_tokens(inp, representations=False)
    if tokens.n_frames == 0:
        raise CLIError(f"{inp} holds 0 frames: nothing to decode")
    tok = load_tokenizer(args)
    for name, have, want in (("sample rate", tokens.sample_rate, tok.sample_rate),
                             ("frame rate", tokens.frame_rate, tok.frame_rate)):
        if have is not None and have != want:
            raise CLIError(f"{inp} was made at {name} {have} Hz but the checkpoint uses "
                           f"{want} Hz; decode with the checkpoint that encoded it (--checkpoint)")
    if tokens.latents.shape[1] != tok.latent_dim:
        raise CLIError(f"{inp} has {tokens.latents.shape[1]}-dim latents but the checkpoint "
                       f"expects {tok.latent_dim}; decode with the checkpoint that encoded it "
                       "(--checkpoint)")
    t0 = time.perf_counter()
    with AudioFileWriter(out, tok.sample_rate) as writer:
        for piece in tok.decode_stream([tokens.latents], progress=True,
                                       total_frames=tokens.n_frames):
            writer.write(piece)
        elapsed = time.perf_counter() - t0
    print(f"decoded {tokens.n_frames} frames from {inp} in {elapsed:.2f} s")
    print(f"  wrote {out} ({_secs(writer.samples, tok.sample_rate)} at {tok.sample_rate} Hz)")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    inp = Path(args.input)
    out = Path(args.out) if args.out else inp.with_name(inp.stem + ".reconstructed.wav")
    _check_audio_out(out)
    _check_out(out, inp)
    with AudioFileReader(inp) as audio:
        tok = load_tokenizer(args)
        sr = tok.sample_rate
        # the quality figures compare the first QUALITY_SECONDS, so memory stays flat
        wav, recon = _Head(QUALITY_SECONDS * sr), _Head(QUALITY_SECONDS * sr)
        t0 = time.perf_counter()
        with AudioFileWriter(out, sr) as writer:
            frames = tok.tokenize_stream(wav.through(audio.blocks(sr)), representations=False,
                                         progress=True, total_samples=audio.n_samples(sr))
            for piece in recon.through(tok.decode_stream(f.latents for f in frames)):
                writer.write(piece)
            elapsed = time.perf_counter() - t0
    resampled = f", resampled from {audio.sample_rate} Hz" if audio.sample_rate != sr else ""
    part = f" (first {QUALITY_SECONDS} s)" if wav.n > wav.keep else ""
    print(f"reconstructed {inp} ({_secs(wav.n, sr)}{resampled}) through "
          f"{tok.n_frames(wav.n)} frames in {elapsed:.2f} s")
    print(f"  {quality_line(wav.head, recon.head, sr)}{part}")
    print(f"  checkpoint {_trained_status(tok.info)[1]}")
    print(f"  wrote {out} ({_secs(writer.samples, sr)} at {sr} Hz)")
    return 0


def checkpoint_summary(tok: Tokenizer, path: Path) -> dict[str, Any]:
    """The facts ``f3stream info`` shows, as plain JSON-able data."""
    ae = tok.config.autoencoder
    params = {name: sum(p.numel() for p in module.parameters())
              for name, module in tok.model.named_children()}
    params["total"] = sum(p.numel() for p in tok.model.parameters())
    frame_ms = 1000.0 / ae.frame_rate
    delay_ms = 1000.0 * ae.decoder_delay / ae.sample_rate
    weights = path / WEIGHTS_FILE
    return {
        "checkpoint": str(path),
        "weights_bytes": weights.stat().st_size if weights.is_file() else None,
        "trained": tok.info.get("trained"),
        "description": tok.info.get("description"),
        "sample_rate": tok.sample_rate,
        "frame_rate": tok.frame_rate,
        "hop_length": tok.hop_length,
        "latent_dim": tok.latent_dim,
        "representation_dim": tok.representation_dim,
        "parameters": params,
        "latency_ms": {"frame": frame_ms, "decoder_delay": delay_ms,
                       "decoder_delay_samples": ae.decoder_delay,
                       "total": frame_ms + delay_ms},
        "info": tok.info,
        "config": tok.config.to_dict(),
        "f3stream_version": f3stream.__version__,
    }


def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint) if args.checkpoint is not None else default_checkpoint_dir()
    tok = load_tokenizer(args)  # --checkpoint only: on the CPU, torch engine
    s = checkpoint_summary(tok, path)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    lat = s["latency_ms"]
    parts = " | ".join(f"{k} {v:,}" for k, v in s["parameters"].items() if k != "total" and v)
    size = f", {human_size(s['weights_bytes'])} of weights" if s["weights_bytes"] else ""
    print(f"checkpoint      : {_checkpoint_label(args)}{size}")
    print(f"trained         : {_trained_status(tok.info)[1]}")
    print(f"audio           : {s['sample_rate']} Hz mono; {s['frame_rate']} frames/s, hop "
          f"{s['hop_length']} samples")
    print(f"latents         : {s['latent_dim']} dims per frame")
    print(f"representations : {s['representation_dim']} dims per frame")
    print(f"parameters      : {parts} | total {s['parameters']['total']:,}")
    ae = tok.config.autoencoder
    print(f"decoder         : {ae.decoder_conv_blocks} ConvNeXt blocks, "
          + ("harmonic source (pitch head + oscillator)" if ae.harmonic_source
             else "no harmonic source"))
    print(f"latency         : {lat['total']:g} ms algorithmic = {lat['frame']:g} ms frame + "
          f"{lat['decoder_delay']:g} ms decoder look-ahead ({lat['decoder_delay_samples']} "
          "samples)")
    return 0


# -- parser ------------------------------------------------------------------------------------
def register(subs) -> None:
    """Registers demo, encode, decode, reconstruct and info."""
    p = add_command(subs, "demo", "tokenize and reconstruct the bundled speech sample",
                    "Tokenizes the bundled speech sample, reconstructs it, and writes "
                    "tokens.npz, reconstruction.wav and original.wav into DIR, printing timings, "
                    "shapes, quality figures and whether the checkpoint is trained.",
                    "  f3stream demo --out f3stream-demo\n", cmd_demo)
    add_model_options(p)
    p.add_argument("--out", metavar="DIR", default="f3stream-demo",
                   help="output directory (default: ./f3stream-demo)")

    p = add_command(subs, "encode", "audio file -> tokens (.npz)",
                    "Encodes an audio file (any format libsndfile reads, any sample rate; "
                    "multichannel is mixed down to mono and resampled to the model's rate) into "
                    "an .npz holding 'latents' [frames, 64], 'representations' [frames, 768], "
                    "'sample_rate' and 'frame_rate'.",
                    "  f3stream encode speech.flac --out speech.npz\n", cmd_encode)
    add_model_options(p)
    p.add_argument("input", metavar="INPUT", help="audio file to encode")
    p.add_argument("--out", metavar="FILE.npz", default=None,
                   help="output token file (default: INPUT with suffix .npz)")
    p.add_argument("--no-representations", action="store_true",
                   help="store only the latents (skips the representation encoder)")

    p = add_command(subs, "decode", "tokens (.npz) -> audio file",
                    "Decodes the 'latents' of a token file written by 'f3stream encode' back to "
                    "16-bit audio at the model's sample rate. Use the checkpoint that encoded "
                    "them.",
                    "  f3stream decode speech.npz --out speech.decoded.wav\n", cmd_decode)
    add_model_options(p)
    p.add_argument("tokens", metavar="TOKENS.npz", help="token file from 'f3stream encode'")
    p.add_argument("--out", metavar="FILE.wav", default=None,
                   help="output audio file, .wav or .flac (default: TOKENS with suffix .wav)")

    p = add_command(subs, "reconstruct", "audio file -> tokens -> audio file, in one go",
                    "Encodes an audio file and decodes it again (what a listener of the codec "
                    "hears), printing its quality against the input (mel distance; PESQ-WB and "
                    "STOI with the [eval] extra).",
                    "  f3stream reconstruct speech.wav --out speech.reconstructed.wav\n",
                    cmd_reconstruct)
    add_model_options(p)
    p.add_argument("input", metavar="INPUT", help="audio file to reconstruct")
    p.add_argument("--out", metavar="FILE.wav", default=None,
                   help="output audio file (default: INPUT's name + .reconstructed.wav)")

    p = add_command(subs, "info", "describe a checkpoint",
                    "Prints a checkpoint's sample rate, frame rate, hop length, latent and "
                    "representation sizes, parameter counts, whether it is trained, and its "
                    "algorithmic latency (one frame plus the decoder's look-ahead).",
                    "  f3stream info --json\n", cmd_info)
    add_model_options(p, device=None, backend=False)
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def build_parser() -> argparse.ArgumentParser:
    from . import bench, generate, mic
    from .bulk import cli as bulk_cli
    from .evaluation import cli as evaluation_cli
    from .server import cli as server_cli

    parser = argparse.ArgumentParser(
        prog="f3stream",
        description="Streaming neural audio tokenizer: speech -> 64-dim latents at 25 Hz "
                    "(+ 768-dim representations) -> speech.",
        epilog="examples:\n  f3stream demo\n  f3stream encode speech.wav --out speech.npz\n"
               "  f3stream decode speech.npz --out speech.decoded.wav\n"
               "Run 'f3stream COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    one_line_usage_errors(parser)
    parser.add_argument("--version", action="version",
                        version=f"f3stream {f3stream.__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # every command module registers its commands the same way: register(subs)
    for module in (sys.modules[__name__], server_cli, evaluation_cli, bench, generate, mic,
                   bulk_cli):
        module.register(subs)
    return parser


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``f3stream COMMAND``."""
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subs.choices[command]


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.strerror}: {e.filename}"
        if e.filename2 is not None:
            msg += f" -> {e.filename2}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # exactly one line


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # reported by the command's own parser, so the message names the command
            command_parser(parser, args.command).error(
                f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C; tokenize turns SIGTERM into one with exit 143
        return getattr(e, "exit_status", EXIT_INTERRUPTED)
    except BrokenPipeError:  # e.g. `f3stream info | head -1`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except (F3StreamError, OSError) as e:
        print(f"f3stream: error: {_describe(e)}", file=sys.stderr)
        return EXIT_USAGE
