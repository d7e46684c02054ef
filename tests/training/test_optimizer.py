"""The training optimizer: torch's fused AdamW, the same update as the per-tensor loop, and a
resume keeps the fused kernel whatever kernel saved the checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from training.checkpointing import latest_checkpoint, load_training_state, save_training_state
from training.common import adamw


def _steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_fused_adamw_makes_the_per_tensor_loops_update():
    torch.manual_seed(0)
    start = [torch.randn(40, 30), torch.randn(30), torch.randn(7, 3, 5)]
    fused = [p.clone().requires_grad_(True) for p in start]
    loop = [p.clone().requires_grad_(True) for p in start]
    opt_f = adamw(fused, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    opt_l = torch.optim.AdamW(loop, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01,
                              foreach=False)
    assert opt_f.param_groups[0]["fused"] is True
    _steps(opt_f, fused, 50, seed=1)
    _steps(opt_l, loop, 50, seed=1)
    for a, b, s in zip(fused, loop, start):
        assert (a - s).abs().max() > 0.1                  # they moved
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_resume_keeps_the_fused_kernel_and_the_moments(tmp_path):
    torch.manual_seed(0)
    net = nn.Linear(6, 4)
    old = torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=False)   # an older run's kernel
    _steps(old, list(net.parameters()), 3, seed=2)
    save_training_state(tmp_path / "run", 3, {"model": net}, {"generator": old}, {})
    resumed_net = nn.Linear(6, 4)
    new = adamw(resumed_net.parameters(), lr=1e-3)
    load_training_state(latest_checkpoint(tmp_path / "run"), {"model": resumed_net},
                        {"generator": new})
    assert new.param_groups[0]["fused"] is True and new.param_groups[0]["foreach"] is None
    for p_old, p_new in zip(net.parameters(), resumed_net.parameters()):
        torch.testing.assert_close(new.state[p_new]["exp_avg_sq"], old.state[p_old]["exp_avg_sq"])
    _steps(old, list(net.parameters()), 2, seed=3)
    _steps(new, list(resumed_net.parameters()), 2, seed=3)
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
