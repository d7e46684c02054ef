"""G.711 (f3stream.g711): the reference coder's values at known points and segment edges,
round trips, and (where Python still has it) agreement with audioop on every input."""

import warnings

import numpy as np
import pytest

from f3stream import g711

# mu-law: segment s holds magnitudes ((m << 3) + 0x84 << s) - 0x84, m = 0..15
ULAW_SEGMENT_STARTS = [0, 132, 396, 924, 1980, 4092, 8316, 16764]
# A-law: segments 0/1 step 16 from 8 / 264, then doubling; ends at 32256
ALAW_SEGMENT_STARTS = [8, 264, 528, 1056, 2112, 4224, 8448, 16896]


def test_known_decoded_values():
    assert g711.ULAW_DECODE[[0xFF, 0x7F, 0x80, 0x00]].tolist() == [0, 0, 32124, -32124]
    assert g711.ALAW_DECODE[[0xD5, 0x55, 0xAA, 0x2A]].tolist() == [8, -8, 32256, -32256]
    assert g711.encode(np.array([0], np.int16), "mulaw") == b"\xff"
    assert g711.encode(np.array([0], np.int16), "alaw") == b"\xd5"


def test_segment_boundaries():
    mags = np.sort(np.unique(np.abs(g711.ULAW_DECODE.astype(int))))
    for s, start in enumerate(ULAW_SEGMENT_STARTS):
        seg = mags[16 * s:16 * (s + 1)]
        assert seg[0] == start and np.all(np.diff(seg) == 8 << s)
    assert mags[-1] == 32124
    mags = np.sort(np.unique(np.abs(g711.ALAW_DECODE.astype(int))))
    for s, start in enumerate(ALAW_SEGMENT_STARTS):
        seg = mags[16 * s:16 * (s + 1)]
        assert seg[0] == start and np.all(np.diff(seg) == 16 << max(0, s - 1))
    assert mags[-1] == 32256


@pytest.mark.parametrize("law", g711.LAWS)
def test_round_trips(law):
    table = g711._DECODE[law]
    codes = np.arange(256, dtype=np.uint8)
    # every decoded value encodes back to a code of the same value (mu-law's -0 becomes +0)
    again = np.frombuffer(g711.encode(table[codes], law), np.uint8)
    np.testing.assert_array_equal(table[again], table[codes])
    # encoding quantises within one step: 16 at the smallest, |x| / 16 in the top segments
    x = np.arange(-32000, 32000, dtype=np.int16)
    err = np.abs(g711.decode(g711.encode(x, law), law) * 32768 - x)
    assert np.all(err <= 16 + np.abs(x) / 16)
    f = g711.decode(g711.encode(np.array([0.5, -0.5, 1.5, -1.5]), law), law)
    assert np.allclose(f[:2], [0.5, -0.5], atol=0.02) and abs(f[2]) > 0.98 and f[3] < -0.98


@pytest.mark.parametrize("law", g711.LAWS)
def test_agrees_with_audioop_on_every_input(law):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    enc = audioop.lin2ulaw if law == "mulaw" else audioop.lin2alaw
    dec = audioop.ulaw2lin if law == "mulaw" else audioop.alaw2lin
    assert g711.encode(pcm, law) == enc(pcm.tobytes(), 2)
    np.testing.assert_array_equal(g711._DECODE[law], np.frombuffer(dec(bytes(range(256)), 2),
                                                                   np.int16))
