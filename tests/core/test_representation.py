import torch
import torch.nn.functional as F

from f3stream.config import RepresentationConfig
from f3stream.representation import (LLMAdapter, RandomProjectionQuantizer, RepresentationEncoder,
                                     RepresentationTrainingHeads, RQMTPHeads, rq_mtp_loss)


def test_encoder_shapes_and_causality():
    cfg = RepresentationConfig(model_dim=32, n_heads=2, layers=2, output_dim=48)
    enc = RepresentationEncoder(64, cfg).eval()
    z = torch.randn(2, 20, 64)
    with torch.no_grad():
        r = enc(z)
        z2 = z.clone()
        z2[:, 12:] += 3.0
        r2 = enc(z2)
    assert r.shape == (2, 20, 48)
    torch.testing.assert_close(r[:, :12], r2[:, :12])
    assert not torch.allclose(r[:, 12:], r2[:, 12:])


def test_quantizer_is_frozen_deterministic_and_in_range():
    q1 = RandomProjectionQuantizer(64, 16, 512, seed=3)
    q2 = RandomProjectionQuantizer(64, 16, 512, seed=3)
    q3 = RandomProjectionQuantizer(64, 16, 512, seed=4)
    assert list(q1.parameters()) == []
    z = torch.randn(4, 50, 64)
    c1 = q1(z)
    assert c1.shape == (4, 50) and c1.dtype == torch.int64
    assert int(c1.min()) >= 0 and int(c1.max()) < 512
    torch.testing.assert_close(c1, q2(z))
    assert not torch.equal(c1, q3(z))
    torch.testing.assert_close(q1.codebook.norm(dim=-1), torch.ones(512))
    # the code is the nearest codebook entry to the normalised projection
    y = F.normalize(z @ q1.projection, dim=-1)
    dists = torch.cdist(y.reshape(-1, 16), q1.codebook)
    torch.testing.assert_close(c1.reshape(-1), dists.argmin(-1))
    # many codes are used on random input (the quantizer is not degenerate)
    assert c1.unique().numel() > 100


def test_mtp_heads_shape_and_loss_targets_future_frames():
    heads = RQMTPHeads(rep_dim=8, n_heads=3, codebook_size=10)
    reps = torch.randn(2, 7, 8)
    logits = heads(reps)
    assert logits.shape == (2, 7, 3, 10)
    codes = torch.randint(0, 10, (2, 7))
    expected = sum(F.cross_entropy(logits[:, :7 - k, k - 1].reshape(-1, 10),
                                   codes[:, k:].reshape(-1)) for k in (1, 2, 3))
    torch.testing.assert_close(rq_mtp_loss(logits, codes), expected)
    # perfect predictions of the *future* codes give ~zero loss
    perfect = torch.full((2, 7, 3, 10), -1e4)
    for k in range(3):
        for t in range(7 - k - 1):
            perfect[:, t, k].scatter_(-1, codes[:, t + k + 1, None], 1e4)
    assert rq_mtp_loss(perfect, codes).item() < 1e-3
    # masking drops padded positions
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    assert rq_mtp_loss(logits, codes, mask).item() != rq_mtp_loss(logits, codes).item()


def test_llm_adapter_halves_the_rate_causally():
    ad = LLMAdapter(rep_dim=6, lm_dim=5, factor=2)
    x = torch.randn(1, 9, 6)
    y = ad(x)
    assert y.shape == (1, 5, 5)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    y2 = ad(x2)
    torch.testing.assert_close(y[:, :2], y2[:, :2])  # outputs 0, 1 use frames 0..3 only


def test_training_heads_bundle_matches_config():
    cfg = RepresentationConfig(output_dim=40, mtp_heads=2, rq_codebook_size=64, lm_dim=12)
    h = RepresentationTrainingHeads(64, cfg)
    assert len(h.mtp.heads) == 2 and h.mtp.heads[0].out_features == 64
    assert h.adapter(torch.randn(1, 4, 40)).shape == (1, 2, 12)
    assert h.quantizer(torch.randn(1, 4, 64)).shape == (1, 4)
