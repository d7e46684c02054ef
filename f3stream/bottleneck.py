"""The noise-regularised bottleneck of F3 (not a KL-VAE).

Channel normalisation (Eq. 1) keeps every latent frame at zero mean and unit standard deviation
across channels, so the scale of the latent space is fixed and cannot collapse or explode.
Stochastic perturbation (Eq. 2) adds ``alpha * eps`` with ``eps ~ N(0, I)`` and
``alpha ~ U(0, gamma)`` drawn once per sequence during training, which teaches the decoder to
tolerate the imprecise latents an autoregressive generator will produce. It is stateless, hence
trivially streaming.
"""

from __future__ import annotations

import torch
from torch import nn


class NoiseBottleneck(nn.Module):
    def __init__(self, normalize: bool = True, noise_gamma: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.normalize = normalize
        self.noise_gamma = float(noise_gamma)
        self.eps = eps

    def channel_norm(self, z: torch.Tensor) -> torch.Tensor:
        """Per frame: subtract the mean and divide by the std over channels (last dim)."""
        mean = z.mean(dim=-1, keepdim=True)
        var = (z - mean).pow(2).mean(dim=-1, keepdim=True)
        return (z - mean) * torch.rsqrt(var + self.eps)

    def perturb(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z + alpha * eps``; one ``alpha ~ U(0, gamma)`` per sequence (dim 0)."""
        if self.noise_gamma == 0:
            return z
        shape = (z.shape[0],) + (1,) * (z.dim() - 1)
        alpha = torch.rand(shape, generator=generator, device=z.device, dtype=z.dtype)
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return z + alpha * self.noise_gamma * eps

    def forward(self, z: torch.Tensor, perturb: bool | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalise, then perturb if ``perturb`` (default: only in training mode)."""
        if self.normalize:
            z = self.channel_norm(z)
        if self.training if perturb is None else perturb:
            z = self.perturb(z, generator)
        return z
