"""Interchangeable inference engines behind one interface.

``Tokenizer`` and the streaming sessions only talk to an :class:`Engine`; which engine runs the
math (torch, Numba kernels, ONNX Runtime) is a load-time switch, so every backend shares the
same framing, padding, session and batching code. The backends are named in one place,
:data:`REGISTRY`, which also gives the command line its ``--backend`` choices and help.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import F3StreamError
from .base import Engine, NumpyStateEngine

if TYPE_CHECKING:
    import torch

    from ..model import F3Model


class BackendError(F3StreamError, ValueError):
    """An unknown backend was requested, or its optional packages are not installed."""


def missing_package(backend: str, package: str, err: ImportError) -> BackendError:
    return BackendError(f"backend {backend!r} needs the optional package {package!r} "
                        f"({err}); install it with: pip install 'f3stream[{backend}]'")


def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def _onnx_cuda() -> bool:
    if not _importable("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@dataclass(frozen=True)
class Backend:
    """One engine of the registry: everything the package knows about a backend by its name
    (the command line's ``--backend`` choices and help, ``Tokenizer.load(backend=...)``,
    ``f3stream bench``). Adding a backend is adding one entry to :data:`REGISTRY`."""

    name: str
    summary: str                 # a few words for ``--backend``'s help
    engine: str                  # "module:Class", relative to this package; imported on use
    package: str | None = None   # the optional package it needs (pip extra: ``name``)
    takes_options: bool = False  # whether ``backend_options`` go to the engine's constructor
    cuda: Callable[[], bool] = lambda: False  # whether it can run on a CUDA GPU here

    def installed(self) -> bool:
        """Whether its optional package can be imported here."""
        return self.package is None or _importable(self.package)

    def create(self, model: "F3Model", device: "torch.device", **options) -> Engine:
        if self.package is not None:
            try:
                importlib.import_module(self.package)
            except ImportError as e:
                raise missing_package(self.name, self.package, e) from None
        module, _, cls = self.engine.partition(":")
        engine = getattr(importlib.import_module(module, __name__), cls)
        return engine(model, device, **options) if self.takes_options else engine(model, device)


#: every backend, the default first
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "reference", ".torch_backend:TorchEngine", cuda=lambda: True),
    Backend("numba", "compiled CPU kernels", ".numba:NumbaEngine", package="numba"),
    # ``onnx`` itself is only needed to export; running needs onnxruntime
    Backend("onnx", "ONNX Runtime", ".onnx_backend:OnnxEngine", package="onnxruntime",
            takes_options=True, cuda=_onnx_cuda),
)}
BACKENDS = tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
                           ) from None


def describe_backends() -> str:
    """E.g. ``torch (reference), numba (compiled CPU kernels) or onnx (ONNX Runtime)``."""
    parts = [f"{b.name} ({b.summary})" for b in REGISTRY.values()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


def cuda_capable(backend: str) -> bool:
    """Whether ``backend`` can run on a CUDA GPU here (``device="auto"`` falls back if not)."""
    b = REGISTRY.get(backend)
    return b is not None and b.cuda()


def create_engine(backend: str, model: "F3Model", device: "torch.device", **options) -> Engine:
    """Builds the engine named ``backend`` over ``model``'s weights (read once, at load)."""
    return get_backend(backend).create(model, device, **options)


__all__ = ["BACKENDS", "Backend", "BackendError", "Engine", "NumpyStateEngine", "REGISTRY",
           "create_engine", "cuda_capable", "describe_backends", "get_backend"]
