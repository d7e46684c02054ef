"""Numba CPU engine: the model's streaming steps as ``@njit`` kernels over float32 numpy
weights.

Why: at batch 1 a 40 ms frame is a few million multiply-adds spread over ~150 small torch ops,
so torch's per-op dispatch dominates. Here each layer is one compiled kernel; matrix products
go to BLAS through ``np.dot``; everything else (LayerNorm, exact-erf GELU, depthwise causal
conv, sliding-window ALiBi attention, STFT compression, overlap-add) is a plain loop. Kernels
release the GIL (``nogil``), so a server's event loop keeps running while a batched step does.

The package mirrors the torch modules file for file, as the MLX port of moshi mirrors its
PyTorch modules:

=====================================  ==================================================
torch                                  numba
=====================================  ==================================================
``torch.nn`` (Linear, LayerNorm, GELU)  :mod:`.nn` (and :func:`.nn.gemm_plan`)
``f3stream.streaming.state``           :mod:`.streaming.state` (state binding, stacks)
``f3stream.streaming.conv``            :mod:`.streaming.conv`
``f3stream.streaming.attention``       :mod:`.streaming.attention`
``f3stream.streaming.framing``         :mod:`.streaming.framing`
``f3stream.autoencoder``               :mod:`.autoencoder`
``f3stream.bottleneck``                :mod:`.bottleneck`
``f3stream.representation``            :mod:`.representation`
``f3stream.model``                     :mod:`.engine` (the entry kernels, :class:`NumbaEngine`)
=====================================  ==================================================

Each kernel module holds, for its torch module types, the named structures of their weights and
states (``NamedTuple``s whose fields are the torch attribute names and declared state keys),
the kernels, and a ``MIRRORS`` entry; :data:`.engine.MIRRORS` joins them, :mod:`.weights` reads
weights through it from the same :class:`~f3stream.model.F3Model` (so torch, numba and ONNX
compute the same numbers), and states are numpy arrays under the torch model's keys that the
kernels update in place at the rows they are given (see :class:`NumbaEngine`).
"""

from .engine import MIRRORS, NumbaEngine
from .nn import OWN_ROWS, SMALL_GEMM, gemm_plan

__all__ = ["MIRRORS", "NumbaEngine", "OWN_ROWS", "SMALL_GEMM", "gemm_plan"]
