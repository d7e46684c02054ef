"""Backend parity on real speech: how far the numba and ONNX engines are from torch.

Runs the bundled checkpoint on the bundled speech sample (the whole clip), with torch's offline
tokenize / decode as the reference, and reports the largest absolute difference of every other
engine's latents, representations and decoded audio: offline, and streamed frame by frame
(encoder: one 40 ms frame per push; decoder: one latent frame per push). The tests hold these
under 1e-4 (tests/backends/test_backends.py); this script gives the figures the README quotes,
with the machine they were measured on.

    python benchmarks/parity.py --json docs/parity-2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.shape[0], b.shape[0])
    return float(np.abs(a[:n] - b[:n]).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="numba,onnx")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args()

    from f3stream import Tokenizer
    from f3stream.audio import load_audio
    from f3stream.bench import machine_info
    from f3stream.checkpoint import default_checkpoint_dir
    from f3stream.threads import blas_info, limit_threads

    ckpt = default_checkpoint_dir()
    ref = Tokenizer.load(ckpt)
    wav, _ = load_audio(ckpt.parent.parent / "assets" / "sample.wav", ref.sample_rate)
    out = ref.tokenize(wav)
    y_ref = ref.decode(out.latents)
    hop = ref.hop_length
    report = {"command": "python benchmarks/parity.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine_info(1),
              "clip": "f3stream/assets/sample.wav", "seconds": round(wav.size / ref.sample_rate, 2),
              "frames": int(out.latents.shape[0]), "reference": "torch, offline",
              "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b for b in args.backends.split(",") if b]:
            opts = {"export_dir": tmp, "threads": 1} if backend == "onnx" else {}
            tok = Tokenizer(ref.model, ref.info, "cpu", backend, **opts)
            limit_threads(1)
            off = tok.tokenize(wav)
            y_off = tok.decode(out.latents)
            s = tok.session()
            lat, rep = [], []
            for a in range(0, wav.size, hop):
                r = s.push(wav[a:a + hop])
                if r.n_frames:
                    lat.append(r.latents)
                    rep.append(r.representations)
            r = s.flush()
            if r.n_frames:
                lat.append(r.latents)
                rep.append(r.representations)
            d = tok.decoder_session()
            ys = [d.push(out.latents[i:i + 1]) for i in range(out.latents.shape[0])]
            ys.append(d.flush())
            report["backends"][backend] = {
                "offline": {"latents": maxdiff(off.latents, out.latents),
                            "representations": maxdiff(off.representations,
                                                       out.representations),
                            "audio": maxdiff(y_off, y_ref)},
                "streamed_per_frame": {"latents": maxdiff(np.concatenate(lat), out.latents),
                                       "representations": maxdiff(np.concatenate(rep),
                                                                  out.representations),
                                       "audio": maxdiff(np.concatenate(ys), y_ref)},
                "blas": blas_info() if backend == "numba" else None,
            }
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
