"""PNG figures for the report (matplotlib, Agg backend: no display needed, safe on servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from .errors import require
from .metrics import MEL_HOP, log_mel


def _pyplot():
    mpl = require("matplotlib", "Plots")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_reconstruction(path: Path, original: np.ndarray, reconstruction: np.ndarray,
                        sample_rate: int, title: str) -> Path:
    """Waveforms and log-mel spectrograms of one clip, original above reconstruction, on the same
    colour scale so that missing high bands or smearing are visible at a glance."""
    plt = _pyplot()
    n = min(original.size, reconstruction.size)
    t = np.arange(n) / sample_rate
    mels = [log_mel(x[:n], sample_rate) for x in (original, reconstruction)]
    lo, hi = min(m.min() for m in mels), max(m.max() for m in mels)
    fig, axes = plt.subplots(2, 2, figsize=(12, 6), sharex="col")
    for col, (name, x, m) in enumerate(zip(("original", "reconstruction"),
                                           (original, reconstruction), mels)):
        axes[0, col].plot(t, x[:n], lw=0.5)
        axes[0, col].set_title(f"{name}: waveform")
        axes[0, col].set_ylim(-1, 1)
        axes[1, col].imshow(m.T, origin="lower", aspect="auto", vmin=lo, vmax=hi,
                            extent=(0, m.shape[0] * MEL_HOP / sample_rate, 0, m.shape[1]))
        axes[1, col].set_title(f"{name}: log-mel")
        axes[1, col].set_xlabel("time (s)")
        axes[1, col].set_ylabel("mel band")
    fig.suptitle(title)
    return _save(fig, path)


def plot_heatmap(path: Path, frames: np.ndarray, frame_rate: int, title: str) -> Path:
    """A [frames, dims] array as dims x time, symmetric colour scale around zero."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 4))
    lim = float(np.percentile(np.abs(frames), 99)) or 1.0
    im = ax.imshow(frames.T, origin="lower", aspect="auto", cmap="coolwarm", vmin=-lim,
                   vmax=lim, extent=(0, frames.shape[0] / frame_rate, 0, frames.shape[1]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("dimension")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_probe_accuracies(path: Path, tasks: dict) -> Path:
    """Grouped bars: per task, accuracy of each feature set, with the chance level as a line."""
    plt = _pyplot()
    names = list(tasks)
    feature_sets = list(dict.fromkeys(f for t in tasks.values() for f in t["accuracy"]))
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(names)), 4))
    width = 0.8 / max(1, len(feature_sets))
    x = np.arange(len(names))
    for i, fs in enumerate(feature_sets):
        vals = [tasks[n]["accuracy"].get(fs) or 0.0 for n in names]
        bars = ax.bar(x + (i - (len(feature_sets) - 1) / 2) * width, vals, width, label=fs)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for j, n in enumerate(names):
        ax.hlines(tasks[n]["chance"], j - 0.45, j + 0.45, colors="k", linestyles="dashed")
    ax.set_xticks(x, [f"{n}\n({tasks[n]['n_classes']} classes)" for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probe-test accuracy")
    ax.set_title("linear probes (dashed: majority-class chance)")
    ax.legend()
    return _save(fig, path)


NARROWBAND_N_FFT_SECONDS = 0.064   # 64 ms window: 16 Hz bins, the harmonics of any voice apart
NARROWBAND_MAX_HZ = 2000.0


def plot_narrowband(path: Path, signals: dict[str, np.ndarray], sample_rate: int,
                    title: str) -> Path:
    """Narrow-band spectrograms (0-2 kHz, dB, one colour scale) of signals of one clip, one
    above the other: the harmonics of a voice are horizontal lines, noise is a smear."""
    plt = _pyplot()
    n_fft = int(NARROWBAND_N_FFT_SECONDS * sample_rate)
    hop = n_fft // 8
    window = np.hanning(n_fft)
    keep = int(NARROWBAND_MAX_HZ / sample_rate * n_fft) + 1
    specs = {}
    for name, x in signals.items():
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
        power = np.abs(np.fft.rfft(frames, axis=-1))[:, :keep] ** 2
        specs[name] = 10 * np.log10(power + 1e-10)
    hi = max(s.max() for s in specs.values())
    fig, axes = plt.subplots(len(specs), 1, figsize=(8, 1.9 * len(specs)), sharex=True)
    for ax, (name, s) in zip(np.atleast_1d(axes), specs.items()):
        ax.imshow(s.T, origin="lower", aspect="auto", vmin=hi - 70, vmax=hi, cmap="magma",
                  extent=(0, s.shape[0] * hop / sample_rate, 0, NARROWBAND_MAX_HZ))
        ax.set_title(name)
        ax.set_ylabel("Hz")
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    return _save(fig, path)
