"""Checkpoints: a directory with ``config.json`` and ``model.safetensors``.

Pickle files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are refused: loading them can run
arbitrary code. ``config.json`` records the SHA-256 of the weights, so a truncated or mixed-up
file is reported as corrupt instead of loading wrong numbers; the weights file's own metadata
records the SHA-256 of the model config, so a config edited after saving is refused too (old
checkpoints without it still load). Before any tensor is read or any model allocated, the
config's sizes are bounded (:mod:`f3stream.config`) and the parameter shapes it implies are
compared with the tensor shapes in the weights file's header. Both files are written atomically.
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
CONFIG_DIGEST_KEY = "config_sha256"  # in the weights file's safetensors metadata


def default_checkpoint_dir() -> Path:
    """The checkpoint bundled with the package."""
    return Path(__file__).parent / "checkpoints" / "default"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Config fields added after checkpoints carried a digest: at these values (their defaults,
# which keep the older behaviour) they are left out of the digest, so the checkpoints saved
# before the field existed still verify.
DIGEST_OMITS_AT_DEFAULT: dict[tuple[str, str], Any] = {("autoencoder", "harmonic_source"): False}


def config_digest(cfg: TokenizerConfig) -> str:
    """SHA-256 of the model config's canonical JSON (less the fields of
    :data:`DIGEST_OMITS_AT_DEFAULT` at their defaults)."""
    data = cfg.to_dict()
    for (section, key), default in DIGEST_OMITS_AT_DEFAULT.items():
        if data[section].get(key) == default:
            del data[section][key]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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
        save_file(tensors, str(tmp),
                  metadata={"format": FORMAT, CONFIG_DIGEST_KEY: config_digest(cfg)})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "weights_sha256": sha256_file(weights), "info": info or {}}
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


def verify_checkpoint(path: str | os.PathLike) -> tuple[Path, TokenizerConfig, dict[str, Any]]:
    """(directory, config, config.json's content) of a checkpoint that passed every check that
    needs no tensor data: config bounds, weights checksum, config digest, tensor dtypes and
    shapes from the weights file's header. Cheap (no model is built), so a parent process can
    run it before starting workers. Raises :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    path = _checkpoint_dir(path)
    meta = read_checkpoint_meta(path)
    try:
        cfg = TokenizerConfig.from_dict(meta.get("config", {}))
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid config: {e}") from None
    weights = path / WEIGHTS_FILE
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights} does not match the checksum in "
                              f"{CONFIG_FILE}: the checkpoint is corrupt or was half-replaced")
    try:
        with safe_open(str(weights), framework="np") as f:
            header = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(v.get_shape()) for k, v in header.items()}
            dtypes = {k: v.get_dtype() for k, v in header.items()}
            saved_digest = (f.metadata() or {}).get(CONFIG_DIGEST_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    if saved_digest is not None and saved_digest != config_digest(cfg):
        raise CheckpointError(f"the model config in {path / CONFIG_FILE} is not the one "
                              f"{WEIGHTS_FILE} was saved with: it was edited after saving, or "
                              "the two files come from different checkpoints")
    for k, dtype in dtypes.items():
        if not dtype.startswith(("F", "BF")):
            raise CheckpointError(f"weight {k} has non-float dtype {dtype}")
    _check_shapes(_implied_shapes(cfg), shapes, str(path))
    return path, cfg, meta


def _implied_shapes(cfg: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    """The parameter and buffer shapes of ``F3Model(cfg)``, from a model on the meta device
    (shapes only, no memory), so that no second description of the architecture exists."""
    from .model import F3Model

    with torch.device("meta"):
        model = F3Model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_checkpoint(path: str | os.PathLike
                    ) -> tuple[TokenizerConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Returns (config, float32 state dict, info) after :func:`verify_checkpoint`. Raises
    :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path, cfg, meta = verify_checkpoint(path)
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / WEIGHTS_FILE}: {e}") from None
    state = {}
    for k, v in tensors.items():
        v = v.float()
        if not torch.isfinite(v).all():
            raise CheckpointError(f"weight {k} contains NaN or Inf: corrupt checkpoint")
        state[k] = v
    return cfg, state, meta.get("info", {})


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Like ``load_state_dict(strict=True)`` but with one clear error listing every mismatch."""
    _check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()},
                  {k: tuple(v.shape) for k, v in state.items()}, where)
    model.load_state_dict(state, strict=True)


def _check_shapes(own: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]],
                  where: str) -> None:
    """One :class:`CheckpointError` listing missing, unexpected and mis-shaped weights."""
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    shapes = [f"{k}: checkpoint {got[k]} vs config {own[k]}"
              for k in sorted(set(own) & set(got)) if own[k] != got[k]]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{title}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{where}: weights do not match the config; " + "; ".join(parts))


def human_size(n_bytes: float) -> str:
    if n_bytes <= 0:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB"]
    i = min(int(math.log(n_bytes, 1024)), len(units) - 1)
    return f"{n_bytes / 1024 ** i:.1f} {units[i]}"
