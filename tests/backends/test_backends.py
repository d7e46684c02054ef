"""The numba and onnx engines compute what the torch model computes, behind one switch.

The cross-engine tests run over the backend registry (``f3stream.backends.REGISTRY``): a new
backend is covered by its ``REGISTRY`` entry (and, if it takes options, a line in
``engine_options``)."""

import json
import sys

import numpy as np
import pytest
import torch
from helpers import noise

import f3stream
from f3stream import F3StreamError, Tokenizer
from f3stream.audio import load_audio
from f3stream.backends import REGISTRY, BackendError, create_engine
from f3stream.checkpoint import default_checkpoint_dir
from f3stream.model import F3Model

pytest.importorskip("numba")
pytest.importorskip("onnxruntime")

TOL = 1e-4
REFERENCE = "torch"  # the engine every other one is compared with


def engine_options(backend, export_dir):
    """What the tests pass a backend's engine: onnx exports its graphs to ``export_dir`` and
    runs on one thread; the others take no options."""
    return {"export_dir": export_dir, "threads": 1} if backend == "onnx" else {}


def registry_backends(*, reference=True):
    """The registry's backends as test parameters (ids: their names), each skipped where its
    optional package is not installed."""
    return [pytest.param(name, marks=pytest.mark.skipif(
                not b.installed(), reason=f"backend {name!r} needs {b.package!r}"))
            for name, b in REGISTRY.items() if reference or name != REFERENCE]


ALL_BACKENDS = registry_backends()                     # torch included
OTHER_BACKENDS = registry_backends(reference=False)    # compared with torch


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    torch.manual_seed(5)
    return F3Model(tiny_config).eval()


@pytest.fixture(scope="module")
def toks(tiny_model, tmp_path_factory):
    """One model, every installed engine of the registry, by name."""
    return {name: Tokenizer(tiny_model, {}, "cpu", name,
                            **engine_options(name, tmp_path_factory.mktemp(name)))
            for name, b in REGISTRY.items() if b.installed()}


@pytest.fixture(scope="module")
def harmonic_toks(tiny_config, tmp_path_factory):
    """:func:`toks` for a decoder with the harmonic source, its gains and pitch head set so
    that the pitch moves and the harmonics are loud."""
    from dataclasses import replace
    cfg = replace(tiny_config, autoencoder=replace(tiny_config.autoencoder,
                                                   harmonic_source=True))
    torch.manual_seed(8)
    model = F3Model(cfg).eval()
    with torch.no_grad():
        model.decoder.harmonic_proj.weight.normal_(0, 0.2)
        model.decoder.pitch.out.weight.normal_(0, 0.05)
    return {name: Tokenizer(model, {}, "cpu", name,
                            **engine_options(name, tmp_path_factory.mktemp("h" + name)))
            for name, b in REGISTRY.items() if b.installed()}


def maxdiff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def stream(tok, wav, sizes):
    s = tok.session()
    outs, pos = [], 0
    for n in sizes:
        outs.append(s.push(wav[pos:pos + n]))
        pos += n
    outs.append(s.push(wav[pos:]))
    outs.append(s.flush())
    return (np.concatenate([o.latents for o in outs]),
            np.concatenate([o.representations for o in outs]))


