"""The raw-websocket client of the README's "Use it in a voice agent" section, run as printed
against a live server: its latents equal Tokenizer.encode of the audio resampled as the server
resamples it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import run, serving

pytest.importorskip("websockets")

from f3stream.resampling import StreamResampler  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_raw_websocket_client_works_as_printed(tiny_tokenizer):
    code = readme_block("### Any other stack: the websocket protocol")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    pcm = np.clip(np.random.RandomState(0).randn(16000 + 555) * 3000, -32768, 32767
                  ).astype(np.int16)

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            return await namespace["tokenize"](url, pcm, 16000)

    latents = run(main())
    r = StreamResampler(16000, 24000)
    x = pcm.astype(np.float32) / 32768
    ref = tiny_tokenizer.encode(np.concatenate([r.process(x), r.flush()]))
    assert latents.shape == ref.shape and np.abs(latents - ref).max() <= 1e-4
