"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Each save writes ``OUT/checkpoints/step-XXXXXXX/`` under a temporary name, renames the finished
directory into place (atomic), then atomically rewrites ``OUT/checkpoints/latest``. A kill at
any moment leaves the previous checkpoint intact and ``latest`` pointing at a complete one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from f3stream.fileio import atomic_write_bytes


def _flatten_optimizer(opt: torch.optim.Optimizer, prefix: str,
                       tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(meta: dict[str, Any], prefix: str,
                         tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(out: Path, step: int, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer],
                        extra: dict[str, Any], keep: int = 2) -> Path:
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"module.{name}.{k}"] = v.detach().cpu().contiguous()
    opt_meta = {name: _flatten_optimizer(opt, f"optim.{name}", tensors)
                for name, opt in optimizers.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "optimizers": opt_meta, "extra": extra}
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:07d}.", dir=root))
    try:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_bytes(root / "latest", final.name.encode())
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


_KERNEL_FLAGS = ("fused", "foreach")


def load_training_state(path: Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Restores modules, optimizers and the torch RNG; returns the JSON metadata.

    A module or optimizer that the checkpoint does not hold at all (e.g. a discriminator added
    to a run that trained without one) keeps its fresh initialisation; its name is listed in
    the returned ``meta["fresh"]``. One that it holds must match exactly."""
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    fresh = []
    for name, module in modules.items():
        p = f"module.{name}."
        own = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        if not own and any(True for _ in module.state_dict()):
            fresh.append(name)
            continue
        module.load_state_dict(own)
    for name, opt in optimizers.items():
        if name not in meta["optimizers"]:
            fresh.append(f"optimizer {name}")
            continue
        # which kernel runs the update (fused, foreach) is the code's choice, not the
        # checkpoint's: load_state_dict would bring back the flags of the run that saved it
        kernels = [{k: g[k] for k in _KERNEL_FLAGS if k in g} for g in opt.param_groups]
        opt.load_state_dict(_unflatten_optimizer(meta["optimizers"][name], f"optim.{name}",
                                                 tensors))
        for group, flags in zip(opt.param_groups, kernels):
            group.update(flags)
    meta["fresh"] = fresh
    torch.set_rng_state(tensors["rng.torch"])
    return meta