def decode_stream(tok, z, sizes):
    d = tok.decoder_session()
    parts, pos = [], 0
    for n in sizes:
        parts.append(d.push(z[pos:pos + n]))
        pos += n
    parts.append(d.push(z[pos:]))
    parts.append(d.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_offline_parity_with_torch(toks, backend):
    wav = noise(4.3, 1)  # 108 frames, the last one partial
    ref, got = toks["torch"].tokenize(wav), toks[backend].tokenize(wav)
    assert got.latents.shape == ref.latents.shape
    assert got.representations.shape == ref.representations.shape
    assert maxdiff(got.latents, ref.latents) <= TOL
    assert maxdiff(got.representations, ref.representations) <= TOL
    y_ref, y = toks["torch"].decode(ref.latents), toks[backend].decode(ref.latents)
    assert y.shape == y_ref.shape
    assert maxdiff(y, y_ref) <= TOL
    r_ref, r = toks["torch"].represent(ref.latents), toks[backend].represent(ref.latents)
    assert maxdiff(r, r_ref) <= TOL


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_level_feature_parity_and_streaming(tiny_config, tmp_path, backend):
    """An encoder with the level input gives the same latents on every engine, offline and
    streamed, and its latents change with the input level (what the feature is for)."""
    from dataclasses import replace
    cfg = replace(tiny_config, autoencoder=replace(tiny_config.autoencoder, level_feature=True))
    torch.manual_seed(7)
    model = F3Model(cfg).eval()
    ref_tok = Tokenizer(model, {}, "cpu", "torch")
    tok = Tokenizer(model, {}, "cpu", backend, **engine_options(backend, tmp_path))
    wav = noise(2.1, 3)
    ref = ref_tok.tokenize(wav)
    assert maxdiff(tok.tokenize(wav).latents, ref.latents) <= TOL
    lat, _ = stream(tok, wav, [1, 959, 2000, 7, 30000])
    assert maxdiff(lat, ref.latents) <= TOL
    assert maxdiff(ref_tok.tokenize(wav * 0.1).latents, ref.latents) > 1e-2


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_harmonic_source_parity_and_streaming(harmonic_toks, tiny_config, tmp_path, backend):
    """A decoder with the harmonic source (pitch head, integer-phase oscillator, gains)
    decodes the same on every engine, offline and frame by frame, with a pitch that moves."""
    ref_tok, tok = harmonic_toks["torch"], harmonic_toks[backend]
    z = ref_tok.encode(noise(3.1, 4))
    f0 = ref_tok.model.decoder.pitch(torch.from_numpy(z)[None])
    assert f0.max() - f0.min() > 20
    y_ref = ref_tok.decode(z)
    assert maxdiff(tok.decode(z), y_ref) <= TOL
    assert maxdiff(decode_stream(tok, z, [1] * 20 + [3, 7]), y_ref) <= TOL
    assert "harmonic.phase" in tok.engine.init_decode_state(1)
    plain = Tokenizer(F3Model(tiny_config).eval(), {}, "cpu", backend,
                      **engine_options(backend, tmp_path / "plain"))
    assert "harmonic.phase" not in plain.engine.init_decode_state(1)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("sizes", [[960] * 40,                      # one frame per step
                                   [1, 959, 2000, 7, 30000, 5],     # ragged
                                   [9600, 19200, 123]])             # multi-frame chunks
def test_streaming_chunkings_equal_torch_offline(toks, backend, sizes):
    wav = noise(2.7, 2)
    ref = toks["torch"].tokenize(wav)
    lat, rep = stream(toks[backend], wav, sizes)
    assert maxdiff(lat, ref.latents) <= TOL
    assert maxdiff(rep, ref.representations) <= TOL
    frame_sizes = [s // 960 for s in sizes if s >= 960] or [1]
    y = decode_stream(toks[backend], ref.latents, frame_sizes)
    assert maxdiff(y, toks["torch"].decode(ref.latents)) <= TOL


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_batched_sessions(toks, backend):
    tok = toks[backend]
    waves = [noise(1.2, s) for s in range(3)]
    steps = [[1000, 0, 27800], [960, 960, 26880], [28800, 0, 0]]
    sessions, solo = [tok.session() for _ in waves], [tok.session() for _ in waves]
    pos = [0] * 3
    for k in range(3):
        chunks = []
        for i in range(3):
            chunks.append(waves[i][pos[i]:pos[i] + steps[i][k]])
            pos[i] += steps[i][k]
        batched = Tokenizer.step_sessions(sessions, chunks)
        for i in range(3):
            ref = solo[i].push(chunks[i])
            assert batched[i].n_frames == ref.n_frames
            assert batched[i].start_frame == ref.start_frame
            if ref.n_frames:
                assert maxdiff(batched[i].latents, ref.latents) <= 1e-5
                assert maxdiff(batched[i].representations, ref.representations) <= 1e-5


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_state_layout_mirrors_torch(toks, backend):
    ref = toks["torch"].engine.init_encode_state(2)
    got = toks[backend].engine.init_encode_state(2)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].shape == tuple(v.shape), k
    s = toks[backend].session()
    assert s.state_nbytes == toks["torch"].session().state_nbytes
    dec = toks[backend].engine.init_decode_state(1)
    assert set(dec) == set(toks["torch"].engine.init_decode_state(1))


def _arrays(state):
    """A state's values as numpy copies (torch tensors included)."""
    return {k: np.array(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v,
                        copy=True) for k, v in state.items()}


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_engines_honour_the_mutation_contract(toks, backend):
    """The one mutation contract (``f3stream/streaming/state.py``), engine by engine:
    ``*_step`` leaves the state it is given as it was (stepping it twice gives the same
    result), ``*_rows`` writes into the given state's own arrays at its rows and nowhere else,
    and ``decode_tail`` is a copy, not a view of the state."""
    eng = toks[backend].engine
    hop = toks[backend].hop_length
    wav = noise(0.4, 21).reshape(4, -1)[:, :2 * hop]          # 4 streams, 2 frames each
    _, _, s0 = eng.encode_step(wav[:3], eng.init_encode_state(3))  # a state that is not zeros
    before = _arrays(s0)
    z1, r1, s1 = eng.encode_step(wav[1:], s0)
    assert _same(_arrays(s0), before)                      # the given state is untouched
    z2, r2, s2 = eng.encode_step(wav[1:], s0)              # so stepping it again is a replay
    assert np.array_equal(z1, z2) and np.array_equal(r1, r2) and _same(_arrays(s1),
                                                                         _arrays(s2))
    assert not _same(_arrays(s1), before)                  # and the new state did advance
    p0 = eng.init_represent_state(3)
    _, p1 = eng.represent_step(z1, p0)
    assert not any(np.asarray(v).any() for v in _arrays(p0).values())
    assert not _same(_arrays(p1), _arrays(p0))
    d0 = eng.decode_step(z1, eng.init_decode_state(3))[1]
    d_before = _arrays(d0)
    y1, d1 = eng.decode_step(z2, d0)
    assert _same(_arrays(d0), d_before) and np.array_equal(y1, eng.decode_step(z2, d0)[0])

    # *_rows: in place, into the same arrays, at the given rows only
    pool = eng.init_encode_state(4)
    eng.encode_rows(wav, pool, np.arange(4))
    objects, before = dict(pool), _arrays(pool)
    rows = np.array([3, 1])
    z, r = eng.encode_rows(wav[:2], pool, rows)
    assert all(pool[k] is v for k, v in objects.items()) and set(pool) == set(objects)
    after = _arrays(pool)
    ref_z, ref_r, ref_s = eng.encode_step(  # what a step of those rows alone gives
        wav[:2], {k: _as_engine(eng, v[rows]) for k, v in before.items()})
    assert np.array_equal(z, ref_z) and np.array_equal(r, ref_r)
    for k in before:
        assert np.array_equal(after[k][[0, 2]], before[k][[0, 2]]), k   # other rows untouched
        assert np.array_equal(after[k][rows], _arrays(ref_s)[k]), k     # these rows advanced
    dpool = eng.init_decode_state(4)
    eng.decode_rows(np.concatenate([z1, z1[:1]]), dpool, np.arange(4))
    d_objects, d_before = dict(dpool), _arrays(dpool)
    eng.decode_rows(z1[:2], dpool, rows)
    d_after = _arrays(dpool)
    assert all(dpool[k] is v for k, v in d_objects.items())
    for k in d_before:
        assert np.array_equal(d_after[k][[0, 2]], d_before[k][[0, 2]]), k
    eng.zero_rows(dpool, [1])
    zeroed = _arrays(dpool)
    assert all(dpool[k] is v for k, v in d_objects.items())
    assert all(not zeroed[k][1].any() and np.array_equal(zeroed[k][3], d_after[k][3])
               for k in zeroed)

    tail = eng.decode_tail(dpool)                          # a copy: resetting the pool's rows
    kept = tail.copy()                                     # afterwards does not change it
    assert kept[3].any()
    eng.zero_rows(dpool, np.arange(4))
    assert np.array_equal(tail, kept)


def _as_engine(eng, a):
    """A numpy state array in the engine's own array type."""
    return torch.from_numpy(np.ascontiguousarray(a)) if eng.name == "torch" else a


def test_numba_engine_checks_module_declarations_and_states(tiny_model, monkeypatch):
    """The numba engine binds states through the layouts the torch modules declare: a module
    whose declared state its mirror does not take, a layer type without a mirror, or a state
    array of the wrong kind is a clear error, never a kernel reading the wrong memory."""
    from f3stream.backends.numba import MIRRORS, NumbaEngine
    from f3stream.backends.numba.weights import Reader
    from f3stream.streaming import OverlapAdd, StateEntry

    eng = NumbaEngine(tiny_model)
    state = eng.init_decode_state(2)
    state["ola.carry"] = state["ola.carry"].astype(np.float64)
    with pytest.raises(F3StreamError, match="'ola.carry' must be a writable.*float32"):
        eng.decode_rows(np.zeros((2, 1, 16), np.float32), state, np.arange(2))
    with pytest.raises(F3StreamError, match="do not index"):
        eng.decode_rows(np.zeros((1, 1, 16), np.float32), eng.init_decode_state(2), [2])
    with pytest.raises(F3StreamError, match="no mirror of Conv2d"):
        Reader(MIRRORS)(torch.nn.Conv2d(1, 1, 1))
    real = OverlapAdd.own_state_spec
    monkeypatch.setattr(OverlapAdd, "own_state_spec",
                        lambda self: {**real(self), "extra": StateEntry((1,))})
    with pytest.raises(F3StreamError, match=r"declares state \['extra'\]"):
        NumbaEngine(tiny_model)


def test_onnx_export_is_cached_and_full_graph_matches(tiny_model, tmp_path):
    eng = create_engine("onnx", tiny_model, torch.device("cpu"), export_dir=tmp_path, threads=1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"encode_step", "represent_step", "decode_step", "full"}
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes left no temporaries
    stamp = (tmp_path / "encode_step.onnx").stat().st_mtime_ns
    create_engine("onnx", tiny_model, torch.device("cpu"), export_dir=tmp_path, threads=1)
    assert (tmp_path / "encode_step.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert manifest["graphs"]["decode_step"]["state"] == list(tiny_model.decoder.state_spec())
    stale = dict(manifest, graphs={**manifest["graphs"], "decode_step": {
        **manifest["graphs"]["decode_step"], "state": ["ola.carry"]}})
    (tmp_path / "manifest.json").write_text(json.dumps(stale))  # made with another layout:
    create_engine("onnx", tiny_model, torch.device("cpu"), export_dir=tmp_path, threads=1)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest  # re-exported
    assert tiny_model.training is False
    wav = noise(1.0, 3).reshape(1, -1)
    z, r, y = eng.run_full(np.concatenate([wav, -wav]))
    with torch.no_grad():
        zt, rt, _ = tiny_model.encode_step(torch.from_numpy(np.concatenate([wav, -wav])),
                                           tiny_model.init_encode_state(2))
        _, yt = tiny_model(torch.from_numpy(np.concatenate([wav, -wav])))
    assert maxdiff(z, zt.numpy()) <= TOL
    assert maxdiff(r, rt.numpy()) <= TOL
    assert maxdiff(y, yt.numpy()) <= TOL


def test_backend_switch_and_clear_errors(monkeypatch, tiny_model):
    tok = f3stream.load(backend="numba")
    assert tok.backend == "numba" and tok.engine.name == "numba"
    with pytest.raises(F3StreamError, match="unknown backend 'jax'.*torch, numba, onnx"):
        Tokenizer(tiny_model, {}, "cpu", "jax")
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    with pytest.raises(BackendError, match=r"pip install 'f3stream\[numba\]'"):
        Tokenizer(tiny_model, {}, "cpu", "numba")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"pip install 'f3stream\[onnx\]'"):
        Tokenizer(tiny_model, {}, "cpu", "onnx")


def test_numba_refuses_cuda(tiny_model):
    with pytest.raises(F3StreamError, match="CPU only"):
        create_engine("numba", tiny_model, torch.device("cuda"))


def test_cli_backend_option(tmp_path, capsys):
    from f3stream.cli import main

    wav = default_checkpoint_dir().parent.parent / "assets" / "sample.wav"
    out = tmp_path / "t.npz"
    assert main(["encode", str(wav), "--out", str(out), "--backend", "numba",
                 "--no-representations"]) == 0
    assert out.exists()
    assert main(["encode", str(wav), "--backend", "tensorflow"]) == 2


def test_bundled_checkpoint_parity_on_speech(tmp_path):
    """Default-size (or whatever the bundled config says) model on the bundled speech."""
    path = default_checkpoint_dir()
    ref = Tokenizer.load(path)
    cfg = ref.config
    wav, _ = load_audio(path.parent.parent / "assets" / "sample.wav", ref.sample_rate)
    wav = wav[: int(4.5 * ref.sample_rate)]
    out = ref.tokenize(wav)
    y_ref = ref.decode(out.latents)
    assert out.latents.shape[1] == cfg.autoencoder.latent_dim
    others = [n for n, b in REGISTRY.items() if n != REFERENCE and b.installed()]
    assert others
    for backend in others:
        tok = Tokenizer(ref.model, ref.info, "cpu", backend, **engine_options(backend, tmp_path))
        hop = tok.hop_length
        lat, rep = stream(tok, wav, [hop] * 30 + [5 * hop + 17])  # per frame, then chunks
        assert maxdiff(lat, out.latents) <= TOL, backend
        assert maxdiff(rep, out.representations) <= TOL, backend
        y = decode_stream(tok, out.latents, [1] * 20 + [7])
        assert maxdiff(y, y_ref) <= TOL, backend


def test_bench_command_writes_json_and_markdown(tmp_path, capsys):
    from f3stream.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--backends", "numba", "--frames", "5", "--seconds", "0.5",
                 "--no-cold-start", "--no-mimi", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    r = report["backends"]["numba"]
    assert r["encoder_state_bytes"] > 0 and r["encode_step"]["p50_ms"] > 0
    assert r["batched_streams_per_core"] >= 0
    assert "| numba |" in (out / "bench.md").read_text()
    assert main(["bench", "--backends", "numba,jax", "--out", str(out)]) == 2


@pytest.mark.slow
def test_dynamo_exporter_also_matches(tiny_model, tmp_path):
    """The torch.export-based exporter (slow: ~20-45 s) gives the same graphs' numbers."""
    pytest.importorskip("onnxscript")
    tok = Tokenizer(tiny_model, {}, "cpu", "onnx", export_dir=tmp_path, exporter="dynamo",
                    threads=1)
    ref = Tokenizer(tiny_model, {}, "cpu", "torch")
    wav = noise(2.0, 4)
    a = ref.tokenize(wav)
    lat, rep = stream(tok, wav, [960] * 10 + [4800])
    assert maxdiff(lat, a.latents) <= TOL and maxdiff(rep, a.representations) <= TOL
    assert maxdiff(tok.decode(a.latents), ref.decode(a.latents)) <= TOL


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reps", [False, True])
def test_pooled_sessions_equal_private_sessions(toks, backend, reps):
    """Sessions sharing a state pool, stepped in batches over changing subsets (with a reset
    and a released-then-reused row in between), give what private sessions give."""
    tok = toks[backend]
    pool = tok.session_pool(5, representations=reps)
    rng = np.random.default_rng(7)
    waves = [noise(1.5, 10 + i) for i in range(4)]
    pooled = [pool.session() for _ in waves]
    solo = [tok.session(representations=reps) for _ in waves]
    assert pool.free_rows == 1
    pos = [0] * 4
    for step in range(6):
        if step == 2:  # one stream restarts; its neighbours must not notice
            pooled[1].reset(), solo[1].reset()
            pos[1] = 0
        if step == 3:  # a row is released and handed to a new stream, which starts fresh
            pooled[2].release()
            pooled[2], solo[2] = pool.session(), tok.session(representations=reps)
            pos[2] = 0
        members = [i for i in range(4) if rng.random() < 0.75] or [0]
        chunks = []
        for i in members:
            n = int(rng.choice([0, 1, 700, 960, 2500, 4800]))
            chunks.append(waves[i][pos[i]:pos[i] + n])
            pos[i] += n
        got = Tokenizer.step_sessions([pooled[i] for i in members], chunks)
        for g, i, c in zip(got, members, chunks):
            ref = solo[i].push(c)
            assert (g.start_frame, g.n_frames) == (ref.start_frame, ref.n_frames)
            if ref.n_frames:
                assert maxdiff(g.latents, ref.latents) <= 1e-5
                if reps:
                    assert maxdiff(g.representations, ref.representations) <= 1e-5
                else:
                    assert g.representations is None
    for i in range(4):  # the single-session path works on pool rows too
        ref, g = solo[i].flush(), pooled[i].flush()
        assert g.n_frames == ref.n_frames
        if ref.n_frames:
            assert maxdiff(g.latents, ref.latents) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_state_pool_rows_and_limits(toks, backend):
    tok = toks[backend]
    fresh = tok.engine.init_encode_state(2)
    # pools reset rows by zeroing them: that is only right if every fresh state is zeros
    assert all(not np.asarray(v).any() for v in fresh.values())
    pool = tok.session_pool(2)
    a, b = pool.session(), pool.session()
    with pytest.raises(f3stream.session.PoolFullError, match="2 rows"):
        pool.session()
    a.push(noise(0.2, 1))
    assert np.asarray(pool.state["encoder.framing.history"][a.row]).any()
    assert not np.asarray(pool.state["encoder.framing.history"][b.row]).any()
    a.release()
    a.release()  # idempotent
    assert not np.asarray(pool.state["encoder.framing.history"][a.row]).any()
    with pytest.raises(f3stream.SessionClosedError, match="released"):
        a.push(noise(0.1, 2))
    c = pool.session()
    assert c.row == a.row and c.frames_emitted == 0
    with pytest.raises(ValueError, match="another tokenizer or output choice"):
        f3stream.session.EncoderSession(tok, representations=False, pool=pool)


@pytest.mark.parametrize("level_feature", [False, True])
@pytest.mark.parametrize("n_fft,hop", [(480, 240), (240, 80), (75, 15)])
def test_numba_features_equal_the_float64_reference(n_fft, hop, level_feature):
    """The numba engine's folded DFT + |X|^0.3 compression equals the torch encoder's float64
    features to float32 rounding, for even and odd frame lengths, on loud frames and on
    near-silent ones (where float32 DFTs were 1e-3 apart after the compression)."""
    from f3stream.autoencoder import AudioEncoder
    from f3stream.backends.numba import MIRRORS
    from f3stream.backends.numba.autoencoder import spectral_features
    from f3stream.backends.numba.streaming.framing import causal_framing
    from f3stream.backends.numba.streaming.state import state_binder
    from f3stream.backends.numba.weights import Reader
    from f3stream.config import AutoencoderConfig
    enc = AudioEncoder(AutoencoderConfig(n_fft=n_fft, stft_hop=hop, sample_rate=24000,
                                         frame_rate=25, level_feature=level_feature))
    rng = np.random.default_rng(1)
    wav = rng.standard_normal((4, 960)).astype(np.float32) * np.float32([[0.5], [1e-3], [1e-5],
                                                                        [0.0]])
    wav[3] = 0.5 * np.sin(2 * np.pi * 200 * np.arange(960) / 24000)  # loud tone, quiet bins
    history = np.zeros((4, n_fft - hop), np.float32)
    w = Reader(MIRRORS)(enc)
    assert w.features.power_exp == np.float32(-0.35)  # the encoder's own |X|^0.3
    framing_state = state_binder(enc.framing, "", MIRRORS)({"history": history})
    got = spectral_features(causal_framing(wav, framing_state, np.arange(4), w.framing),
                            w.features)
    frames, _ = enc.framing.step(torch.from_numpy(wav), enc.framing.init_state(4))
    want = enc.features(frames.double()).reshape(-1, got.shape[1]).numpy()
    n_bins = n_fft // 2 + 1
    assert got.shape[1] == 2 * n_bins + int(level_feature)
    if level_feature:  # the level column: loud, quiet, near-silent and silent rows differ
        level = want[:, -1].reshape(4, -1).mean(axis=1)
        assert level[0] > level[1] > level[2] and level[2] > -1.5
        assert np.abs(got[:, -1] - want[:, -1]).max() <= 1e-6
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, float(scale.max()))
    assert (np.abs(got - want) <= 2e-6 * scale).all()  # relative to each frame's own level
    assert np.array_equal(history, wav[:, 960 - (n_fft - hop):])  # framing state advanced


