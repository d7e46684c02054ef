"""Protocol v1 and v2 parsing and encoding (f3stream.server.protocol): the documented codes, frame
round trips, and fuzzing that every malformed input raises ProtocolError and nothing else."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f3stream.server.protocol import (ERROR_CODES, HEADER_SIZE, KIND_BOTH, DTYPE_FLOAT16,
                                      DTYPE_FLOAT32, Hello, ProtocolError, decode_audio,
                                      decode_latents, encode_frame, parse_control, parse_frame,
                                      parse_hello, parse_text, SAMPLE_RATES)
from f3stream.stats import percentile

SR = 24000


def hello(**kw):
    d = {"type": "hello", "version": 1, "sample_rate": SR}
    d.update(kw)
    return d


def code_of(fn, *args):
    with pytest.raises(ProtocolError) as e:
        fn(*args)
    assert e.value.code in ERROR_CODES
    return e.value.code


def test_hello_defaults_and_full():
    h = parse_hello(hello(), SR)
    assert (h.format, h.returns, h.direction, h.payload_dtype) == ("pcm16", "latents", "encode",
                                                                   "float32")
    h = parse_hello(hello(format="float32", direction="decode", payload_dtype="float16",
                          token="t", **{"return": "both"}), SR)
    assert h.format == "float32" and h.returns == "both" and h.token == "t"
    assert parse_hello(json.loads(h.to_json()), SR) == h


@pytest.mark.parametrize("obj, code", [
    (hello(sample_rate=16000), "bad_sample_rate"),
    (hello(sample_rate="24000"), "bad_field"),
    (hello(sample_rate=True), "bad_field"),
    (hello(version=3), "unsupported_version"),
    (hello(format="mulaw"), "bad_field"),                        # v1 has no G.711
    (hello(version=2, sample_rate=12345), "bad_sample_rate"),
    (hello(version=2, sample_rate=0), "bad_sample_rate"),
    (hello(version=2, sample_rate=48000.0), "bad_field"),
    (hello(version=2, format="ulaw"), "bad_field"),
    (hello(version=None), "bad_field"),
    (hello(format="mp3"), "bad_field"),
    (hello(**{"return": ["latents"]}), "bad_field"),
    (hello(direction="sideways"), "bad_field"),
    (hello(payload_dtype="int8"), "bad_field"),
    (hello(token=5), "bad_field"),
    (hello(extra=1), "unknown_field"),
    ({"type": "flush"}, "not_ready"),
])
def test_bad_hello_codes(obj, code):
    assert code_of(parse_hello, obj, SR) == code


def test_wrong_rate_message_says_no_resampling():
    with pytest.raises(ProtocolError, match="does not resample"):
        parse_hello(hello(sample_rate=48000), SR)


@pytest.mark.parametrize("rate", SAMPLE_RATES)
@pytest.mark.parametrize("fmt", ["pcm16", "float32", "mulaw", "alaw"])
def test_v2_hello_takes_every_rate_and_format(rate, fmt):
    h = parse_hello(hello(version=2, sample_rate=rate, format=fmt), SR)
    assert (h.version, h.sample_rate, h.format) == (2, rate, fmt)
    assert parse_hello(json.loads(h.to_json()), SR) == h


def test_g711_audio_decoding():
    # 0xFF/0x7F are mu-law's +0/-0, 0x80/0x00 its extremes; 0xD5/0x55 A-law's smallest steps
    np.testing.assert_array_equal(decode_audio(bytes([0xFF, 0x7F, 0x80, 0x00]), "mulaw"),
                                  np.array([0, 0, 32124, -32124]) / 32768.0)
    np.testing.assert_array_equal(decode_audio(bytes([0xD5, 0x55, 0xAA, 0x2A]), "alaw"),
                                  np.array([8, -8, 32256, -32256]) / 32768.0)
    assert decode_audio(b"\x01", "mulaw").shape == (1,)  # one byte, one sample


@pytest.mark.parametrize("text, code", [
    ("{", "bad_json"), ("[1, 2]", "bad_json"), ('"hello"', "bad_json"), ("NaN", "bad_json"),
    ('{"type": 1}', "bad_message"), ("{}", "bad_message"), ("x" * 5000, "bad_json"),
    ('{"type": "hello", "version": NaN}', "bad_json"),
])
def test_bad_text(text, code):
    assert code_of(parse_text, text) == code


@pytest.mark.parametrize("obj, expected", [
    ({"type": "flush"}, "flush"), ({"type": "reset"}, "reset"), ({"type": "close"}, "close")])
def test_controls(obj, expected):
    assert parse_control(obj) == expected


@pytest.mark.parametrize("obj, code", [
    ({"type": "hello"}, "duplicate_hello"), ({"type": "stop"}, "unknown_type"),
    ({"type": "flush", "now": True}, "unknown_field")])
def test_bad_controls(obj, code):
    assert code_of(parse_control, obj) == code


def test_audio_decoding():
    pcm = np.array([0, 16384, -32768, 32767], "<i2")
    np.testing.assert_array_equal(decode_audio(pcm.tobytes(), "pcm16"), pcm / 32768.0)
    x = np.array([0.5, -0.25], "<f4")
    np.testing.assert_array_equal(decode_audio(x.tobytes(), "float32"), x)
    assert decode_audio(b"", "pcm16").size == 0
    assert code_of(decode_audio, b"\x00\x01\x02", "pcm16") == "bad_audio"
    assert code_of(decode_audio, b"\x00" * 6, "float32") == "bad_audio"
    for bad in (np.nan, np.inf, -np.inf):
        assert code_of(decode_audio, np.array([0, bad], "<f4").tobytes(), "float32") \
            == "bad_audio"
    assert code_of(decode_audio, "text", "pcm16") == "bad_audio"


def test_latent_decoding():
    z = np.arange(12, dtype="<f4").reshape(3, 4)
    np.testing.assert_array_equal(decode_latents(z.tobytes(), 4), z)
    assert code_of(decode_latents, z.tobytes()[:-4], 4) == "bad_latents"
    z[1, 2] = np.nan
    assert code_of(decode_latents, z.tobytes(), 4) == "bad_latents"


@pytest.mark.parametrize("dtype, tol", [(DTYPE_FLOAT32, 0), (DTYPE_FLOAT16, 1e-3)])
def test_frame_round_trip(dtype, tol):
    payload = np.random.RandomState(0).randn(3, 7).astype(np.float32)
    data = encode_frame(KIND_BOTH, 5, 42, payload, dtype, 111, 222, final=True)
    assert len(data) == HEADER_SIZE + payload.size * (4 if dtype == DTYPE_FLOAT32 else 2)
    assert data[:4] == b"F3ST"
    m = parse_frame(data)
    assert (m.kind, m.seq, m.frame_index, m.recv_us, m.send_us, m.final) == \
        (KIND_BOTH, 5, 42, 111, 222, True)
    np.testing.assert_allclose(m.payload, payload, rtol=tol, atol=tol)


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99


# -- fuzzing: malformed input raises ProtocolError, never anything else -----------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
hello_like = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["hello", "flush", "x"]) | json_values,
                  "version": st.sampled_from([1, 2, 3, 0]) | json_values,
                  "sample_rate": st.sampled_from([SR, 16000, 8000, 11025]) | json_values,
                  "format": st.sampled_from(["pcm16", "float32", "mulaw", "alaw"]) | json_values,
                  "return": st.sampled_from(["latents", "both"]) | json_values,
                  "direction": st.sampled_from(["encode", "decode"]) | json_values,
                  "payload_dtype": st.sampled_from(["float16"]) | json_values,
                  "token": st.text(max_size=4) | json_values}) | st.dictionaries(
    st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | json_values.map(json.dumps))
def test_fuzz_parse_text(text):
    try:
        obj = parse_text(text)
    except ProtocolError as e:
        assert e.code in ERROR_CODES
        return
    assert isinstance(obj, dict) and isinstance(obj["type"], str)


@settings(max_examples=400, deadline=None)
@given(hello_like)
def test_fuzz_hello_and_control(obj):
    for fn in (lambda: parse_hello(obj, SR), lambda: parse_control(obj)):
        try:
            out = fn()
        except ProtocolError as e:
            assert e.code in ERROR_CODES
        else:
            assert isinstance(out, (Hello, str))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["pcm16", "float32", "mulaw", "alaw"]),
       st.integers(1, 8))
def test_fuzz_binary_input(data, fmt, dim):
    for fn in (lambda: decode_audio(data, fmt), lambda: decode_latents(data, dim)):
        try:
            x = fn()
        except ProtocolError as e:
            assert e.code in ERROR_CODES
        else:
            assert x.dtype == np.float32 and np.isfinite(x).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda b: b"F3ST\x01" + b, st.binary(max_size=120)))
def test_fuzz_parse_frame(data):
    try:
        m = parse_frame(data)
    except ProtocolError as e:
        assert e.code in ERROR_CODES
    else:
        assert m.payload.ndim == 2


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 5), st.integers(0, 9), st.integers(0, 2**32 - 1), st.integers(0, 2**31),
       st.sampled_from([DTYPE_FLOAT32, DTYPE_FLOAT16]), st.booleans())
def test_fuzz_frame_round_trip(n, w, index, us, dtype, final):
    payload = np.linspace(-1, 1, n * w, dtype=np.float32).reshape(n, w)
    m = parse_frame(encode_frame(KIND_BOTH, 7, index, payload, dtype, us, us + 1, final))
    assert (m.frame_index, m.recv_us, m.final, m.payload.shape) == (index, us, final, (n, w))
    assert math.isclose(float(np.abs(m.payload - payload).max(initial=0)), 0, abs_tol=1e-3)
