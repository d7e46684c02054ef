"""``f3stream generate``: continue a spoken prompt with the latent LM and decode it to audio."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .audio import load_audio, write_audio
from .commandline import add_command, add_model_options, load_tokenizer
from .errors import F3StreamError


def default_latent_lm_dir() -> Path:
    return Path(__file__).parent / "checkpoints" / "latent_lm"


def generate(tok, lm, scale: float, prompt_wav: np.ndarray, seconds: float,
             temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (prompt + continuation audio, continuation latents)."""
    z = tok.encode(prompt_wav)
    if z.shape[0] < 2 * lm.cfg.patch:
        raise F3StreamError("the prompt is too short: give at least 0.2 s of audio")
    n = int(round(seconds * tok.frame_rate))
    prompt = torch.from_numpy(z / scale)[None]
    cont = lm.continue_latents(prompt, n, temperature=temperature, seed=seed)[0].numpy() * scale
    # Decode prompt + continuation as one stream so the join is seamless.
    audio = tok.decode(np.concatenate([z, cont.astype(np.float32)]))
    return audio, cont


def cmd_generate(args: argparse.Namespace) -> int:
    from .latent_lm import load_latent_lm

    if args.seconds <= 0 or args.seconds > 60:
        raise F3StreamError("--seconds must be in (0, 60]")
    tok = load_tokenizer(args)  # --device and --backend were accepted and ignored before
    lm_dir = Path(args.lm) if args.lm else default_latent_lm_dir()
    lm, info = load_latent_lm(lm_dir)
    if lm.cfg.latent_dim != tok.latent_dim:
        raise F3StreamError(f"latent LM expects {lm.cfg.latent_dim}-dim latents but the "
                            f"tokenizer makes {tok.latent_dim}")
    wav, _ = load_audio(args.prompt, tok.sample_rate)
    wav = wav[: int(args.prompt_seconds * tok.sample_rate)]
    t0 = time.perf_counter()
    audio, cont = generate(tok, lm, float(info.get("scale", 1.0)), wav, args.seconds,
                           args.temperature, args.seed)
    out = Path(args.out)
    write_audio(out, audio, tok.sample_rate)
    print(f"continued {wav.size / tok.sample_rate:.2f} s of {args.prompt} with "
          f"{cont.shape[0]} generated frames ({args.seconds:g} s) in "
          f"{time.perf_counter() - t0:.2f} s")
    print(f"  latent LM {lm_dir} (trained {info.get('steps', '?')} steps)")
    print(f"  wrote {out} (prompt followed by the continuation)")
    return 0


def register(subs) -> None:
    """Registers ``f3stream generate``."""
    p = add_command(
        subs, "generate", "continue a spoken prompt with the latent LM",
        "Encodes the prompt, samples a continuation of its latents with the latent language "
        "model (flow-matching head, 2-frame patches at 12.5 Hz), decodes prompt + "
        "continuation and writes the audio.",
        "  f3stream generate --prompt speech.wav --seconds 3 --out cont.wav\n", cmd_generate)
    add_model_options(p)
    p.add_argument("--prompt", required=True, metavar="FILE", help="audio prompt")
    p.add_argument("--prompt-seconds", type=float, default=3.0,
                   help="use at most this much of the prompt (default 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="length to generate (default 3)")
    p.add_argument("--lm", metavar="DIR", default=None,
                   help="latent LM checkpoint (default: the bundled one)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="generated.wav", metavar="FILE.wav")
