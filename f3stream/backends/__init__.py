"""Interchangeable inference engines behind one interface.

``Tokenizer`` and the streaming sessions only talk to an :class:`Engine`; which engine runs the
math (torch, Numba kernels, ONNX Runtime) is a load-time switch, so every backend shares the
same framing, padding, session and batching code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import F3StreamError
from .base import Engine, NumpyStateEngine

if TYPE_CHECKING:
    import torch

    from ..model import F3Model

BACKENDS = ("torch", "numba", "onnx")


class BackendError(F3StreamError, ValueError):
    """An unknown backend was requested, or its optional packages are not installed."""


def missing_package(backend: str, package: str, err: ImportError) -> BackendError:
    return BackendError(f"backend {backend!r} needs the optional package {package!r} "
                        f"({err}); install it with: pip install 'f3stream[{backend}]'")


def cuda_capable(backend: str) -> bool:
    """Whether ``backend`` can run on a CUDA GPU here (``device="auto"`` falls back if not)."""
    if backend == "torch":
        return True
    if backend == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return False
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False


def create_engine(backend: str, model: "F3Model", device: "torch.device", **options) -> Engine:
    """Builds the engine named ``backend`` over ``model``'s weights (read once, at load)."""
    if backend == "torch":
        from .torch_backend import TorchEngine
        return TorchEngine(model, device)
    if backend == "numba":
        try:
            import numba  # noqa: F401
        except ImportError as e:
            raise missing_package("numba", "numba", e) from None
        from .numba import NumbaEngine
        return NumbaEngine(model, device)
    if backend == "onnx":
        try:
            import onnxruntime  # noqa: F401  (``onnx`` itself is only needed to export)
        except ImportError as e:
            raise missing_package("onnx", "onnxruntime", e) from None
        from .onnx_backend import OnnxEngine
        return OnnxEngine(model, device, **options)
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendError", "Engine", "NumpyStateEngine", "create_engine",
           "cuda_capable"]
