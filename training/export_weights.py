"""Export a stage-0 training state's raw (or EMA) weights as an installable checkpoint.

Why: a run's ``export/`` holds the exponential moving average of the weights (when the config
sets ``ema_decay``); the raw weights the optimizer is moving live only in the training state
(``autoencoder/checkpoints/step-N``). Scoring both at the same step says what the average is
worth, and whether it lags or leads the raw weights.

    python -m training.export_weights --state runs/RUN/autoencoder/checkpoints/step-0045000 \\
        --like runs/RUN/export_45000 --weights raw --out runs/RUN/raw_45000

``--like`` is an export of the same run (its config, its representation encoder and its
info are kept; only the autoencoder's weights are replaced).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import safe_open

import f3stream

PREFIXES = {"raw": "module.model.", "ema": "module.ema."}


def export_weights(state_dir: Path, like: Path, out: Path, weights: str = "raw") -> Path:
    """Writes ``like`` with the autoencoder weights of ``state_dir`` (``raw`` or ``ema``)."""
    if weights not in PREFIXES:
        raise SystemExit(f"--weights must be one of {sorted(PREFIXES)}, not {weights!r}")
    state_file = Path(state_dir) / "state.safetensors"
    if not state_file.is_file():
        raise SystemExit(f"{state_dir} holds no state.safetensors: not a training checkpoint")
    if Path(out).exists():
        raise SystemExit(f"{out} exists: refusing to overwrite it")
    tok = f3stream.load(like)
    current = tok.model.state_dict()
    prefix = PREFIXES[weights]
    replaced = 0
    with safe_open(str(state_file), "pt") as f:
        for key in f.keys():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name not in current or tuple(current[name].shape) != tuple(f.get_slice(key).get_shape()):
                raise SystemExit(f"{state_dir} does not fit {like}: {name} differs")
            current[name] = f.get_tensor(key).to(current[name].dtype)
            replaced += 1
    if replaced == 0:
        raise SystemExit(f"{state_dir} holds no {weights} weights (no keys under {prefix!r})")
    tok.model.load_state_dict(current)
    step = int(Path(state_dir).name.rsplit("-", 1)[-1]) if "-" in Path(state_dir).name else None
    info = {**tok.info, "weights": weights}
    if step is not None:
        info["stage0_steps"] = step
    return tok.save(out, info=info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, type=Path,
                   help="a stage-0 training checkpoint (RUN/autoencoder/checkpoints/step-N)")
    p.add_argument("--like", required=True, type=Path, help="an export of the same run")
    p.add_argument("--weights", choices=sorted(PREFIXES), default="raw")
    p.add_argument("--out", required=True, type=Path, help="new checkpoint directory")
    a = p.parse_args(argv)
    print(f"wrote {export_weights(a.state, a.like, a.out, a.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
