"""Offline English speech recognition with pocketsphinx (bundled acoustic model, dictionary, LM).

A weak recognizer, but offline and deterministic: what matters here is the *difference* between
its output on the original and on the reconstruction, not its absolute accuracy.
"""

from __future__ import annotations

import numpy as np

from ..audio import resample
from .errors import require

ASR_RATE = 16000  # the bundled en-us acoustic model is a 16 kHz model


class Recognizer:
    """One pocketsphinx decoder, reused across utterances (building one takes ~0.3 s).

    Its cepstral-mean normalisation adapts to every utterance it hears, so a reused decoder
    would transcribe a clip differently depending on what it heard before (measured: an
    original's transcript changed with the reconstructions decoded ahead of it). The feature
    extraction is re-initialised before each utterance, so a transcript depends on its audio
    alone."""

    def __init__(self) -> None:
        ps = require("pocketsphinx", "Speech recognition (WER)")
        self._decoder = ps.Decoder(samprate=ASR_RATE, loglevel="FATAL")

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        """Mono float audio at any rate -> recognised words (lower case, may be empty)."""
        x = resample(np.ascontiguousarray(wav, np.float32), sample_rate, ASR_RATE)
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        d = self._decoder
        d.reinit_feat()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""
