"""`f3stream tokenize`: sharded bulk tokenization of a folder or manifest (f3stream.bulk)."""

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file, save_file

from f3stream.bulk import (BulkError, TokenizedCorpus, load_tokenized, read_shard_meta,
                           shard_name, tokenize_corpus)
from f3stream.cli import main
from f3stream.errors import CheckpointError

GOOD = ["a.flac", "b.wav", "sub/c.wav", "sub/deeper/d.ogg", "sub/e_stereo.wav"]


@pytest.fixture(scope="module")
def ckpt(tiny_tokenizer, tmp_path_factory) -> Path:
    return tiny_tokenizer.save(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Five short readable files (mixed formats, rates, one stereo) and two broken ones."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i, name in enumerate(GOOD):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        sr = 16000 if name == "b.wav" else 24000
        shape = (3000 + 700 * i, 2) if "stereo" in name else (3000 + 700 * i,)
        sf.write(p, rng.uniform(-0.5, 0.5, shape).astype(np.float32), sr)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    (root / "sub" / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not audio: ignored")
    return root


def _run(corpus, out, ckpt, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 3)
    return tokenize_corpus(corpus, out, checkpoint=ckpt, progress=False, **kw)


def _index(out):
    return [json.loads(line) for line in (Path(out) / "index.jsonl").read_text().splitlines()]


def test_folder_outputs_equal_tokenize(tiny_tokenizer, corpus, ckpt, tmp_path):
    s = _run(corpus, tmp_path / "out", ckpt)
    assert (s.files, s.ok, len(s.errors), s.shards, s.shards_computed) == (7, 5, 2, 3, 3)
    assert s.complete
    index = _index(tmp_path / "out")
    assert [e["key"] for e in index] == sorted(GOOD + ["corrupt.wav", "sub/empty.flac"])
    errors = {e["key"]: e["error"] for e in index if "error" in e}
    assert set(errors) == {"corrupt.wav", "sub/empty.flac"}
    assert all(msg for msg in errors.values())

    corpus_out = TokenizedCorpus(tmp_path / "out")
    assert corpus_out.keys() == sorted(GOOD)
    for key in GOOD:
        ref = tiny_tokenizer.encode_file(corpus / key)
        info = sf.info(str(corpus / key))
        got = corpus_out.load(key)
        entry = corpus_out.entry(key)
        assert entry["frames"] == ref.n_frames == got.n_frames
        assert entry["sample_rate"] == info.samplerate
        assert entry["seconds"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)
        assert np.abs(got.latents - ref.latents).max() <= 1e-5
        assert np.abs(got.representations - ref.representations).max() <= 1e-5
        assert got.sample_rate == tiny_tokenizer.sample_rate
    by_path = load_tokenized(tmp_path / "out", str(corpus / "sub" / "c.wav"))
    np.testing.assert_array_equal(by_path.latents, corpus_out.load("sub/c.wav").latents)
    with pytest.raises(BulkError, match="not tokenized"):
        corpus_out.load("corrupt.wav")
    with pytest.raises(BulkError, match="not in"):
        corpus_out.load("missing.wav")


def test_manifest_input_without_representations(tiny_tokenizer, corpus, ckpt, tmp_path):
    rows = [{"path": "sub/c.wav", "text": "c", "speaker": "s1", "split": "train",
             "source": "t"},
            {"path": "a.flac", "text": "a", "speaker": "s2", "split": "val", "source": "t"},
            {"path": "gone.wav", "text": "", "speaker": "s2", "split": "test", "source": "t"}]
    manifest = corpus / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        s = _run(manifest, tmp_path / "out", ckpt, representations=False, shard_size=2)
    finally:
        manifest.unlink()
    assert (s.files, s.ok, s.shards) == (3, 2, 2)
    index = _index(tmp_path / "out")
    assert [e["key"] for e in index] == ["a.flac", "gone.wav", "sub/c.wav"]
    assert "not found" in index[1]["error"]
    got = load_tokenized(tmp_path / "out", "sub/c.wav")
    assert got.representations is None
    ref = tiny_tokenizer.encode_file(corpus / "sub/c.wav").latents
    assert np.abs(got.latents - ref).max() <= 1e-5


def test_two_workers_equal_one(corpus, ckpt, tmp_path):
    _run(corpus, tmp_path / "one", ckpt, workers=1, shard_size=2)
    s = _run(corpus, tmp_path / "two", ckpt, workers=2, shard_size=2)
    assert s.workers == 2 and s.shards_computed == 4
    one, two = TokenizedCorpus(tmp_path / "one"), TokenizedCorpus(tmp_path / "two")
    assert one.entries == two.entries
    for key in one.keys():
        a, b = one.load(key), two.load(key)
        assert np.abs(a.latents - b.latents).max() <= 1e-5
        assert np.abs(a.representations - b.representations).max() <= 1e-5


def test_resume_recomputes_only_what_is_missing(corpus, ckpt, tmp_path):
    out = tmp_path / "out"

    def interrupt(job, entries):
        raise KeyboardInterrupt  # as if Ctrl-C came right after the first shard was written

    with pytest.raises(KeyboardInterrupt):
        _run(corpus, out, ckpt, shard_size=2, on_shard_done=interrupt)
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(0)]
    assert [e["shard"] for e in _index(out)] == [shard_name(0)] * 2  # only complete shards
    assert json.loads((out / "run.json").read_text())["complete"] is False
    first = (out / shard_name(0)).stat().st_mtime_ns
    (out / f".{shard_name(1)}.abc123.tmp.safetensors").write_bytes(b"half")  # a killed write

    s = _run(corpus, out, ckpt, shard_size=2)
    assert (s.shards_skipped, s.shards_computed, s.complete) == (1, 3, True)
    assert (out / shard_name(0)).stat().st_mtime_ns == first
    assert not list(out.glob(".*.tmp*"))
    full = _index(out)
    assert len(full) == 7

    (out / shard_name(2)).unlink()
    s = _run(corpus, out, ckpt, shard_size=2)
    assert (s.shards_skipped, s.shards_computed) == (3, 1)
    assert _index(out) == full

    s = _run(corpus, out, ckpt, shard_size=2)
    assert (s.shards_skipped, s.shards_computed) == (4, 0)

    # A corrupt shard is not trusted: it is recomputed.
    (out / shard_name(3)).write_bytes(b"garbage")
    assert read_shard_meta(out / shard_name(3)) is None
    s = _run(corpus, out, ckpt, shard_size=2)
    assert s.shards_computed == 1 and _index(out) == full


def test_changed_settings_are_refused_unless_overwrite(corpus, ckpt, tmp_path):
    out = tmp_path / "out"
    _run(corpus, out, ckpt, shard_size=4)
    with pytest.raises(BulkError, match="shard_size"):
        _run(corpus, out, ckpt, shard_size=3)
    s = _run(corpus, out, ckpt, shard_size=7, overwrite=True)
    assert s.shards == 1 and sorted(p.name for p in out.glob("shard-*")) == [shard_name(0)]
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    with pytest.raises(BulkError, match="not empty"):
        _run(corpus, other, ckpt)


def test_cli_prints_summary(corpus, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["tokenize", str(corpus), "--out", str(out), "--checkpoint", str(ckpt),
               "--shard-size", "4", "--workers", "1", "--no-representations", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "7 files in 2 shards (2 computed)" in text
    assert "ok 5, errors 2" in text and "corrupt.wav" in text
    assert load_tokenized(out, "a.flac").representations is None

    rc = main(["tokenize", str(tmp_path / "nope"), "--out", str(out), "--checkpoint",
               str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("f3stream: error: input not found") and err.count("\n") == 1


def test_truncated_file_is_an_error_entry(ckpt, tmp_path):
    """Issue 13: a cut-short copy was tokenized without a word, its end silently missing."""
    root = tmp_path / "corpus"
    root.mkdir()
    sf.write(root / "whole.wav", np.zeros(24000, np.float32), 24000)
    (root / "cut.wav").write_bytes((root / "whole.wav").read_bytes()[:1000])
    s = _run(root, tmp_path / "out", ckpt)
    assert s.ok == 1
    errors = {e["key"]: e["error"] for e in s.errors}
    assert list(errors) == ["cut.wav"] and "is truncated" in errors["cut.wav"]


def test_broken_checkpoint_is_one_error_before_any_worker_starts(ckpt, corpus, tmp_path):
    """A config that does not fit its weights (here: edited, in a checkpoint too old to carry
    the config's digest) is refused by the parent, not found by each worker at start-up."""
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    save_file(tensors, str(bad / "model.safetensors"))  # no config digest in its metadata
    meta = json.loads((bad / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((bad / "model.safetensors").read_bytes()).hexdigest()
    meta["config"]["autoencoder"]["model_dim"] = 128
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        _run(corpus, tmp_path / "out", bad, workers=2)
    assert not (tmp_path / "out").exists()


def test_ray_engine_matches_local(corpus, ckpt, tmp_path):
    pytest.importorskip("ray")
    _run(corpus, tmp_path / "local", ckpt, shard_size=4)
    s = _run(corpus, tmp_path / "ray", ckpt, shard_size=4, workers=2, engine="ray")
    assert s.shards_computed == 2 and s.ok == 5
    a, b = TokenizedCorpus(tmp_path / "local"), TokenizedCorpus(tmp_path / "ray")
    assert a.entries == b.entries
    for key in a.keys():
        assert np.abs(a.load(key).latents - b.load(key).latents).max() <= 1e-5


# -- workers die with their parent (issue 13) -------------------------------------------------
def _init_then_wait(checkpoint, queue, parent) -> None:
    """A pool worker's life: the real initializer, then (instead of shards) a long wait."""
    import time

    from f3stream.bulk import _worker_init

    _worker_init(checkpoint, "cpu", "torch", queue, parent)
    queue.put("ready")
    time.sleep(300)


def test_worker_exits_as_soon_as_its_parent_is_gone(ckpt):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    watch, alive = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_init_then_wait, args=(str(ckpt), queue, watch))
    p.start()
    try:
        watch.close()
        assert queue.get(timeout=120) == "ready" and p.is_alive()
        alive.close()  # what the kernel does to the parent's end when the parent dies
        p.join(30)
        assert p.exitcode == 1
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def _descendants(pid: int) -> set[int]:
    """Living (not zombie) processes below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                children.setdefault(int(ppid), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_run_leaves_no_worker_and_resumes_to_identical_shards(ckpt, tmp_path, sig):
    """Issue 13: after kill -9 or SIGTERM of `f3stream tokenize` its forkserver, workers and
    resource tracker lived on and kept writing shards."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "corpus"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        sf.write(root / f"f{i:02d}.wav", rng.uniform(-0.5, 0.5, 24000 * 4).astype(np.float32),
                 24000)

    def command(out):
        return [sys.executable, "-m", "f3stream", "tokenize", str(root), "--out", str(out),
                "--checkpoint", str(ckpt), "--workers", "2", "--shard-size", "1", "--quiet"]

    subprocess.run(command(tmp_path / "ref"), check=True, capture_output=True)

    out = tmp_path / "out"
    proc = subprocess.Popen(command(out), stderr=subprocess.PIPE, start_new_session=True)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("shard-*.safetensors")):  # mid-run: a shard is done
            assert proc.poll() is None and time.monotonic() < deadline
            family |= _descendants(proc.pid)
            time.sleep(0.05)
        family |= _descendants(proc.pid)
        assert len(family) >= 3  # forkserver, two workers (and the resource tracker)
        proc.send_signal(getattr(signal, sig))
        rc = proc.wait(60)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = sorted(p for p in family if _alive(p))
        assert not survivors, f"still running after {sig}: {survivors}"
    finally:
        for p in family | {proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        proc.wait()
    done = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert 0 < len(done) < 40, "the run was not interrupted mid-way"
    time.sleep(1)  # nothing may appear after the workers are gone
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == done
    if sig == "SIGTERM":  # stopped like Ctrl-C: exit 143, complete shards indexed
        assert rc == 143 and b"terminated (SIGTERM)" in proc.stderr.read()
        assert {e["shard"] for e in _index(out)} == set(done)
    else:
        assert rc == -signal.SIGKILL

    subprocess.run(command(out), check=True, capture_output=True)  # resume
    ref = sorted(p.name for p in (tmp_path / "ref").glob("shard-*.safetensors"))
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == ref
    for name in ref + ["index.jsonl"]:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
