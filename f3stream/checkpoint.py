"""Checkpoints: a directory with ``config.json`` and ``model.safetensors``.

Pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are refused: loading them can run
arbitrary code. ``config.json`` records the SHA-256 of the weights, so a truncated or mixed-up
file is reported as corrupt instead of loading wrong numbers; both files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .config import TokenizerConfig
from .errors import CheckpointError, ConfigError
from .fileio import atomic_path, atomic_write_bytes

FORMAT = "f3stream-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def default_checkpoint_dir() -> Path:
    """The checkpoint bundled with the package."""
    return Path(__file__).parent / "checkpoints" / "default"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: torch.nn.Module, cfg: TokenizerConfig, path: str | os.PathLike,
                    info: dict[str, Any] | None = None,
                    weights_dtype: torch.dtype = torch.float32) -> Path:
    """Writes ``path/model.safetensors`` then ``path/config.json``, each atomically.

    ``weights_dtype=torch.float16`` halves the size; weights are upcast to float32 on load, so
    every backend still computes with identical numbers.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", weights_dtype).contiguous()
               for k, v in model.state_dict().items()}
    weights = path / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "weights_sha256": _sha256(weights), "info": info or {}}
    atomic_write_bytes(path / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    path = _checkpoint_dir(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {CONFIG_FILE}: not an f3stream checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({e}): corrupt "
                              "checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG_FILE} is not an f3stream checkpoint config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {meta.get('format_version')!r} is not "
                              f"supported (this f3stream reads version {FORMAT_VERSION})")
    return meta


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints are refused because loading them can "
                              "run arbitrary code; save the weights as safetensors")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected {CONFIG_FILE} "
                              f"and {WEIGHTS_FILE} inside)")
    if not (path / WEIGHTS_FILE).exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{path} holds only pickle weights {pickles}; they are refused "
                                  "because loading them can run arbitrary code")
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}")
    return path


def load_checkpoint(path: str | os.PathLike
                    ) -> tuple[TokenizerConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Returns (config, float32 state dict, info). Raises :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _checkpoint_dir(path)
    meta = read_checkpoint_meta(path)
    try:
        cfg = TokenizerConfig.from_dict(meta.get("config", {}))
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid config: {e}") from None
    expected = meta.get("weights_sha256")
    if expected and _sha256(path / WEIGHTS_FILE) != expected:
        raise CheckpointError(f"{path / WEIGHTS_FILE} does not match the checksum in "
                              f"{CONFIG_FILE}: the checkpoint is corrupt or was half-replaced")
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {e}") from None
    state = {}
    for k, v in tensors.items():
        if not v.is_floating_point():
            raise CheckpointError(f"weight {k} has non-float dtype {v.dtype}")
        v = v.float()
        if not torch.isfinite(v).all():
            raise CheckpointError(f"weight {k} contains NaN or Inf: corrupt checkpoint")
        state[k] = v
    return cfg, state, meta.get("info", {})


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Like ``load_state_dict(strict=True)`` but with one clear error listing every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{title}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{where}: weights do not match the config; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def human_size(n_bytes: float) -> str:
    if n_bytes <= 0:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB"]
    i = min(int(math.log(n_bytes, 1024)), len(units) - 1)
    return f"{n_bytes / 1024 ** i:.1f} {units[i]}"
