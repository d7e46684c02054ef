"""AsyncClient's on_frame hook: frames handed over as they arrive (not kept), in order, equal
to offline tokenization; closed / wait_closed report the end of the connection."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import randn_noise, run, serving

pytest.importorskip("websockets")

from f3stream.server.client import AsyncClient  # noqa: E402


def test_on_frame_gets_every_frame_in_order_and_nothing_is_kept(tiny_tokenizer):
    wav = randn_noise(0, 24000 + 500)
    got = []

    async def main():
        async with serving(tiny_tokenizer) as (_, url):
            c = AsyncClient(url, returns="latents", on_frame=got.append)
            await c.connect()
            for a in range(0, wav.size, 480):
                await c.send_audio(wav[a:a + 480])
            await c.flush()
            assert not c.messages and not c.closed
            assert len(c._marks) < 5  # bookkeeping of sends stays bounded
            await c.disconnect()
            await asyncio.wait_for(c.wait_closed(), 5)
            assert c.closed

    run(main(), timeout=None)
    starts = np.cumsum([0] + [m.n_rows for m in got])  # a message may hold several frames
    assert [m.frame_index for m in got] == list(starts[:-1])
    assert got[-1].final and not got[0].final
    lat = np.concatenate([m.payload for m in got])
    assert np.abs(lat - tiny_tokenizer.encode(wav)).max() <= 1e-5
