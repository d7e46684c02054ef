"""Each streaming primitive against a naive reference, whole-sequence and chunked."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from f3stream.streaming import (CausalConv1d, CausalFraming, OverlapAdd, SlidingWindowAttention,
                                StreamingSequential, TransformerLayer, hann_window, irdft_basis,
                                rdft_basis, state_nbytes)

torch.manual_seed(0)


def run_chunked(module, x, sizes, dim):
    """Steps ``module`` over consecutive chunks of ``x`` along ``dim``."""
    state = module.init_state(x.shape[0])
    outs, start = [], 0
    for n in sizes:
        y, state = module.step(x.narrow(dim, start, n), state)
        outs.append(y)
        start += n
    assert start == x.shape[dim]
    return torch.cat(outs, dim=dim), state


def test_causal_conv_equals_left_padded_conv_and_is_chunk_invariant():
    conv = CausalConv1d(3, 5, kernel_size=4, dilation=2)
    x = torch.randn(2, 3, 37)
    ref = F.conv1d(F.pad(x, (6, 0)), conv.conv.weight, conv.conv.bias, dilation=2)
    full, _ = conv.step(x, conv.init_state(2))
    torch.testing.assert_close(full, ref)
    chunked, state = run_chunked(conv, x, [1, 2, 5, 1, 28], dim=2)
    torch.testing.assert_close(chunked, ref, atol=1e-6, rtol=0)
    assert state["buf"].shape == (2, 3, 6)
    torch.testing.assert_close(state["buf"], x[..., -6:])


def test_causal_conv_never_looks_ahead():
    conv = CausalConv1d(2, 2, kernel_size=5)
    x = torch.randn(1, 2, 20)
    y1, _ = conv.step(x, conv.init_state(1))
    x2 = x.clone()
    x2[..., 12:] += 1.0
    y2, _ = conv.step(x2, conv.init_state(1))
    torch.testing.assert_close(y1[..., :12], y2[..., :12])
    assert not torch.allclose(y1[..., 12:], y2[..., 12:])


def test_framing_frames_end_at_each_hop_with_zero_history():
    fr = CausalFraming(frame_length=8, hop=4)
    x = torch.arange(1, 17, dtype=torch.float32)[None]
    frames, state = fr.step(x, fr.init_state(1))
    assert frames.shape == (1, 4, 8)
    torch.testing.assert_close(frames[0, 0], torch.tensor([0, 0, 0, 0, 1, 2, 3, 4.0]))
    torch.testing.assert_close(frames[0, 3], x[0, 8:16])
    chunked, _ = run_chunked(fr, x, [4, 8, 4], dim=1)
    torch.testing.assert_close(chunked, frames)
    with pytest.raises(ValueError, match="multiple of hop"):
        fr.step(x[:, :5], fr.init_state(1))


def naive_overlap_add(frames, hop):
    b, t, n = frames.shape
    out = torch.zeros(b, (t - 1) * hop + n)
    for j in range(t):
        out[:, j * hop:j * hop + n] += frames[:, j]
    return out


@pytest.mark.parametrize("frame_length,hop", [(8, 4), (12, 4), (4, 4)])
def test_overlap_add_matches_naive_and_carries_the_tail(frame_length, hop):
    ola = OverlapAdd(frame_length, hop)
    frames = torch.randn(2, 9, frame_length)
    ref = naive_overlap_add(frames, hop)
    out, state = run_chunked(ola, frames, [1, 3, 2, 3], dim=1)
    torch.testing.assert_close(out, ref[:, :9 * hop], atol=1e-6, rtol=0)
    torch.testing.assert_close(ola.tail(state), ref[:, 9 * hop:], atol=1e-6, rtol=0)


def test_rdft_basis_equals_torch_rfft():
    n = 480
    w = hann_window(n)
    x = torch.randn(3, n, dtype=torch.float64)
    ref = torch.fft.rfft(x * w)
    basis = rdft_basis(n, w)
    assert basis.dtype == torch.float64  # the encoder's features are computed in float64
    spec = x @ basis
    torch.testing.assert_close(spec[:, :241], ref.real, atol=1e-10, rtol=0)
    torch.testing.assert_close(spec[:, 241:], ref.imag, atol=1e-10, rtol=0)


def test_irdft_basis_inverts_rfft_and_hann_sums_to_one():
    n = 480
    x = torch.randn(2, n, dtype=torch.float64)
    spec = torch.fft.rfft(x)
    rect = torch.ones(n)
    y = torch.cat([spec.real, spec.imag], dim=-1).float() @ irdft_basis(n, rect)
    torch.testing.assert_close(y, x.float(), atol=1e-5, rtol=0)
    # periodic Hann at 50% overlap is COLA: overlap-added windows are exactly 1 in steady state
    w = hann_window(n).float()
    total = naive_overlap_add(w.repeat(1, 6, 1), n // 2)[0, n // 2:-n // 2]
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)


def naive_windowed_attention(attn: SlidingWindowAttention, x):
    """Reference: full causal attention, mask |q - k| > window, explicit ALiBi."""
    b, t, d = x.shape
    h, dh = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
    out = torch.zeros(b, h, t, dh)
    slopes = attn.slopes.view(h)
    for i in range(t):
        lo = max(0, i - attn.window)
        s = (q[:, :, i:i + 1] @ k[:, :, lo:i + 1].transpose(-1, -2))[:, :, 0] / math.sqrt(dh)
        dist = torch.arange(i - lo, -1, -1, dtype=torch.float32)
        s = s - slopes[None, :, None] * dist
        out[:, :, i] = (torch.softmax(s, -1)[..., None] * v[:, :, lo:i + 1]).sum(2)
    return attn.out(out.transpose(1, 2).reshape(b, t, d))


def test_sliding_window_attention_matches_reference_for_any_chunking():
    attn = SlidingWindowAttention(dim=16, n_heads=4, window=5)
    x = torch.randn(2, 23, 16)
    ref = naive_windowed_attention(attn, x)
    with torch.no_grad():
        full, _ = attn.step(x, attn.init_state(2))
        torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
        for sizes in ([1] * 23, [7, 1, 15], [4, 6, 13]):
            chunked, state = run_chunked(attn, x, sizes, dim=1)
            torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=0)
            assert state["k"].shape == (2, 4, 5, 4)
            assert state["pos"].tolist() == [23, 23]


def test_attention_forgets_beyond_its_window_and_state_stays_bounded():
    """Inputs older than ``window`` frames cannot affect the output: the receptive field is
    finite, so an endless stream needs a fixed-size cache."""
    attn = SlidingWindowAttention(dim=8, n_heads=2, window=4)
    x = torch.randn(1, 30, 8)
    x2 = x.clone()
    x2[:, :10] = torch.randn(1, 10, 8)
    with torch.no_grad():
        y1, s1 = attn.step(x, attn.init_state(1))
        y2, _ = attn.step(x2, attn.init_state(1))
    torch.testing.assert_close(y1[:, 14:], y2[:, 14:])  # frame 14 sees 10..14 only
    assert not torch.allclose(y1[:, 10:14], y2[:, 10:14])
    assert state_nbytes(s1) == state_nbytes(attn.init_state(1))


def test_transformer_stack_chunk_invariant():
    stack = StreamingSequential(*[TransformerLayer(32, 4, window=6) for _ in range(3)])
    x = torch.randn(1, 40, 32)
    with torch.no_grad():
        full, _ = stack.step(x, stack.init_state(1))
        chunked, _ = run_chunked(stack, x, [3, 17, 1, 19], dim=1)
    assert np.abs((full - chunked).numpy()).max() <= 1e-5
