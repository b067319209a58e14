"""Checks that need a CUDA GPU (`pytest -m gpu`; tests/gpu/smoke.sh runs them). Without one
they skip; their imports of trainyard still run, so a broken import fails everywhere."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import REPO
from trainyard.agents.learner import native_bf16, resolve_precision
from trainyard.agents.rl_config import build_config
from trainyard.loader import load_spec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_precision_auto_follows_the_gpu_generation():
    device = torch.device("cuda", 0)
    ampere = torch.cuda.get_device_capability(device)[0] >= 8
    assert native_bf16(device) == ampere
    assert resolve_precision("auto", device, conv=True) == ("bf16" if ampere else "fp32")
    assert resolve_precision("auto", device, conv=False) == "fp32"


def test_lean_update_on_the_gpu_matches_the_cpu_in_fp32():
    """One lean DQN update on the GPU gives the CPU's loss (fp32, same weights, same batch)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from trainyard.agents.lean_dqn import LeanUpdate

    losses = []
    for gpus in (0, 1):
        spec = load_spec(REPO / "agents/configs/dqn_pong_fast.yaml",
                         [f"resources.gpus_per_learner={gpus}", "agent.precision=fp32"]).spec
        config = build_config(spec, 0)
        learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (
            gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), gym.spaces.Discrete(6))})
        torch.manual_seed(0)
        module = learner.module[DEFAULT_MODULE_ID]
        for p in module.parameters():
            p.data.copy_(torch.randn_like(p, device="cpu").to(p.device) * 0.01)
        gen = torch.Generator().manual_seed(1)
        batch = {"obs": torch.randint(0, 256, (32, 84, 84, 4), generator=gen, dtype=torch.uint8),
                 "next_obs": torch.randint(0, 256, (32, 84, 84, 4), generator=gen,
                                           dtype=torch.uint8),
                 "actions": torch.randint(0, 6, (32,), generator=gen),
                 "rewards": torch.ones(32), "discounts": torch.full((32,), 0.97)}
        update = LeanUpdate(learner, config)
        assert update.device.type == ("cuda" if gpus else "cpu")
        batch = {k: v.to(update.device) for k, v in batch.items()}
        loss, _, _ = update.losses(batch)
        losses.append(float(loss))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
