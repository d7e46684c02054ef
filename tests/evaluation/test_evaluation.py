"""The evaluation tool: metrics on known cases, the linear probe on toy problems, clip selection,
and an end-to-end `f3stream eval` on a tiny manifest made here (espeak-ng, or tones without it)."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from f3stream.evaluation import EvalError
from f3stream.manifest import ManifestError
from f3stream.evaluation.clips import EvalClip, alsa_clips, folder_clips, read_manifest, subsample
from f3stream.evaluation.metrics import (corpus_wer, edit_distance, log_mel, log_mel_l1,
                                         mel_filterbank, normalize_words, pesq_wb, si_sdr, stoi,
                                         wer)
from f3stream.evaluation.probes import alternate_split, chance_accuracy, fit_probe
from f3stream.evaluation.tasks import CONTENT_TASKS, content_split, first_word, letter_label

SR = 24000


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of a gliding pitch under a syllabic envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * seed
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 15))
    env = 0.5 * (1 - np.cos(2 * np.pi * 3 * t)) + 0.05
    return (0.2 * x * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


# -- signal metrics ----------------------------------------------------------------------------
def test_si_sdr_scaled_copy_is_huge_and_noise_is_low():
    x = speechlike(1.0)
    assert si_sdr(x, 0.3 * x) > 80
    assert si_sdr(x, x) == 100.0  # capped, not +inf
    assert si_sdr(x, x + 0.001 * np.random.default_rng(1).standard_normal(x.size)) > 30
    noise = np.random.default_rng(2).standard_normal(x.size).astype(np.float32)
    assert si_sdr(x, noise) < -20
    assert math.isnan(si_sdr(np.zeros(100), np.ones(100)))  # silent reference: undefined


def test_log_mel_distance_is_zero_for_identity_and_grows_with_distortion():
    x = speechlike(0.5)
    fb = mel_filterbank(SR)
    assert fb.shape == (100, 513) and (fb.sum(axis=1) > 0).all()
    assert log_mel(x, SR).shape == (x.size // 256 + 1, 100)
    assert log_mel_l1(x, x, SR) == 0.0
    small = log_mel_l1(x, x + 0.01 * speechlike(0.5, seed=3), SR)
    large = log_mel_l1(x, np.random.default_rng(0).standard_normal(x.size) * 0.2, SR)
    assert 0 < small < large


def test_pesq_and_stoi_of_identical_signals_are_near_max_and_short_clips_are_skipped():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    x = speechlike(2.0)
    assert pesq_wb(x, x, SR) > 4.4
    assert stoi(x, x, SR) > 0.99
    noisy = x + 0.2 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    assert pesq_wb(x, noisy, SR) < pesq_wb(x, x, SR)
    assert stoi(x, noisy, SR) < 0.99
    short = x[:int(0.2 * SR)]
    assert pesq_wb(short, short, SR) is None
    assert stoi(short, short, SR) is None


# -- word error rate ---------------------------------------------------------------------------
def test_wer_known_cases():
    assert wer("Yes, here we are!", "yes here we are") == 0.0
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)   # insertion
    assert wer("the cat sat", "the cat") == pytest.approx(1 / 3)            # deletion
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)        # substitution
    assert wer("a b", "c d e f") == 2.0                                     # can exceed 1
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert normalize_words("It's A-OK, Q: why?") == ["it's", "a", "ok", "q", "why"]
    with pytest.raises(ValueError):
        wer("", "anything")


def test_corpus_wer_pools_edits_and_skips_empty_references():
    value, used, skipped = corpus_wer([("one two three", "one two three"), ("four", "five"),
                                       ("", "noise")])
    assert value == pytest.approx(1 / 4) and used == 2 and skipped == 1


# -- probes ------------------------------------------------------------------------------------
def test_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 4
    labels = [f"c{i % 4}" for i in range(200)]
    x = np.stack([centers[i % 4] + rng.standard_normal(16) for i in range(200)])
    probe = fit_probe(x[:100], labels[:100])
    assert probe.accuracy(x[100:], labels[100:]) == 1.0


def test_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 20))
    labels = [int(v) for v in rng.integers(0, 4, 400)]
    probe = fit_probe(x[:200], labels[:200])
    assert abs(probe.accuracy(x[200:], labels[200:]) - 0.25) < 0.12
    assert 0.15 < chance_accuracy(labels[:200], labels[200:]) < 0.4


def test_alternate_split_puts_every_speaker_on_both_sides():
    keys = [f"f{i}" for i in range(8)]
    speakers = ["a", "a", "a", "b", "b", "c", "c", "d"]  # d has a single clip: dropped
    train, test = alternate_split(keys, speakers)
    assert {speakers[i] for i in train} == {speakers[i] for i in test} == {"a", "b", "c"}
    assert not set(train) & set(test)


def test_content_tasks_label_letters_and_sentence_openings():
    assert letter_label(EvalClip("x", "B")) == "b"
    assert letter_label(EvalClip("x", "Б")) is None and letter_label(EvalClip("x", "BA")) is None
    assert first_word(EvalClip("x", "You will go far.")) == "you"
    assert first_word(EvalClip("x", "Hi there")) is None
    train = [EvalClip(f"t{i}", t, "s1", "train") for i, t in enumerate("AABBCC")]
    test = [EvalClip("u1", "A", "s2"), EvalClip("u2", "Z", "s2")]
    tr, te = content_split(CONTENT_TASKS[0], train, test)
    assert {lab for _, lab in tr} == {"a"} and [lab for _, lab in te] == ["a"]


# -- clip selection ----------------------------------------------------------------------------
def test_manifest_reader_and_errors(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.wav", "text": "hi", "speaker": "s", "split": "test", '
                 '"source": "x"}\n\n{"path": "/abs/b.wav", "split": "train"}\n')
    clips = read_manifest(m)
    assert clips[0].path == str(tmp_path / "a.wav") and clips[1].speaker == "unknown"
    assert [c.path for c in read_manifest(m, "train")] == ["/abs/b.wav"]
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")
    m.write_text('{"path": "a.wav", "split": "dev"}\n')
    with pytest.raises(ManifestError, match="split must be one of"):
        read_manifest(m)


def test_subsample_covers_every_source():
    clips = ([EvalClip(f"s{i}", speaker=f"v{i % 5}", source="synthetic") for i in range(50)]
             + [EvalClip(f"r{i}", speaker="h", source="real") for i in range(3)])
    got = subsample(clips, 6)
    assert len(got) == 6 and {c.source for c in got} == {"synthetic", "real"}
    assert subsample(clips, 6) == got and subsample(clips, None) == clips


def test_folder_and_alsa_style_clips(tmp_path):
    for name in ("Front_Left.wav", "Noise.wav"):
        sf.write(tmp_path / name, speechlike(0.3), SR)
    (tmp_path / "Front_Left.txt").write_text("front left\n")
    assert [c.text for c in folder_clips(tmp_path)] == ["front left", ""]
    assert [c.text for c in alsa_clips(tmp_path)] == ["front left", ""]
    with pytest.raises(EvalError, match="alsa-utils"):
        alsa_clips(tmp_path / "nowhere")


# -- end to end --------------------------------------------------------------------------------
def _make_corpus(root):
    """Two train voices and two test voices, each saying three letters and three sentences."""
    letters = ["A", "B", "C"]
    sentences = ["You will go far today.", "The sun is out.", "You can do it now."]
    voices = {"en-us+m1": "train", "en-us+f2": "train", "en-gb+m3": "test", "en-gb+f3": "test"}
    have_espeak = shutil.which("espeak-ng") is not None
    lines = []
    for v, (voice, split) in enumerate(voices.items()):
        for i, text in enumerate(letters + sentences):
            path = root / voice / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            if have_espeak:
                subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True,
                               capture_output=True)
            else:
                sf.write(path, speechlike(0.6 + 0.3 * len(text.split()), seed=v * 10 + i), SR)
            lines.append(json.dumps({"path": f"{voice}/{i}.wav", "text": text,
                                     "speaker": voice, "split": split,
                                     "source": "espeak-ng" if v % 2 else "real"}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_eval_cli_end_to_end(tmp_path, tiny_config, capsys):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    pytest.importorskip("matplotlib")
    has_asr = True
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        has_asr = False
    from f3stream import Tokenizer
    from f3stream.cli import main

    ckpt = tmp_path / "ckpt"
    Tokenizer.from_config(tiny_config, seed=0).save(ckpt, {"trained": False})
    manifest = _make_corpus(tmp_path / "corpus")
    out = tmp_path / "report"
    argv = ["eval", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--split", "test",
            "--out", str(out), "--max-clips", "4", "--quiet"] + ([] if has_asr else ["--no-asr"])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and "linear probes" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["clips_evaluated"] == 4 and report["clips_available"] == 12
    assert {c["source"] for c in report["clips"]} == {"real", "espeak-ng"}
    rec = report["reconstruction"]
    assert set(rec) == {"real", "espeak-ng", "all"}
    assert rec["all"]["mel_l1"]["n"] == 4 and rec["all"]["si_sdr"]["mean"] is not None
    if has_asr:
        assert "note" in report["intelligibility"]
        assert set(report["intelligibility"]["per_source"]) == set(rec)
    tasks = report["probes"]["tasks"]
    assert set(tasks) == {"content_letter", "content_first_word", "speaker_identity"}
    for t in tasks.values():
        assert set(t["accuracy"]) == {"representations", "latents", "log_mel"}
        assert all(0.0 <= a <= 1.0 for a in t["accuracy"].values())
    assert tasks["speaker_identity"]["n_classes"] == 2
    assert tasks["content_letter"]["test_speakers"] == 2
    for name in ("reconstruction.png", "latents.png", "representations.png", "probes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp*"))  # atomic writes left no temporary files


def test_eval_cli_reports_a_missing_manifest(tmp_path, capsys):
    from f3stream.cli import main

    assert main(["eval", "--manifest", str(tmp_path / "nope.jsonl"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("f3stream: error: manifest not found")


def test_eval_cli_on_a_folder_without_probes(tmp_path, tiny_config):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    pytest.importorskip("matplotlib")
    from f3stream import Tokenizer
    from f3stream.cli import main

    ckpt = tmp_path / "ckpt"
    Tokenizer.from_config(tiny_config, seed=0).save(ckpt, {"trained": False})
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "long.wav", speechlike(1.0), 16000)       # resampled to 24 kHz on load
    sf.write(audio / "short.flac", speechlike(0.1, seed=1), SR)  # too short for PESQ/STOI
    (audio / "long.txt").write_text("hello world")
    (audio / "broken.wav").write_bytes(b"RIFF not really")            # reported, not fatal
    out = tmp_path / "report"
    assert main(["eval", "--checkpoint", str(ckpt), "--audio-dir", str(audio), "--out", str(out),
                 "--asr-sources", "no-such-source", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "folder" and "probes" not in report
    assert list(report["unreadable_clips"]) == [str(audio / "broken.wav")]
    assert report["intelligibility"]["per_source"] == {}   # ASR restricted to another source
    folder = report["reconstruction"]["folder"]
    assert folder["clips"] == 2 and folder["pesq_wb"]["skipped"] == 1
    assert folder["stoi"]["skipped"] == 1 and folder["mel_l1"]["n"] == 2
    assert (out / "reconstruction.png").is_file() and not (out / "probes.png").exists()


class _IdentityCodec:
    """A perfect "codec" (latents are the samples themselves) for checking that the evaluation
    pipeline aligns and scores a flawless reconstruction at the ceiling."""
    sample_rate, frame_rate, hop_length = SR, 25, 960
    latent_dim, representation_dim = 960, 8

    def tokenize(self, wav, representations=True):
        from f3stream.frames import EncodedFrames
        pad = (-wav.size) % self.hop_length
        z = np.concatenate([wav, np.zeros(pad, np.float32)]).reshape(-1, self.hop_length)
        return EncodedFrames(0, z, z[:, :self.representation_dim].copy())

    def decode(self, latents):
        return latents.reshape(-1)


def test_a_perfect_codec_scores_at_the_ceiling(tmp_path):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    from f3stream.evaluation import EvalOptions, run_evaluation

    path = tmp_path / "a.wav"
    sf.write(path, speechlike(1.3), SR, subtype="FLOAT")
    report = run_evaluation(_IdentityCodec(), EvalOptions(
        clips=[EvalClip(str(path), "", "s", "test", "x")], out=tmp_path / "r", asr=False,
        plots=False, progress=False))
    r = report["reconstruction"]["x"]
    assert r["pesq_wb"]["mean"] > 4.4 and r["stoi"]["mean"] > 0.99
    assert r["mel_l1"]["mean"] == 0.0
    assert r["si_sdr"]["mean"] == 100.0  # the cap


def test_missing_optional_package_names_the_extra():
    from f3stream.evaluation.errors import require

    with pytest.raises(EvalError, match=r"pip install 'f3stream\[eval\]'"):
        require("surely_not_an_installed_module_f3", "Something")


def test_the_eval_parser_imports_nothing_heavy_and_not_training():
    code = ("import sys, argparse; from f3stream.evaluation.cli import register; "
            "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
            "bad = [m for m in ('pesq', 'pystoi', 'pocketsphinx', 'matplotlib', 'training') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_level_and_highs_metrics():
    from f3stream.evaluation.metrics import band_level_change_db, level_change_db

    rng = np.random.default_rng(0)
    x = rng.standard_normal(24000).astype(np.float32) * 0.1
    assert level_change_db(x, x * 0.5) == pytest.approx(-6.02, abs=0.01)
    assert level_change_db(np.zeros(100), x[:100]) is None
    low = np.fft.irfft(np.fft.rfft(x) * (np.fft.rfftfreq(x.size, 1 / 24000) < 6000), x.size)
    assert band_level_change_db(x, x, 24000, 6000, 12000) == pytest.approx(0.0, abs=1e-6)
    assert band_level_change_db(x, low, 24000, 6000, 12000) < -60      # highs cut
    assert band_level_change_db(low, low, 24000, 6000, 12000) is None  # nothing there to keep


@pytest.mark.parametrize("name,words", [("Front_Right", "front right"),
                                        ("Side_Right", "side right")])
def test_recognizer_transcribes_real_english(name, words):
    """The WER figures rest on pocketsphinx hearing real speech: two alsa-utils prompts come
    back word for word (deterministic decoder), and their noise-only counterpart does not."""
    pytest.importorskip("pocketsphinx")
    from f3stream.audio import load_audio
    from f3stream.evaluation.asr import Recognizer
    from f3stream.evaluation.metrics import wer

    path = f"/usr/share/sounds/alsa/{name}.wav"
    if not Path(path).is_file():
        pytest.skip("apt-get install alsa-utils")
    wav, _ = load_audio(path, 24000)
    rec = Recognizer()
    assert rec.transcribe(wav, 24000) == words
    assert wer(words, rec.transcribe(wav, 24000)) == 0.0
    noise = np.random.default_rng(0).standard_normal(wav.size).astype(np.float32) * 0.05
    assert rec.transcribe(noise, 24000) != words


def test_recognizer_transcript_does_not_depend_on_what_it_heard_before():
    """The eval decodes originals and reconstructions with one reused decoder; pocketsphinx
    adapts its cepstral mean to every utterance, which changed an original's transcript with
    the reconstructions heard before it. A clip must leave the decoder in the same state
    whatever came first (this failed before the decoder was reset per utterance)."""
    pytest.importorskip("pocketsphinx")
    from f3stream.audio import load_audio
    from f3stream.evaluation.asr import Recognizer

    if not Path("/usr/share/sounds/alsa/Rear_Right.wav").is_file():
        pytest.skip("apt-get install alsa-utils")
    target, _ = load_audio("/usr/share/sounds/alsa/Rear_Right.wav", 24000)
    other, _ = load_audio("/usr/share/sounds/alsa/Front_Center.wav", 24000)
    fresh = Recognizer()
    heard_fresh = fresh.transcribe(target, 24000)
    cmn_fresh = fresh._decoder.get_cmn()
    used = Recognizer()
    used.transcribe(other * 0.05, 24000)
    used.transcribe(other, 24000)
    assert used.transcribe(target, 24000) == heard_fresh
    assert used._decoder.get_cmn() == cmn_fresh
