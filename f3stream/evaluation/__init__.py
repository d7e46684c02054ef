"""``f3stream eval``: how well a checkpoint reconstructs held-out voices and what its frames encode.

Three questions, each answered on voices the tokenizer was never trained on:

* reconstruction: PESQ (wideband), STOI, log-mel L1 and SI-SDR of decode(encode(x)) against x;
* intelligibility: word error rate of an offline recognizer (pocketsphinx) on x and on the
  reconstruction, so a codec that smears phonemes shows up even where PESQ looks fine;
* understanding: linear probes (spoken content, voice identity) on the representations, the raw
  latents and a log-mel baseline, which says whether the representation encoder adds anything a
  linear read-out of the spectrum does not already give.

Heavy optional dependencies (pesq, pystoi, pocketsphinx, matplotlib) are imported lazily so that
``f3stream --help`` stays fast and the core package works without them.
"""

from .errors import EvalError, MISSING_EXTRA_HINT
from .report import EvalOptions, run_evaluation

__all__ = ["EvalError", "EvalOptions", "MISSING_EXTRA_HINT", "run_evaluation"]