def test_numba_gelu_and_linear_paths_match_reference():
    """The numba GELU's rational erf stays at float32 precision over the whole range, and every
    path of ``_linear`` (row-blocked BLAS, one product, our own few-rows loop) equals a
    float64 product at every batch size."""
    from f3stream.backends.numba import nn as nb
    x = np.concatenate([np.linspace(-12, 12, 200001), [-1e4, -5.66, 5.66, 1e4]]).astype(
        np.float32)
    got = x.copy()
    nb.gelu_(got)
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 2e-6 * max(1.0, float(np.abs(x).max()) / 12)
    rng = np.random.default_rng(0)
    k, o = 480, 482                       # blocks of 4 rows: the blocked path covers n 5..16
    w, b = rng.standard_normal((k, o)).astype(np.float32), rng.standard_normal(o).astype(
        np.float32)
    for n in (1, 4, 5, 9, 16, 17, 40):
        a = rng.standard_normal((n, k)).astype(np.float32)
        ref = a.astype(np.float64) @ w + b
        for plan in ((nb.SMALL_GEMM, 0), (0, 0), (0, 16)):  # row blocks, BLAS, own loop
            assert np.abs(nb.linear(a, nb.Linear(w, b), plan) - ref).max() <= 1e-3, (n, plan)
    block_limit, own_rows = nb.gemm_plan()
    assert block_limit in (0, nb.SMALL_GEMM) and own_rows in (0, nb.OWN_ROWS)


