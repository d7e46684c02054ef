"""f3stream: a streaming, causal implementation of the F3 audio tokenizer.

Waveform -> causal encoder -> noise-regularised bottleneck -> 64-dim latents at 25 Hz ->
causal decoder -> waveform, and a causal representation encoder over the latents.
"""

from .config import AutoencoderConfig, RepresentationConfig, TokenizerConfig
from .errors import (AudioInputError, CheckpointError, ConfigError, F3StreamError,
                     SessionClosedError)
from .frames import EncodedFrames
from .session import (DecoderSession, DecoderStatePool, EncoderSession, EncoderStatePool,
                      PoolFullError)
from .tokenizer import Tokenizer

__version__ = "0.1.0"


def load(path=None, device="cpu", backend="torch", **backend_options) -> Tokenizer:
    """Loads a tokenizer checkpoint (default: the bundled one) to run on ``backend``
    ("torch", "numba" or "onnx"). See :meth:`Tokenizer.load`."""
    return Tokenizer.load(path, device, backend, **backend_options)


__all__ = [
    "AudioInputError", "AutoencoderConfig", "CheckpointError", "ConfigError", "DecoderSession",
    "EncodedFrames", "EncoderSession", "F3StreamError", "RepresentationConfig",
    "DecoderStatePool", "EncoderStatePool", "PoolFullError", "SessionClosedError", "Tokenizer",
    "TokenizerConfig", "load", "__version__",
]
