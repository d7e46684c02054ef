"""The probe tasks: which labels are read from which clips, and how probe train/test are split.

Spoken content must generalise to *unseen voices*, so its probe trains on train-split speakers
and tests on evaluation-split speakers. Voice identity cannot (an unseen speaker has no class),
so it splits the clips of the evaluation speakers instead (alternating per speaker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .clips import EvalClip
from .metrics import normalize_words

FIRST_WORD_CLASSES = 5   # the most frequent sentence openings in the probe-train pool
MIN_TRAIN_PER_CLASS = 2


def letter_label(clip: EvalClip) -> str | None:
    """A Latin letter A-Z spoken on its own (klettres alphabet recordings), else None.

    Letter names differ across the recorded languages, so this asks whether the features carry
    *what was said* in a way a linear map can share across voices and languages.
    """
    words = normalize_words(clip.text)
    if len(words) == 1 and len(words[0]) == 1 and "a" <= words[0] <= "z":
        return words[0]
    return None


def first_word(clip: EvalClip) -> str | None:
    """The first word of a sentence of three or more words (the espeak-ng prompts)."""
    words = normalize_words(clip.text)
    return words[0] if len(words) >= 3 else None


@dataclass(frozen=True)
class ContentTask:
    name: str
    description: str
    label: Callable[[EvalClip], str | None]
    top_k: int | None = None  # keep only the k most frequent probe-train labels


CONTENT_TASKS = (
    ContentTask("content_letter",
                "which Latin letter (A-Z) was spoken, klettres-data recordings; probe trained "
                "on train-split voices, tested on evaluation-split voices (other languages)",
                letter_label),
    ContentTask("content_first_word",
                f"first word of the sentence among the {FIRST_WORD_CLASSES} most frequent "
                "openings ('you', 'q', 'a', ...), espeak-ng sentences; probe trained on "
                "train-split voices, tested on evaluation-split voices",
                first_word, FIRST_WORD_CLASSES),
)

SPEAKER_TASK_DESCRIPTION = ("voice identity among the evaluation-split speakers; each "
                            "speaker's clips alternate between probe-train and probe-test "
                            "(the same speakers on both sides, different clips)")


def content_split(task: ContentTask, train_pool: list[EvalClip], test_pool: list[EvalClip]
                  ) -> tuple[list[tuple[EvalClip, str]], list[tuple[EvalClip, str]]]:
    """Labelled (clip, label) pairs for probe-train and probe-test, restricted to classes with at
    least two training examples and one test example."""
    train = [(c, lab) for c in train_pool if (lab := task.label(c)) is not None]
    test = [(c, lab) for c in test_pool if (lab := task.label(c)) is not None]
    counts = Counter(lab for _, lab in train)
    keep = {lab for lab, n in counts.items() if n >= MIN_TRAIN_PER_CLASS}
    if task.top_k is not None:
        keep = {lab for lab, _ in counts.most_common(task.top_k)} & keep
    keep &= {lab for _, lab in test}
    return ([(c, lab) for c, lab in train if lab in keep],
            [(c, lab) for c, lab in test if lab in keep])
