"""Peak memory (max RSS) of ``f3stream encode``, ``decode`` and ``reconstruct`` on a long file.

Writes a test file (quiet noise, 16-bit PCM; default 1 hour at 48 kHz stereo), then runs each
command in its own subprocess and reads that process's peak resident set size from
``os.wait4`` (the kernel's ru_maxrss, the figure ``/usr/bin/time -v`` prints). Prints one JSON
object; ``--json FILE`` also writes it. The bundled checkpoint is used unless --checkpoint.

    python benchmarks/peak_memory.py --seconds 3600 --rate 48000 --channels 2 \
        --workdir /var/tmp/f3-peak --json docs/peak-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_input(path: Path, seconds: float, rate: int, channels: int) -> None:
    """Quiet noise written block by block, so making the file needs no memory of its own."""
    import soundfile as sf

    if path.is_file():
        info = sf.info(str(path))
        if (info.samplerate, info.channels, info.frames) == (rate, channels,
                                                             round(seconds * rate)):
            return
    rng = np.random.default_rng(0)
    total, block = round(seconds * rate), rate * 10
    with sf.SoundFile(str(path), "w", rate, channels, "PCM_16") as f:
        for a in range(0, total, block):
            n = min(block, total - a)
            f.write((0.05 * rng.standard_normal((n, channels))).astype(np.float32))


def peak_rss(cmd: list[str]) -> dict[str, float | int | str]:
    """Runs ``cmd``; its exit status, wall time and peak RSS in MiB (Linux: ru_maxrss in KiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"cmd": " ".join(cmd), "rc": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "output": out.decode(errors="replace").strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--rate", type=int, default=48000)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--workdir", default="peak-memory-work",
                   help="where the input and outputs go (about 1 GB for an hour)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--commands", default="encode,decode,reconstruct")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    wav = work / f"input-{args.seconds:g}s-{args.rate}hz-{args.channels}ch.wav"
    make_input(wav, args.seconds, args.rate, args.channels)
    f3 = [sys.executable, "-m", "f3stream"]
    ckpt = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    tokens, decoded, recon = work / "tokens.npz", work / "decoded.wav", work / "recon.wav"
    commands = {
        "encode": f3 + ["encode", str(wav), "--out", str(tokens)] + ckpt,
        "decode": f3 + ["decode", str(tokens), "--out", str(decoded)] + ckpt,
        "reconstruct": f3 + ["reconstruct", str(wav), "--out", str(recon)] + ckpt,
    }
    result = {"input": {"seconds": args.seconds, "rate": args.rate, "channels": args.channels,
                        "bytes": wav.stat().st_size},
              "python": platform.python_version(), "machine": platform.machine(),
              "runs": {}}
    for name in args.commands.split(","):
        result["runs"][name] = r = peak_rss(commands[name])
        print(f"{name}: rc {r['rc']}, {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if all(r["rc"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
