"""Plain helpers shared by several test files (fixtures live in ``conftest.py``).

Test modules, in whichever subfolder of ``tests/``, import them as ``from helpers import
noise``: pytest puts ``tests/`` on ``sys.path`` when it imports ``tests/conftest.py`` (the default
``prepend`` import mode; no folder under ``tests/`` has an ``__init__.py``, so test file names
must be unique across the folders)."""

import asyncio
import contextlib

import numpy as np

SR = 24000  # the tokenizer's sample rate
HOP = 960   # samples per latent frame at 25 Hz


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """``seconds`` of white noise at ``sr`` (0.1 standard deviation, float32, reproducible
    from ``seed``): ``round(seconds * sr)`` samples, so ``noise(n / sr)`` has ``n``."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(seconds * sr)))).astype(np.float32)


def randn_noise(seed: int, n: int) -> np.ndarray:
    """``n`` samples of white noise (0.1 standard deviation, float32) from
    ``np.random.RandomState(seed)``: the noise of the server and pipecat tests (a different
    generator from ``noise``, so not the same samples)."""
    return (np.random.RandomState(seed).randn(n) * 0.1).astype(np.float32)


def run(coro, timeout: float | None = 60):
    """Runs ``coro`` in a fresh event loop and returns its result; ``asyncio.TimeoutError``
    after ``timeout`` seconds (``None``: no limit, ``asyncio.run(coro)`` itself)."""
    if timeout is None:
        return asyncio.run(coro)
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def serving(tok, port: int = 0, **cfg):
    """A live ``F3Server`` for ``tok`` on 127.0.0.1 (``port`` 0: an ephemeral one) with
    ``ServerConfig(**cfg)``: yields ``(server, "ws://127.0.0.1:PORT")`` and shuts it down on
    exit. Imports the server (and so ``websockets``) only when called."""
    from f3stream.server.server import F3Server, ServerConfig
    srv = await F3Server(tok, ServerConfig(**cfg)).start("127.0.0.1", port)
    try:
        yield srv, f"ws://127.0.0.1:{srv.port}"
    finally:
        await srv.shutdown()
