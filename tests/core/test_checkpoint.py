"""Checkpoints: exact round trips, and every broken or unsafe checkpoint is a CheckpointError that
names the problem. Writes are atomic: a failed save never leaves temp files or a silently wrong
checkpoint behind."""

import hashlib
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

import f3stream
import f3stream.checkpoint
import f3stream.tokenizer
from f3stream import CheckpointError, Tokenizer, TokenizerConfig
from f3stream.audio import write_audio
from f3stream.checkpoint import CONFIG_DIGEST_KEY, CONFIG_FILE, WEIGHTS_FILE
from f3stream.fileio import atomic_path

SR = 24000


@pytest.fixture(scope="module")
def wav():
    return (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tiny_tokenizer, tmp_path_factory):
    """A pristine checkpoint of the tiny model; tests copy it before damaging it."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_tokenizer.save(path, info={"trained": False, "note": "tiny"})
    return path


@pytest.fixture
def ckpt(saved, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(saved, path)
    return path


def outputs(tok, wav):
    z = tok.encode(wav)
    return z, tok.represent(z), tok.decode(z)


def edit_meta(path, fn):
    meta = json.loads((path / CONFIG_FILE).read_text())
    fn(meta)
    (path / CONFIG_FILE).write_text(json.dumps(meta))


def rewrite_weights(path, tensors):
    """Writes new weights and a matching checksum, so only the later checks can object."""
    save_file(tensors, str(path / WEIGHTS_FILE))
    digest = hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest()
    edit_meta(path, lambda m: m.update(weights_sha256=digest))


def leftovers(path):
    return sorted(p.name for p in path.iterdir() if p.name not in (CONFIG_FILE, WEIGHTS_FILE))


# -- round trips ---------------------------------------------------------------------------------
def test_round_trip_gives_identical_outputs(tiny_tokenizer, saved, wav):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = f3stream.load(saved)
    assert loaded.config == tiny_tokenizer.config
    assert loaded.info == {"trained": False, "note": "tiny"}
    for a, b in zip(outputs(tiny_tokenizer, wav), outputs(loaded, wav), strict=True):
        np.testing.assert_array_equal(a, b)
    for k, v in tiny_tokenizer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_saved_files_are_world_readable(saved):
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (saved / name).stat().st_mode & 0o777 == 0o644


def test_save_keeps_the_tokenizer_info_by_default(tiny_config, tmp_path):
    tok = Tokenizer.from_config(tiny_config, seed=1)
    tok.info = {"trained": True, "steps": 12}
    tok.save(tmp_path / "c")
    assert f3stream.load(tmp_path / "c").info == {"trained": True, "steps": 12}


def test_float16_round_trip_loads_as_float32_and_stays_close(tiny_tokenizer, tmp_path, wav):
    path = tiny_tokenizer.save(tmp_path / "half", weights_dtype=torch.float16)
    stored = load_file(str(path / WEIGHTS_FILE))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert (path / WEIGHTS_FILE).stat().st_size < 0.55 * sum(
        v.numel() * 4 for v in tiny_tokenizer.model.state_dict().values())
    loaded = f3stream.load(path)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    for k, v in tiny_tokenizer.model.state_dict().items():  # exactly the fp16-rounded weights
        assert torch.equal(loaded.model.state_dict()[k], v.half().float()), k
    for a, b in zip(outputs(tiny_tokenizer, wav), outputs(loaded, wav), strict=True):
        assert a.shape == b.shape
        scale = np.abs(a).max()
        assert np.abs(a - b).max() <= 1e-2 * scale
        assert not np.array_equal(a, b)  # the fp16 rounding did happen


def test_bundled_checkpoint_loads(wav):
    tok = f3stream.load()
    assert tok.info.get("trained") is True and tok.info["stage0_steps"] > 0
    # the default inference architecture plus the encoder's level input and the decoder's
    # harmonic source (both off by default so checkpoints saved before them still load), a
    # decoder grown to 8 ConvNeXt blocks and the training noise at gamma 0.3
    # (training/configs/real_cpu_deep03_level_harm10_nocx_tf.json); the training-only RQ
    # codebook was 1024 codes (the CPU configs), which changes no inference weight
    ae = tok.config.autoencoder
    assert (ae.level_feature, ae.harmonic_source, ae.decoder_conv_blocks, ae.noise_gamma) == \
        (True, True, 8, 0.3)
    assert replace(ae, level_feature=False, harmonic_source=False, decoder_conv_blocks=4,
                   noise_gamma=1.0) == TokenizerConfig().autoencoder
    assert replace(tok.config.representation, rq_codebook_size=8192) == \
        TokenizerConfig().representation
    assert tok.encode(wav).shape == (25, 64)
    assert tok.model.training is False


# -- broken checkpoints --------------------------------------------------------------------------
def test_checkpoint_error_is_an_f3stream_error():
    assert issubclass(CheckpointError, f3stream.F3StreamError)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        f3stream.load(tmp_path / "does-not-exist")


def test_file_instead_of_directory(ckpt):
    with pytest.raises(CheckpointError, match=r"is not a checkpoint directory.*config\.json"):
        f3stream.load(ckpt / CONFIG_FILE)


def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        f3stream.load(tmp_path)


def test_directory_without_config(ckpt):
    (ckpt / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json: not an f3stream checkpoint"):
        f3stream.load(ckpt)


@pytest.mark.parametrize("text", ['{"format": "f3stream-checkpoint", ', "", "\udcff"])
def test_invalid_json_config(ckpt, text):
    (ckpt / CONFIG_FILE).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON.*corrupt"):
        f3stream.load(ckpt)


@pytest.mark.parametrize("text", ["[1, 2]", '{"format": "something-else", "format_version": 1}'])
def test_json_that_is_not_a_checkpoint_config(ckpt, text):
    (ckpt / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match="is not an f3stream checkpoint config"):
        f3stream.load(ckpt)


def test_config_with_unknown_key(ckpt):
    edit_meta(ckpt, lambda m: m["config"]["autoencoder"].update(modeldim=64))
    with pytest.raises(CheckpointError, match=r"invalid config: unknown AutoencoderConfig keys: "
                                              r"\['modeldim'\]"):
        f3stream.load(ckpt)


def test_config_with_unknown_section(ckpt):
    edit_meta(ckpt, lambda m: m["config"].update(decoder={}))
    with pytest.raises(CheckpointError, match=r"unknown config sections: \['decoder'\]"):
        f3stream.load(ckpt)


@pytest.mark.parametrize("section,key,value,expected", [
    ("autoencoder", "model_dim", "64", "int"),
    ("autoencoder", "model_dim", 64.0, "int"),
    ("autoencoder", "model_dim", None, "int"),
    ("autoencoder", "normalize_latents", 1, "bool"),
    ("representation", "layers", True, "int"),
    ("autoencoder", "noise_gamma", "1.0", "float"),
])
def test_config_with_wrong_type(ckpt, section, key, value, expected):
    edit_meta(ckpt, lambda m: m["config"][section].update({key: value}))
    cls = "AutoencoderConfig" if section == "autoencoder" else "RepresentationConfig"
    with pytest.raises(CheckpointError, match=rf"invalid config: {cls}\.{key} must be "
                                              rf"{expected}, got {value!r}"):
        f3stream.load(ckpt)


def test_config_section_that_is_not_an_object(ckpt):
    edit_meta(ckpt, lambda m: m["config"].update(autoencoder=[1]))
    with pytest.raises(CheckpointError, match="AutoencoderConfig must be a JSON object"):
        f3stream.load(ckpt)


def test_inconsistent_config(ckpt):
    edit_meta(ckpt, lambda m: m["config"]["autoencoder"].update(frame_rate=7))
    with pytest.raises(CheckpointError, match="invalid config: frame_rate 7 must divide"):
        f3stream.load(ckpt)


def test_zero_heads_in_config(ckpt):
    edit_meta(ckpt, lambda m: m["config"]["autoencoder"].update(n_heads=0))
    with pytest.raises(CheckpointError, match="n_heads"):
        f3stream.load(ckpt)


@pytest.mark.parametrize("version,shown", [(999, "999"), ("1", "'1'"), (None, "None")])
def test_unsupported_format_version(ckpt, version, shown):
    edit_meta(ckpt, lambda m: m.update(format_version=version))
    with pytest.raises(CheckpointError) as exc:
        f3stream.load(ckpt)
    assert str(exc.value) == (f"checkpoint format version {shown} is not supported "
                              "(this f3stream reads version 1)")


def test_truncated_weights_fail_the_checksum(ckpt):
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the checksum"):
        f3stream.load(ckpt)


def test_truncated_weights_without_checksum_are_unreadable(ckpt):
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])
    edit_meta(ckpt, lambda m: m.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors"):
        f3stream.load(ckpt)


def test_weights_swapped_for_another_models_fail_the_checksum(ckpt, tiny_config, tmp_path):
    other = Tokenizer.from_config(tiny_config, seed=5).save(tmp_path / "other")
    shutil.copy(other / WEIGHTS_FILE, ckpt / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="checksum.*corrupt or was half-replaced"):
        f3stream.load(ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf(ckpt, bad):
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    key = "decoder.input_proj.weight"
    tensors[key][3, 7] = bad
    rewrite_weights(ckpt, tensors)
    with pytest.raises(CheckpointError, match=rf"weight {key} contains NaN or Inf"):
        f3stream.load(ckpt)


def test_weights_with_integer_dtype(ckpt):
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    key = "decoder.input_proj.bias"
    tensors[key] = tensors[key].to(torch.int32)
    rewrite_weights(ckpt, tensors)
    with pytest.raises(CheckpointError, match=rf"weight {key} has non-float dtype"):
        f3stream.load(ckpt)


def without_config_digest(path):
    """As a checkpoint saved before the weights recorded their config's digest (the bundled
    one): only the shape check then stands between an edited config and the model."""
    rewrite_weights(path, load_file(str(path / WEIGHTS_FILE)))
    assert (safe_open_metadata(path) or {}).get(CONFIG_DIGEST_KEY) is None


def safe_open_metadata(path):
    with safetensors.safe_open(str(path / WEIGHTS_FILE), framework="np") as f:
        return f.metadata()


def test_weights_that_do_not_match_the_config_shapes(ckpt, monkeypatch):
    # only the config changes: the weights (and so their checksum) are still the saved ones
    without_config_digest(ckpt)
    edit_meta(ckpt, lambda m: m["config"]["autoencoder"].update(model_dim=4096))

    def no_model(*a, **k):
        raise AssertionError("the model was built before the shapes were checked")

    monkeypatch.setattr(f3stream.tokenizer, "F3Model", no_model)
    with pytest.raises(CheckpointError) as exc:
        f3stream.load(ckpt)
    msg = str(exc.value)
    assert "weights do not match the config" in msg
    assert "shape mismatch" in msg
    assert "decoder.input_proj.weight: checkpoint (64, 64) vs config (4096, 64)" in msg
    assert "more)" in msg  # the list is capped, with a count of the rest
    assert "missing" not in msg and "unexpected" not in msg


@pytest.mark.parametrize("section,key,value", [
    ("autoencoder", "model_dim", 10 ** 7),        # issue 13: 19.9 GB, then a torch traceback
    ("autoencoder", "encoder_layers", 10 ** 6),
    ("autoencoder", "n_fft", 2 ** 30),
    ("autoencoder", "conv_channels", -4),
    ("autoencoder", "decoder_conv_blocks", -1),
    ("representation", "rq_codebook_size", 10 ** 9),
    ("representation", "output_dim", 10 ** 8),
])
def test_absurd_dimensions_are_refused_before_anything_is_allocated(ckpt, section, key, value):
    edit_meta(ckpt, lambda m: m["config"][section].update({key: value}))
    with pytest.raises(CheckpointError, match=rf"invalid config: (representation )?{key} "
                                              rf"{value} is out of range \[-?\d+, \d+\]"):
        f3stream.load(ckpt)


def test_absurd_config_is_one_line_and_exit_2_on_the_command_line(ckpt, wav, tmp_path, capsys):
    edit_meta(ckpt, lambda m: m["config"]["autoencoder"].update(model_dim=10 ** 7))
    from f3stream.cli import main

    write_audio(tmp_path / "in.wav", wav, SR)
    for argv in (["info", "--checkpoint", str(ckpt)],
                 ["encode", str(tmp_path / "in.wav"), "--checkpoint", str(ckpt)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("f3stream: error: ") and err.count("\n") == 1
        assert "model_dim 10000000 is out of range" in err


@pytest.mark.parametrize("edit", [
    lambda c: c["autoencoder"].update(attention_window=7),     # same shapes, other model
    lambda c: c["representation"].update(model_dim=128),      # other shapes
])
def test_config_edited_after_saving_is_refused(ckpt, edit):
    assert safe_open_metadata(ckpt)[CONFIG_DIGEST_KEY]
    edit_meta(ckpt, lambda m: edit(m["config"]))
    with pytest.raises(CheckpointError, match=r"config in .*config\.json is not the one "
                                              r"model\.safetensors was saved with"):
        f3stream.load(ckpt)


def test_config_digest_does_not_depend_on_key_order(ckpt, tiny_tokenizer):
    edit_meta(ckpt, lambda m: m.update(config={k: dict(reversed(v.items()))
                                               for k, v in reversed(m["config"].items())}))
    assert f3stream.load(ckpt).config == tiny_tokenizer.config


def test_weights_with_missing_and_unexpected_keys(ckpt):
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    tensors["decoder.input_proj.weigth"] = tensors.pop("decoder.input_proj.weight")
    del tensors["encoder.out_proj.bias"]
    rewrite_weights(ckpt, tensors)
    with pytest.raises(CheckpointError) as exc:
        f3stream.load(ckpt)
    msg = str(exc.value)
    assert "missing: decoder.input_proj.weight, encoder.out_proj.bias" in msg
    assert "unexpected: decoder.input_proj.weigth" in msg


def test_directory_with_only_pickle_weights(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    torch.save({"w": torch.zeros(3)}, path / "model.pt")
    with pytest.raises(CheckpointError, match=r"holds only pickle weights \['model\.pt'\].*"
                                              "arbitrary code"):
        f3stream.load(path)


@pytest.mark.parametrize("name", ["model.pt", "model.ckpt", "model.bin"])
@pytest.mark.parametrize("exists", [True, False])
def test_pickle_paths_are_refused(tmp_path, name, exists):
    path = tmp_path / name
    if exists:
        torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused.*arbitrary code"):
        f3stream.load(path)


def test_pickle_weights_file_is_never_unpickled(tmp_path, monkeypatch):
    path = tmp_path / "evil"
    path.mkdir()
    (path / "model.pt").write_bytes(b"not even a pickle")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(CheckpointError):
        f3stream.load(path)
    with pytest.raises(CheckpointError):
        f3stream.load(path / "model.pt")
    assert calls == []


def test_save_onto_a_file_is_refused(tiny_tokenizer, tmp_path):
    target = tmp_path / "taken"
    target.write_text("precious")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        tiny_tokenizer.save(target)
    assert target.read_text() == "precious"


# -- atomic writes -------------------------------------------------------------------------------
def test_failed_weights_write_keeps_the_previous_checkpoint(ckpt, tiny_config, monkeypatch, wav):
    before = outputs(f3stream.load(ckpt), wav)
    config_before = (ckpt / CONFIG_FILE).read_bytes()
    tmp_seen = []

    def failing_save_file(tensors, filename, metadata=None):
        tmp_seen.append(filename)
        with open(filename, "wb") as f:
            f.write(b"\x00" * 1000)  # half-written
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    other = Tokenizer.from_config(tiny_config, seed=7)
    with pytest.raises(OSError, match="No space left"):
        other.save(ckpt)
    assert len(tmp_seen) == 1
    assert os.path.dirname(tmp_seen[0]) == str(ckpt)  # written beside the target...
    assert not os.path.exists(tmp_seen[0])            # ...and removed on failure
    assert leftovers(ckpt) == []
    assert (ckpt / CONFIG_FILE).read_bytes() == config_before
    monkeypatch.undo()
    for a, b in zip(before, outputs(f3stream.load(ckpt), wav), strict=True):
        np.testing.assert_array_equal(a, b)


def test_failed_config_write_is_detected_not_loaded_silently(ckpt, tiny_config, monkeypatch):
    """Weights and config are replaced one after the other; if the second write fails the
    directory holds new weights with the old config, which the checksum must catch."""

    def failing_write(path, data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[:10])
            raise OSError("disk full")

    monkeypatch.setattr(f3stream.checkpoint, "atomic_write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        Tokenizer.from_config(tiny_config, seed=8).save(ckpt)
    assert leftovers(ckpt) == []
    with pytest.raises(CheckpointError, match="checksum.*half-replaced"):
        f3stream.load(ckpt)


def test_save_over_an_existing_checkpoint_replaces_it(ckpt, tiny_config, wav):
    other = Tokenizer.from_config(tiny_config, seed=9)
    other.save(ckpt, info={"trained": True})
    loaded = f3stream.load(ckpt)
    assert loaded.info == {"trained": True}
    np.testing.assert_array_equal(loaded.encode(wav), other.encode(wav))
    assert leftovers(ckpt) == []


def test_atomic_path_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the parent is created too
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"first")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"first"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"second")
        assert target.read_bytes() == b"first"
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_leaves_no_temp_file_on_exception(tmp_path, exc_type):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(exc_type):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            assert tmp.exists()
            raise exc_type("boom")
    assert not tmp.exists()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_failure_without_a_previous_file(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_write_audio_is_atomic_and_clips(tmp_path):
    import soundfile as sf

    path = tmp_path / "out.wav"
    write_audio(path, np.array([0.0, 0.5, 2.0, -3.0], np.float32), SR)
    data, sr = sf.read(path, dtype="float32")
    assert sr == SR
    np.testing.assert_allclose(data, [0.0, 0.5, 32767 / 32768, -1.0], atol=1 / 32768)
    with pytest.raises(ValueError, match="Unknown format"):
        write_audio(tmp_path / "out.notaformat", np.zeros(10, np.float32), SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_config_fields_added_later_keep_older_digests():
    """A field added to the config after checkpoints carried a digest does not change the
    digest at its default (the bundled checkpoint was saved before ``harmonic_source``), and
    does at any other value."""
    import hashlib
    import json
    from dataclasses import replace

    from f3stream.checkpoint import config_digest
    from f3stream.config import TokenizerConfig

    cfg = TokenizerConfig()
    old = cfg.to_dict()
    del old["autoencoder"]["harmonic_source"]
    assert config_digest(cfg) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()
                                                ).hexdigest()
    harmonic = replace(cfg, autoencoder=replace(cfg.autoencoder, harmonic_source=True))
    assert config_digest(harmonic) != config_digest(cfg)


def test_info_says_whether_the_decoder_has_a_harmonic_source(capsys, tiny_tokenizer, tmp_path):
    from f3stream.cli import main

    assert main(["info"]) == 0                      # the bundled checkpoint has one
    assert "harmonic source (pitch head + oscillator)" in capsys.readouterr().out
    tiny_tokenizer.save(tmp_path / "tiny")
    assert main(["info", "--checkpoint", str(tmp_path / "tiny")]) == 0
    assert "no harmonic source" in capsys.readouterr().out
