"""Shared fixtures: a tiny, fast, randomly initialised tokenizer for tests that do not need the
bundled checkpoint, and the noise clip (with its latents) that the input-contract tests use.
Plain helper functions are in ``helpers.py``.

The folders under ``tests/`` mirror the code: one per package of ``f3stream`` (``backends/``,
``server/``, ``mic/``, ...), ``core/`` for its top-level modules, ``training/`` for
``training``. These fixtures apply to all of them. No folder has an ``__init__.py``, so a test
file's name must be unique across the folders."""

import pytest
from helpers import noise

from f3stream import AutoencoderConfig, RepresentationConfig, Tokenizer, TokenizerConfig


@pytest.fixture(scope="session")
def tiny_config() -> TokenizerConfig:
    return TokenizerConfig(
        autoencoder=AutoencoderConfig(conv_channels=32, model_dim=64, n_heads=2,
                                      encoder_conv_blocks=1, decoder_conv_blocks=1,
                                      encoder_layers=1, decoder_layers=1),
        representation=RepresentationConfig(model_dim=64, n_heads=2, layers=1, output_dim=96))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_config) -> Tokenizer:
    """Shared across the whole run: tests must not mutate it (sessions they open are their own)."""
    return Tokenizer.from_config(tiny_config, seed=0)


@pytest.fixture(scope="module")
def wav():
    """Half a second of noise (12000 samples = 12.5 frames): the audio the input-contract
    tests feed the tiny tokenizer. Tests must not modify it; a module may define its own."""
    return noise(0.5, seed=1)


@pytest.fixture(scope="module")
def ref_latents(tiny_tokenizer, wav):
    """``tiny_tokenizer.encode(wav)``: what every accepted variant of ``wav`` must give."""
    return tiny_tokenizer.encode(wav)