def test_gemm_plan_is_measured_with_one_blas_thread(monkeypatch):
    """The plan is timed with the BLAS on one thread, as serve and bench run it: with a
    second OpenBLAS thread on a busy machine a packed product waited 7-15 ms for a time slice,
    and the plan flipped with the load."""
    pytest.importorskip("numba")
    from threadpoolctl import threadpool_info, threadpool_limits

    from f3stream.backends.numba import nn as nb

    monkeypatch.delenv("F3STREAM_GEMM_PLAN", raising=False)
    seen = []
    real = nb._best_times

    def spy(*args, **kwargs):
        seen.append({lib["num_threads"] for lib in threadpool_info()
                     if lib["user_api"] == "blas"})
        return real(*args, **kwargs)

    monkeypatch.setattr(nb, "_best_times", spy)
    with threadpool_limits(2):
        block_limit, own_rows = nb.gemm_plan.__wrapped__()
    assert block_limit in (0, nb.SMALL_GEMM) and own_rows in (0, nb.OWN_ROWS)
    assert len(seen) == 3 and seen[1] == seen[2] == {1}, seen  # seen[0]: the warm-up


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("decoder", ["plain", "harmonic"])
def test_pooled_decoder_sessions_equal_private_sessions(request, backend, decoder):
    """Batched decoding of decoder sessions that share a pool (changing subsets, uneven chunk
    lengths, a reset and a reused row) gives what private sessions give, and flush tails
    match; with the harmonic source too (its oscillator phase is per row)."""
    tok = request.getfixturevalue("toks" if decoder == "plain" else "harmonic_toks")[backend]
    fresh = tok.engine.init_decode_state(2)
    assert all(not np.asarray(v).any() for v in fresh.values())  # zeroed rows == fresh
    zs = [tok.encode(noise(1.2, 30 + i)) for i in range(3)]
    pool = tok.decoder_pool(4)
    pooled = [pool.session() for _ in zs]
    solo = [tok.decoder_session() for _ in zs]
    rng = np.random.default_rng(3)
    pos = [0] * 3
    for step in range(6):
        if step == 2:
            pooled[0].reset(), solo[0].reset()
            pos[0] = 0
        if step == 3:
            pooled[1].release()
            pooled[1], solo[1] = pool.session(), tok.decoder_session()
            pos[1] = 0
        members = [i for i in range(3) if rng.random() < 0.8] or [2]
        chunks = []
        for i in members:
            n = int(rng.choice([0, 1, 2, 5]))
            chunks.append(zs[i][pos[i]:pos[i] + n])
            pos[i] += n
        got = Tokenizer.step_decoder_sessions([pooled[i] for i in members], chunks)
        for g, i, c in zip(got, members, chunks):
            ref = solo[i].push(c)
            assert g.shape == ref.shape
            if ref.size:
                assert maxdiff(g, ref) <= 1e-5
    for p, s in zip(pooled, solo):
        a, b = p.flush(), s.flush()
        assert a.shape == b.shape and (not a.size or maxdiff(a, b) <= 1e-5)
    with pytest.raises(f3stream.PoolFullError):
        [pool.session() for _ in range(2)]
