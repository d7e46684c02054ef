"""Plain helpers shared by several test files (fixtures live in ``conftest.py``).

Test modules import them as ``from helpers import noise``: pytest puts ``tests/`` on
``sys.path`` when it imports a test module from it (the default ``prepend`` import mode;
``tests/`` has no ``__init__.py``)."""

import numpy as np

SR = 24000  # the tokenizer's sample rate
HOP = 960   # samples per latent frame at 25 Hz


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """``seconds`` of white noise at ``sr`` (0.1 standard deviation, float32, reproducible
    from ``seed``): ``round(seconds * sr)`` samples, so ``noise(n / sr)`` has ``n``."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)
