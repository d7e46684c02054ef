"""A small causal latent language model: continues a stream of autoencoder latents.

It works on patches of ``patch`` frames (2 frames at 25 Hz -> 12.5 Hz, as the F3 paper's
generator does). A causal transformer summarises the past patches; a flow-matching head (a small
MLP predicting the velocity from noise to the next patch, rectified-flow style) turns that
summary into a *distribution* over the next patch, sampled with a few Euler steps. This is how
"generation-friendly" is measured in ``training/experiments``: the easier the latents are to
model, the lower the flow loss and the better the decoded continuations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .streaming import State, StreamingSequential, TransformerLayer


@dataclass(frozen=True)
class LatentLMConfig:
    latent_dim: int = 64
    patch: int = 2
    model_dim: int = 256
    layers: int = 4
    n_heads: int = 4
    attention_window: int = 128
    head_dim: int = 256
    head_layers: int = 3
    flow_steps: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class FlowHead(nn.Module):
    """Velocity field v(x_t, t | h) for one patch, conditioned on the transformer state h."""

    def __init__(self, patch_dim: int, cond_dim: int, hidden: int, layers: int):
        super().__init__()
        self.inp = nn.Linear(patch_dim + cond_dim + 16, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden),
                                                  nn.GELU(), nn.Linear(hidden, hidden))
                                    for _ in range(layers))
        self.out = nn.Linear(hidden, patch_dim)

    @staticmethod
    def time_embedding(t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(100.0), 8, device=t.device))
        ang = t[..., None] * freqs * math.pi
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y = self.inp(torch.cat([x, self.time_embedding(t), h], dim=-1))
        for block in self.blocks:
            y = y + block(y)
        return self.out(y)


class LatentLM(nn.Module):
    def __init__(self, cfg: LatentLMConfig):
        super().__init__()
        self.cfg = cfg
        pd = cfg.patch * cfg.latent_dim
        self.patch_dim = pd
        self.inp = nn.Linear(pd, cfg.model_dim)
        self.bos = nn.Parameter(torch.zeros(cfg.model_dim))
        self.transformer = StreamingSequential(*[
            TransformerLayer(cfg.model_dim, cfg.n_heads, cfg.attention_window)
            for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.model_dim)
        self.head = FlowHead(pd, cfg.model_dim, cfg.head_dim, cfg.head_layers)

    # -- shapes -------------------------------------------------------------------------------
    def to_patches(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` frames -> ``[B, T // patch, patch * D]`` (a trailing odd frame dropped)."""
        b, t, d = z.shape
        n = t // self.cfg.patch
        return z[:, : n * self.cfg.patch].reshape(b, n, self.patch_dim)

    def from_patches(self, p: torch.Tensor) -> torch.Tensor:
        b, n, _ = p.shape
        return p.reshape(b, n * self.cfg.patch, self.cfg.latent_dim)

    # -- training -----------------------------------------------------------------------------
    def context(self, patches: torch.Tensor) -> torch.Tensor:
        """Summary ``h[i]`` of patches ``< i`` (BOS first), for predicting patch ``i``."""
        b = patches.shape[0]
        x = torch.cat([self.bos.expand(b, 1, -1), self.inp(patches[:, :-1])], dim=1)
        h, _ = self.transformer.step(x, self.transformer.init_state(b, x.device))
        return self.norm(h)

    def flow_loss(self, z: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
        """Rectified-flow loss: MSE between the predicted and true velocity ``x1 - x0``."""
        x1 = self.to_patches(z)
        h = self.context(x1)
        t = torch.rand(x1.shape[:2], generator=generator, device=z.device)
        x0 = torch.randn(x1.shape, generator=generator, device=z.device)
        xt = (1 - t[..., None]) * x0 + t[..., None] * x1
        return F.mse_loss(self.head(xt, t, h), x1 - x0)

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_patch(self, h: torch.Tensor, steps: int | None = None,
                     temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrates the flow from noise (scaled by ``temperature``) to a patch, Euler steps."""
        steps = steps or self.cfg.flow_steps
        x = torch.randn(h.shape[:-1] + (self.patch_dim,), generator=generator,
                        device=h.device) * temperature
        for i in range(steps):
            t = torch.full(h.shape[:-1], i / steps, device=h.device)
            x = x + self.head(x, t, h) / steps
        return x

    @torch.no_grad()
    def continue_latents(self, prompt: torch.Tensor, n_frames: int, temperature: float = 1.0,
                         steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """``[B, T, D]`` prompt -> ``[B, n_frames, D]`` generated continuation, streaming with
        the transformer's KV cache (one patch per step)."""
        g = torch.Generator(device=prompt.device).manual_seed(seed)
        b = prompt.shape[0]
        patches = self.to_patches(prompt)
        state: State = self.transformer.init_state(b, prompt.device)
        x = torch.cat([self.bos.expand(b, 1, -1), self.inp(patches)], dim=1)
        h, state = self.transformer.step(x, state)
        last = self.norm(h[:, -1:])
        out = []
        for _ in range(-(-n_frames // self.cfg.patch)):
            p = self.sample_patch(last, steps, temperature, g)
            out.append(p)
            h, state = self.transformer.step(self.inp(p), state)
            last = self.norm(h)
        return self.from_patches(torch.cat(out, dim=1))[:, :n_frames]

    @torch.no_grad()
    def predict_teacher_forced(self, z: torch.Tensor, steps: int | None = None,
                               seed: int = 0) -> torch.Tensor:
        """For every patch ``i >= 1``, a sample given the *true* patches ``< i`` (``[B, T', D]``,
        aligned with ``z[:, patch:]``)."""
        g = torch.Generator(device=z.device).manual_seed(seed)
        x1 = self.to_patches(z)
        h = self.context(x1)[:, 1:]
        return self.from_patches(self.sample_patch(h, steps, 1.0, g))


def save_latent_lm(model: LatentLM, path, info: dict | None = None) -> None:
    """``path/latent_lm.safetensors`` + ``path/latent_lm.json``, both written atomically."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from .fileio import atomic_path, atomic_write_bytes

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "latent_lm.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp))
    meta = {"format": "f3stream-latent-lm", "config": model.cfg.to_dict(), "info": info or {}}
    atomic_write_bytes(path / "latent_lm.json", (json.dumps(meta, indent=2) + "\n").encode())


def load_latent_lm(path) -> tuple[LatentLM, dict]:
    """Loads what :func:`save_latent_lm` wrote; raises CheckpointError with the reason."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .checkpoint import load_state_strict
    from .errors import CheckpointError

    path = Path(path)
    try:
        meta = json.loads((path / "latent_lm.json").read_text())
        cfg = LatentLMConfig(**meta["config"])
        state = load_file(str(path / "latent_lm.safetensors"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is not a latent LM checkpoint ({e.filename} "
                              "missing)") from None
    except (ValueError, KeyError, TypeError, OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read latent LM checkpoint {path}: {e}") from None
    model = LatentLM(cfg)
    load_state_strict(model, state, str(path))
    return model.eval(), meta.get("info", {})
