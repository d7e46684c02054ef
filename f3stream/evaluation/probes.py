"""Linear probes: how much of a label a *linear* read-out of mean-pooled frames recovers.

A multinomial logistic regression with an L2 penalty, fitted by L-BFGS for a fixed number of
iterations on standardised features: no hyper-parameter search, so the same probe compares
representations, latents and log-mel on equal terms. Implemented here (torch) rather than taken
from scikit-learn to keep the dependency list short.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_L2 = 1e-2
DEFAULT_ITERS = 200


@dataclass
class LinearProbe:
    """A fitted probe: standardisation statistics plus weights, over ``classes``."""
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray   # [dim, n_classes]
    bias: np.ndarray     # [n_classes]
    classes: list

    def predict(self, x: np.ndarray) -> list:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        idx = np.argmax(z @ self.weight + self.bias, axis=1)
        return [self.classes[i] for i in idx]

    def accuracy(self, x: np.ndarray, labels: list) -> float:
        pred = self.predict(x)
        return float(np.mean([p == t for p, t in zip(pred, labels)])) if labels else float("nan")


def fit_probe(x: np.ndarray, labels: list, l2: float = DEFAULT_L2,
              iters: int = DEFAULT_ITERS) -> LinearProbe:
    """Fits softmax regression ``labels ~ x`` (``x``: [n, dim]); mean cross-entropy plus
    ``l2/2 * |W|^2``. Deterministic: zero initialisation, full batch."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] != len(labels) or not labels:
        raise ValueError(f"need features [n, dim] and n labels, got {x.shape} and {len(labels)}")
    classes = sorted(set(labels), key=str)
    index = {c: i for i, c in enumerate(classes)}
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    xt = torch.from_numpy((x - mean) / scale)
    yt = torch.tensor([index[c] for c in labels])
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    if len(classes) > 1:
        opt.step(closure)
    return LinearProbe(mean, scale, w.detach().numpy(), b.detach().numpy(), classes)


def chance_accuracy(train_labels: list, test_labels: list) -> float:
    """Accuracy of always answering the most frequent training label (the floor to beat)."""
    if not train_labels or not test_labels:
        return float("nan")
    top = Counter(train_labels).most_common(1)[0][0]
    return float(np.mean([t == top for t in test_labels]))


def alternate_split(keys: list, labels: list) -> tuple[list[int], list[int]]:
    """Per label, alternates its items between probe-train and probe-test (even/odd position in
    the sorted ``keys``), so every label with at least two items appears on both sides.

    Used for voice identity, where the *same* speakers must be in probe-train and probe-test;
    labels with a single item are dropped.
    """
    groups: dict = {}
    for i, (k, lab) in enumerate(zip(keys, labels)):
        groups.setdefault(lab, []).append((k, i))
    train, test = [], []
    for lab in sorted(groups, key=str):
        items = [i for _, i in sorted(groups[lab], key=lambda t: str(t[0]))]
        if len(items) < 2:
            continue
        train += items[0::2]
        test += items[1::2]
    return train, test
