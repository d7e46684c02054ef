"""Every committed training config loads, and each two-process (`_ddp2`) config is its
one-process sibling with half the per-process batch: the same global batch, so a run can
switch between one and two processes on `--resume` without changing its recipe."""
import json
from pathlib import Path

import pytest

from training.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.json"))
# two-process configs that have a one-process sibling (c72500_ddp2 never had one)
DDP2 = [p for p in CONFIGS if p.stem.endswith("_ddp2")
        and p.with_name(p.stem.removesuffix("_ddp2") + ".json").exists()]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads(path: Path) -> None:
    cfg = TrainConfig.load(path)
    assert cfg.autoencoder.steps > 0 and cfg.autoencoder.batch_size > 0


@pytest.mark.parametrize("path", DDP2, ids=lambda p: p.stem)
def test_ddp2_config_halves_its_siblings_batch(path: Path) -> None:
    sibling = path.with_name(path.stem.removesuffix("_ddp2") + ".json")
    one, two = json.loads(sibling.read_text()), json.loads(path.read_text())
    assert two["autoencoder"]["batch_size"] * 2 == one["autoencoder"]["batch_size"]
    two["autoencoder"]["batch_size"] = one["autoencoder"]["batch_size"]
    assert two == one
