"""Mirror of :mod:`f3stream.bottleneck`: the inference half of the bottleneck (channel
normalisation; the noise is training-only)."""

from __future__ import annotations

from typing import NamedTuple

from numba import njit

from ...bottleneck import NoiseBottleneck
from .nn import mean_rstd
from .weights import Mirror


class NoiseBottleneckWeights(NamedTuple):  # the module's own settings, by attribute name
    normalize: bool
    eps: float


MIRRORS = {NoiseBottleneck: Mirror(NoiseBottleneckWeights)}


@njit(cache=True, nogil=True)
def channel_norm_(z, eps):
    """:meth:`NoiseBottleneck.channel_norm` of the rows of ``z [N, D]``, in place."""
    n, d = z.shape
    for i in range(n):
        m, r = mean_rstd(z[i], eps)
        for j in range(d):
            z[i, j] = (z[i, j] - m) * r


@njit(cache=True, nogil=True)
def noise_bottleneck(z, w):
    """``NoiseBottleneck(z, perturb=False)`` in place: what inference runs."""
    if w.normalize:
        channel_norm_(z, w.eps)
    return z
